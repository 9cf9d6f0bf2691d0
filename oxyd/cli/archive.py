"""`oxyd tenant export ID FILE` and `oxyd tenant import FILE [--id ID]`: a tenant's archive
(oxyd/cluster/archive.py) through a running daemon's control port, by hand."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from oxyd.cli.api import EXIT_OK, EXIT_UNREACHABLE, CliError, api_error, emit, quote

CHUNK = 1 << 20
TIMEOUT_S = 600.0  # an archive of a tenant with years of media takes a while


def add_actions(actions: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    exp = actions.add_parser(
        "export", parents=[common], help="write a tenant's archive to FILE (admin)"
    )
    exp.add_argument("id")
    exp.add_argument("file", help="where to write the archive (.tar)")
    imp = actions.add_parser(
        "import", parents=[common], help="import a tenant archive and start it (admin)"
    )
    imp.add_argument("file", help="an archive made by `oxyd tenant export`")
    imp.add_argument("--id", help="the tenant id (default: the one in the archive)")


def archive_tenant(path: Path) -> str:
    try:
        with tarfile.open(path, mode="r:") as tar:
            first = tar.next()
            f = tar.extractfile(first) if first is not None else None
            manifest = json.loads(f.read(1 << 20)) if f is not None else {}
        return manifest["tenant"]
    except (OSError, tarfile.TarError, ValueError, KeyError, TypeError) as e:
        raise CliError(f"{path}: not a tenant archive ({e})") from None


def run(args: argparse.Namespace, api: Any) -> int:
    if args.action == "export":
        target = Path(args.file)
        tmp = target.with_name(f".{target.name}.part")
        req = _request(api, "GET", f"/v1/tenants/{quote(args.id)}/archive")
        h = hashlib.sha256()
        size = 0
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    while chunk := resp.read(CHUNK):
                        h.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                want = resp.headers.get("X-Oxyd-Archive-Sha256")
        except urllib.error.HTTPError as e:
            raise api_error(e) from None
        except OSError as e:
            tmp.unlink(missing_ok=True)
            raise _unreachable(api, e) from None
        if want and want != h.hexdigest():
            tmp.unlink(missing_ok=True)
            raise CliError("the archive arrived damaged (sha256 differs); try again")
        os.replace(tmp, target)
        out_data = {"tenant": args.id, "file": str(target), "bytes": size, "sha256": h.hexdigest()}
        emit(args, out_data, f"exported {args.id} to {target} ({size} bytes)")
        return EXIT_OK
    path = Path(args.file)
    tid = args.id or archive_tenant(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    with open(path, "rb") as f:
        req = _request(
            api,
            "PUT",
            f"/v1/tenants/{quote(tid)}/archive",
            data=f,
            headers={
                "Content-Type": "application/x-tar",
                "Content-Length": str(path.stat().st_size),
                "X-Oxyd-Archive-Sha256": digest.hexdigest(),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                t = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise api_error(e) from None
        except OSError as e:
            raise _unreachable(api, e) from None
    emit(args, t, f"imported {t['id']} ({t['engine']}): {t['state']}")
    return EXIT_OK


def _request(api: Any, method: str, path: str, data=None, headers=None) -> urllib.request.Request:
    return urllib.request.Request(
        api.url + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {api.token}", **(headers or {})},
    )


def _unreachable(api: Any, e: OSError):
    return CliError(
        f"daemon not reachable at {api.url} ({getattr(e, 'reason', e)})", EXIT_UNREACHABLE
    )
