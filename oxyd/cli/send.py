"""`oxyd send TENANT TO --text|--image FILE|--voice FILE|--location LAT,LNG ...` (design §12).

Files are read here and sent base64-encoded; the daemon converts a voice note to Ogg/Opus.
The message is queued: without --wait the answer is "queued"; with --wait S the command
waits up to S seconds for it to be sent.
"""

from __future__ import annotations

import argparse
import base64
import urllib.parse
from pathlib import Path
from typing import Any

from oxyd.cli.api import EXIT_OK, EXIT_USAGE, Api, CliError, emit, quote, tenant_id_arg

MEDIA_FLAGS = ("image", "video", "audio", "voice", "document", "sticker")
MAX_WAIT_S = 30.0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser, run) -> None:
    send = sub.add_parser(
        "send",
        parents=[common],
        help="queue a message (text, media, voice note, location, contact, poll)",
    )
    send.add_argument("id", type=tenant_id_arg)
    send.add_argument("to", help="phone number in international format, or a JID")
    send.add_argument("text_arg", nargs="?", metavar="TEXT", help="the text (or use --text)")
    kind = send.add_mutually_exclusive_group()
    kind.add_argument("--text")
    for name in MEDIA_FLAGS:
        kind.add_argument(f"--{name}", metavar="FILE", type=Path, help=f"send FILE as {name}")
    kind.add_argument("--location", metavar="LAT,LNG")
    kind.add_argument("--contact", metavar="NAME,PHONE")
    kind.add_argument("--poll", metavar="QUESTION", help="with --option twice or more")
    send.add_argument("--option", action="append", default=[], help="a poll option")
    send.add_argument("--multiple", action="store_true", help="poll: allow several answers")
    send.add_argument("--caption", help="caption of an image, video or document")
    send.add_argument("--filename", help="file name shown for a document")
    send.add_argument("--name", help="name of a --location")
    send.add_argument("--reply-to", metavar="MSG_ID", help="quote this message")
    send.add_argument("--mention", action="append", default=[], metavar="JID")
    send.add_argument("--wait", type=float, metavar="S", help=f"wait up to S (<= {MAX_WAIT_S:g})")
    send.add_argument("--idempotency-key", metavar="KEY", help="retry-safe: same key, one send")
    send.set_defaults(handler=run(cmd_send))


def body_of(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"to": args.to}
    text = args.text if args.text is not None else args.text_arg
    media = next((m for m in MEDIA_FLAGS if getattr(args, m) is not None), None)
    if media is not None:
        path: Path = getattr(args, media)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CliError(f"cannot read {path}: {e.strerror}") from None
        body["media"] = {"type": media, "data_b64": base64.b64encode(data).decode()}
        if args.caption:
            body["media"]["caption"] = args.caption
        if media == "document":
            body["media"]["filename"] = args.filename or path.name
    elif args.location is not None:
        try:
            lat, lng = (float(v) for v in args.location.split(","))
        except ValueError:
            raise CliError("--location: give LAT,LNG (e.g. 52.52,13.405)", EXIT_USAGE) from None
        body["location"] = {"lat": lat, "lng": lng}
        if args.name:
            body["location"]["name"] = args.name
    elif args.contact is not None:
        name, _, phone = args.contact.rpartition(",")
        if not name or not phone:
            raise CliError("--contact: give NAME,PHONE", EXIT_USAGE)
        body["contact"] = {"name": name, "phone": phone}
    elif args.poll is not None:
        body["poll"] = {"question": args.poll, "options": args.option, "multiple": args.multiple}
    elif text is None:
        raise CliError("nothing to send: give TEXT, --text, a file flag, ...", EXIT_USAGE)
    if text is not None:
        if "media" in body or len(body) > 1:
            raise CliError("give either TEXT or another kind, not both", EXIT_USAGE)
        body["text"] = text
    if args.reply_to:
        body["reply_to"] = args.reply_to
    if args.mention:
        body["mentions"] = args.mention
    return body


def cmd_send(args: argparse.Namespace, api: Api) -> int:
    body = body_of(args)
    query = None
    if args.wait is not None:
        if not 0 <= args.wait <= MAX_WAIT_S:
            raise CliError(f"--wait: seconds between 0 and {MAX_WAIT_S:g}", EXIT_USAGE)
        query = {"wait": f"{args.wait:g}"}
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
    out = api.call(
        "POST",
        f"/v1/tenants/{quote(args.id)}/messages",
        body,
        query=query,
        headers=headers,
        timeout_s=(args.wait or 0) + 30,
    )
    where = out.get("chat") or urllib.parse.unquote(args.to)
    emit(args, out, f"{out['status']} {out['id']} to {where}")
    return EXIT_OK
