"""`python -m oxyd.healthcheck`: exit 0 when the local daemon answers /healthz, else 1.

The container HEALTHCHECK runs it (slim images have no curl). It reads the port and host the
daemon itself uses (OXYD_CONFIG file, OXYD_HTTP_* variables), but always probes a wildcard
bind through loopback.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request


def target_url() -> str:
    host, port = "127.0.0.1", 8780
    try:
        from oxyd.config import load

        cfg = load()
        host, port = cfg.http.host, cfg.http.port
    except Exception as e:  # a broken config must not hide whether the daemon answers
        print(f"healthcheck: config not loaded ({e}); trying {host}:{port}", file=sys.stderr)
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/healthz"


def check(url: str, timeout_s: float = 5.0) -> tuple[bool, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            body = json.loads(resp.read(4096) or b"{}")
            ok = resp.status == 200 and body.get("status") == "ok"
            return ok, f"{url}: HTTP {resp.status} {body}"
    except urllib.error.HTTPError as e:
        return False, f"{url}: HTTP {e.code} {e.reason}"
    except (urllib.error.URLError, OSError, ValueError) as e:
        return False, f"{url}: {getattr(e, 'reason', e)}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    url = argv[0] if argv else target_url()
    ok, detail = check(url)
    print(("healthy: " if ok else "unhealthy: ") + detail, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
