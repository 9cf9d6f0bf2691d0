"""`oxyd tenant|pair|send|token`: the CLI that talks to a running daemon over its control port
(`send` is in send.py, `tenant export|import` in archive.py; the calls and the exit codes
in api.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from oxyd.cli import archive, send
from oxyd.cli.api import (
    EXIT_OK,
    Api,
    CliError,
    emit,
    quote,
    tenant_id_arg,
    with_api,
)

PAIR_POLL_S = 1.0

# ---- output ----


def _tenant_line(t: dict[str, Any]) -> str:
    err = f"  ({t['last_error']})" if t.get("last_error") else ""
    return (
        f"{t['id']:<24} {t['engine']:<10} {t['state']:<13} {t['messages_stored']:>9}"
        f"  {t.get('jid') or '-'}{err}"
    )


def _tenant_text(t: dict[str, Any]) -> str:
    now_ms = int(time.time() * 1000)
    return "\n".join(f"{k:<16} {_shown(k, v, now_ms)}" for k, v in t.items())


def _shown(key: str, value: Any, now_ms: int) -> str:
    """A value for people: Unix ms get the UTC time and how long ago (or until) beside them."""
    if value is None:
        return "-"
    if key.endswith("_ms") and isinstance(value, int) and value > 10**11:
        when = datetime.fromtimestamp(value / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"{value} ({when}, {_relative(value - now_ms)})"
    return str(value)


def _relative(delta_ms: int) -> str:
    s = abs(delta_ms) // 1000
    amount = f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h"
    if s >= 172_800:
        amount = f"{s // 86400} days"
    return f"in {amount}" if delta_ms > 0 else f"{amount} ago"


# ---- commands ----


def cmd_tenant(args: argparse.Namespace, api: Api) -> int:
    action, tid = args.action, getattr(args, "id", None)
    if action in ("export", "import"):
        return archive.run(args, api)
    if action == "list":
        tenants = api.call("GET", "/v1/tenants")["tenants"]
        head = f"{'ID':<24} {'ENGINE':<10} {'STATE':<13} {'MESSAGES':>9}  JID"
        emit(args, tenants, "\n".join([head, *map(_tenant_line, tenants)]))
    elif action == "add":
        body: dict[str, Any] = {"id": tid, "engine": args.engine}
        if args.webhook_url:
            body["webhook"] = {"url": args.webhook_url, "secret": args.webhook_secret or ""}
        t = api.call("POST", "/v1/tenants", body)
        emit(args, t, f"added {t['id']} ({t['engine']}): {t['state']}")
    elif action == "show":
        t = api.call("GET", f"/v1/tenants/{quote(tid)}")
        emit(args, t, _tenant_text(t))
    elif action == "remove":
        out = api.call(
            "DELETE", f"/v1/tenants/{quote(tid)}", query={"purge": "true"} if args.purge else None
        )
        emit(args, out, f"removed {tid}" + (" and its messages" if args.purge else ""))
    else:  # start, stop, restart
        t = api.call("POST", f"/v1/tenants/{quote(tid)}/{action}")
        emit(args, t, f"{tid}: {t['state']}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace, api: Api) -> int:
    if args.revoke:
        out = api.call("DELETE", f"/v1/tenants/{quote(args.id)}/tokens")
        emit(args, out, f"revoked {out['revoked']} token(s) of {args.id}")
    else:
        out = api.call("POST", f"/v1/tenants/{quote(args.id)}/tokens")
        emit(args, out, out["token"])
    return EXIT_OK


def cmd_pair(args: argparse.Namespace, api: Api) -> int:
    tid = quote(args.id)
    api.call("POST", f"/v1/tenants/{tid}/pair", {"phone": args.phone} if args.phone else {})
    deadline = time.monotonic() + args.timeout
    shown: tuple[Any, Any] = (None, None)
    while time.monotonic() < deadline:
        t = api.call("GET", f"/v1/tenants/{tid}")
        if t["state"] == "connected":
            emit(args, t, f"paired: {args.id} is connected as {t.get('jid')}")
            return EXIT_OK
        if t["state"] not in ("pairing", "connecting", "reconnecting", "backoff"):
            raise CliError(f"pairing failed: {t.get('last_error') or t['state']}")
        info = api.call("GET", f"/v1/tenants/{tid}/pairing")
        if (info["qr"], info["code"]) != shown and (info["qr"] or info["code"]):
            shown = (info["qr"], info["code"])
            _show_pairing(args, info)
        time.sleep(PAIR_POLL_S)
    raise CliError(f"pairing not finished after {args.timeout:g}s")


def _show_pairing(args: argparse.Namespace, info: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(info), flush=True)
        return
    if info["code"]:
        print(f"\nOn the phone: Linked devices > Link with phone number, enter: {info['code']}")
    elif info["qr"]:
        import segno

        print("\nScan with WhatsApp > Linked devices > Link a device (refreshes as it rotates):")
        segno.make(info["qr"], error="l").terminal(compact=True)
    sys.stdout.flush()


# ---- argparse wiring ----


def register(sub: argparse._SubParsersAction) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help="control port URL (default: $OXYD_URL, else from config)")
    common.add_argument(
        "--token",
        help="bearer token (default: $OXYD_TOKEN, "
        "$OXYD_ADMIN_TOKEN, http.admin_token_file, <data_dir>/admin.token)",
    )
    common.add_argument("--json", action="store_true", help="print JSON")

    tenant = sub.add_parser("tenant", help="add, list, show, remove, start, stop tenants")
    actions = tenant.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    add = actions.add_parser("add", parents=[common], help="add a tenant")
    add.add_argument("id", type=tenant_id_arg)
    add.add_argument("--engine", default="neonize", choices=("neonize", "simulator"))
    add.add_argument("--webhook-url")
    add.add_argument("--webhook-secret")
    actions.add_parser("list", parents=[common], help="list tenants")
    for name, text in (
        ("show", "show one tenant"),
        ("start", "start"),
        ("stop", "stop"),
        ("restart", "restart (fresh client)"),
    ):
        actions.add_parser(name, parents=[common], help=text).add_argument("id", type=tenant_id_arg)
    rm = actions.add_parser("remove", parents=[common], help="log out and remove a tenant")
    rm.add_argument("id", type=tenant_id_arg)
    rm.add_argument("--purge", action="store_true", help="also delete its messages")
    archive.add_actions(actions, common)
    tenant.set_defaults(handler=with_api(cmd_tenant))

    pair = sub.add_parser("pair", parents=[common], help="pair a tenant (QR or phone code)")
    pair.add_argument("id", type=tenant_id_arg)
    pair.add_argument("--phone", help="phone number (digits, international) for a code")
    pair.add_argument("--timeout", type=float, default=300.0, help="seconds to wait [300]")
    pair.set_defaults(handler=with_api(cmd_pair))

    send.register(sub, common, with_api)

    token = sub.add_parser("token", parents=[common], help="create a tenant token (shown once)")
    token.add_argument("id", type=tenant_id_arg)
    token.add_argument("--revoke", action="store_true", help="revoke all of its tokens instead")
    token.set_defaults(handler=with_api(cmd_token))
