"""Proxy URLs for the neonize engine: checked once, shown with their secret part masked."""

from __future__ import annotations

from urllib.parse import urlsplit

SCHEMES = ("socks5", "http")


def proxy_error(url: object) -> str | None:
    """Why `url` is not a usable proxy URL, or None when it is."""
    if not isinstance(url, str) or not url:
        return "must be a socks5:// or http:// URL"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return f"is not a valid URL ({e})"
    if parts.scheme not in SCHEMES:
        return "must be a socks5:// or http:// URL"
    if not parts.hostname:
        return "needs a host"
    if port is None:
        return "needs a port"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "must be scheme://[user:password@]host:port and nothing more"
    return None


def mask(url: str | None) -> str | None:
    """The URL with its password replaced by *** (the user name stays: it tells which)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None and parts.username is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    auth = f"{user}:***" if parts.password is not None else "***"
    return f"{parts.scheme}://{auth}@{host}{port}"
