"""Talking to a running daemon over its control port: where it is, the token, one call, and
how errors become exit codes. Shared by the CLI's commands (client.py, archive.py, send.py).

The CLI runs no event loop, so plain blocking urllib is right here. Exit codes, for scripts:
0 ok, 1 error, 2 usage (argparse), 3 not found, 4 unauthorized or forbidden,
5 daemon not reachable, 6 conflict (exists already, not connected, already paired).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
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
            raise api_error(e) from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CliError(
                f"daemon not reachable at {self.url} ({reason}); is `oxyd run` "
                "running? (--url or OXYD_URL to point elsewhere)",
                EXIT_UNREACHABLE,
            ) from None
        return json.loads(raw) if raw else None


def api_error(e: urllib.error.HTTPError) -> CliError:
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


# ---- output and arguments ----


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2) if args.json else text)


def tenant_id_arg(value: str) -> str:
    """argparse type for a tenant id: a bad one is a usage error (exit 2), not a request."""
    if not valid_tenant_id(value):
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a tenant id (lowercase letters, digits, '_' and '-', up to 63,"
            " starting with a letter or digit)"
        )
    return value


def quote(tid: str) -> str:
    return urllib.parse.quote(tid, safe="")


# ---- a command with its Api ----


def with_api(fn):
    def handler(args: argparse.Namespace, cfg: Config) -> int:
        try:
            return fn(args, Api(base_url(args, cfg), find_token(args, cfg)))
        except CliError as e:
            print(f"oxyd: {e.message}", file=sys.stderr)
            return e.code
        except KeyboardInterrupt:
            return 130

    return handler
