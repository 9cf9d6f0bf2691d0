"""`oxyd tenant|pair|send|token`: the CLI that talks to a running daemon over its control port
(`send` is in send.py).

The CLI runs no event loop, so plain blocking urllib is right here. Exit codes, for scripts:
0 ok, 1 error, 2 usage (argparse), 3 not found, 4 unauthorized or forbidden,
5 daemon not reachable, 6 conflict (exists already, not connected, already paired).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from oxyd.config import Config
from oxyd.model import valid_tenant_id

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_FOUND = 0, 1, 2, 3
EXIT_UNAUTHORIZED, EXIT_UNREACHABLE, EXIT_CONFLICT = 4, 5, 6
_EXIT_BY_STATUS = {
    404: EXIT_NOT_FOUND,
    401: EXIT_UNAUTHORIZED,
    403: EXIT_UNAUTHORIZED,
    409: EXIT_CONFLICT,
}
TIMEOUT_S = 30.0
PAIR_POLL_S = 1.0


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.message, self.code = message, code


# ---- where the daemon is, and the token ----


def base_url(args: argparse.Namespace, cfg: Config) -> str:
    url = args.url or os.environ.get("OXYD_URL")
    if not url:
        host = cfg.http.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # a bind-all address
        url = (
            f"http://[{host}]:{cfg.http.port}" if ":" in host else f"http://{host}:{cfg.http.port}"
        )
    return url.rstrip("/")


def find_token(args: argparse.Namespace, cfg: Config) -> str:
    """--token, $OXYD_TOKEN, $OXYD_ADMIN_TOKEN, http.admin_token_file, <data_dir>/admin.token."""
    for value in (args.token, os.environ.get("OXYD_TOKEN"), os.environ.get("OXYD_ADMIN_TOKEN")):
        if value:
            return value.strip()
    for path in (cfg.http.admin_token_file, Path(cfg.data_dir) / "admin.token"):
        if path is None:
            continue
        try:
            return Path(path).read_text().strip()
        except FileNotFoundError:
            continue
        except OSError as e:
            raise CliError(
                f"cannot read the admin token from {path}: {e.strerror}", EXIT_UNAUTHORIZED
            ) from None
    raise CliError(
        "no token: pass --token, set OXYD_TOKEN, or run where the data directory "
        "(admin.token) is readable",
        EXIT_UNAUTHORIZED,
    )


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token

    def call(
        self,
        method: str,
        path: str,
        body: dict | None = None,
        query: dict | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(query) if query else "")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            url,
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                **(headers or {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise _api_error(e) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CliError(
                f"daemon not reachable at {self.url} ({reason}); is `oxyd run` "
                "running? (--url or OXYD_URL to point elsewhere)",
                EXIT_UNREACHABLE,
            ) from None
        return json.loads(raw) if raw else None


def _api_error(e: urllib.error.HTTPError) -> CliError:
    try:
        err = json.loads(e.read())["error"]
        code, message = err["code"], err["message"]
    except (ValueError, KeyError, TypeError):
        code, message = "http_error", f"HTTP {e.code}"
    if e.code == 401:
        message = "unauthorized: the token was refused (check --token / OXYD_TOKEN)"
    elif e.code == 429:
        message += f" (retry after {e.headers.get('Retry-After', '?')} s)"
    return CliError(f"{message} [{code}]", _EXIT_BY_STATUS.get(e.code, EXIT_ERROR))


# ---- output ----


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


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


def tenant_id_arg(value: str) -> str:
    """argparse type for a tenant id: a bad one is a usage error (exit 2), not a request."""
    if not valid_tenant_id(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a tenant id (lowercase letters, digits, '_' and '-', up to 63,"
            " starting with a letter or digit)"
        )
    return value


# ---- commands ----


def cmd_tenant(args: argparse.Namespace, api: Api) -> int:
    action, tid = args.action, getattr(args, "id", None)
    if action in ("export", "import"):
        from oxyd.cli import archive

        return archive.run(args, api)
    if action == "list":
        tenants = api.call("GET", "/v1/tenants")["tenants"]
        head = f"{'ID':<24} {'ENGINE':<10} {'STATE':<13} {'MESSAGES':>9}  JID"
        _emit(args, tenants, "\n".join([head, *map(_tenant_line, tenants)]))
    elif action == "add":
        body: dict[str, Any] = {"id": tid, "engine": args.engine}
        if args.webhook_url:
            body["webhook"] = {"url": args.webhook_url, "secret": args.webhook_secret or ""}
        t = api.call("POST", "/v1/tenants", body)
        _emit(args, t, f"added {t['id']} ({t['engine']}): {t['state']}")
    elif action == "show":
        t = api.call("GET", f"/v1/tenants/{_quote(tid)}")
        _emit(args, t, _tenant_text(t))
    elif action == "remove":
        out = api.call(
            "DELETE", f"/v1/tenants/{_quote(tid)}", query={"purge": "true"} if args.purge else None
        )
        _emit(args, out, f"removed {tid}" + (" and its messages" if args.purge else ""))
    else:  # start, stop, restart
        t = api.call("POST", f"/v1/tenants/{_quote(tid)}/{action}")
        _emit(args, t, f"{tid}: {t['state']}")
    return EXIT_OK


def cmd_token(args: argparse.Namespace, api: Api) -> int:
    if args.revoke:
        out = api.call("DELETE", f"/v1/tenants/{_quote(args.id)}/tokens")
        _emit(args, out, f"revoked {out['revoked']} token(s) of {args.id}")
    else:
        out = api.call("POST", f"/v1/tenants/{_quote(args.id)}/tokens")
        _emit(args, out, out["token"])
    return EXIT_OK


def cmd_pair(args: argparse.Namespace, api: Api) -> int:
    tid = _quote(args.id)
    api.call("POST", f"/v1/tenants/{tid}/pair", {"phone": args.phone} if args.phone else {})
    deadline = time.monotonic() + args.timeout
    shown: tuple[Any, Any] = (None, None)
    while time.monotonic() < deadline:
        t = api.call("GET", f"/v1/tenants/{tid}")
        if t["state"] == "connected":
            _emit(args, t, f"paired: {args.id} is connected as {t.get('jid')}")
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


def _quote(tid: str) -> str:
    return urllib.parse.quote(tid, safe="")


# ---- argparse wiring ----


def _run(fn):
    def handler(args: argparse.Namespace, cfg: Config) -> int:
        try:
            return fn(args, Api(base_url(args, cfg), find_token(args, cfg)))
        except CliError as e:
            print(f"oxyd: {e.message}", file=sys.stderr)
            return e.code
        except KeyboardInterrupt:
            return 130

    return handler


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
    from oxyd.cli import archive

    archive.add_actions(actions, common)
    tenant.set_defaults(handler=_run(cmd_tenant))

    pair = sub.add_parser("pair", parents=[common], help="pair a tenant (QR or phone code)")
    pair.add_argument("id", type=tenant_id_arg)
    pair.add_argument("--phone", help="phone number (digits, international) for a code")
    pair.add_argument("--timeout", type=float, default=300.0, help="seconds to wait [300]")
    pair.set_defaults(handler=_run(cmd_pair))

    from oxyd.cli import send  # it builds on this module's Api

    send.register(sub, common, _run)

    token = sub.add_parser("token", parents=[common], help="create a tenant token (shown once)")
    token.add_argument("id", type=tenant_id_arg)
    token.add_argument("--revoke", action="store_true", help="revoke all of its tokens instead")
    token.set_defaults(handler=_run(cmd_token))
