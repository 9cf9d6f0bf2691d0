"""Where a tenant's webhook may point: no SSRF into the machine or its network.

A tenant token may set its own webhook URL, so without a guard it could make oxyd POST to
the cloud metadata service (169.254.169.254), to services on loopback or the private network,
or to oxyd's own control port. Such destinations are refused when the URL is set (400
`forbidden_destination`) and again when connecting: a name can resolve to a public address
when checked and to 127.0.0.1 a second later (DNS rebinding), so the dispatcher's guarded
session resolves through GuardedResolver, which refuses every answer that holds a forbidden
address. URLs set with the admin token, and everything when `webhooks.allow_private` is true,
are not guarded: an operator may deliver to a receiver on the same host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field

import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForbiddenDestination(OSError):
    """A guarded URL points at (or resolves to) an address it may not reach. An OSError so
    that aiohttp passes it through its connector like any resolution failure."""


def address_reason(ip: IP) -> str | None:
    """Why a guarded request may not go to `ip`, or None when it may."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if ip.is_private:
        return "a private address"
    if ip.is_multicast or ip.is_reserved or not ip.is_global:
        return "a non-public address"
    return None


@dataclass
class Guard:
    """The rules for one daemon: its control port (which a guarded URL may never reach, on any
    of this machine's addresses) and whether private destinations are allowed at all."""

    allow_private: bool = False
    control_host: str = "127.0.0.1"
    control_port: int | None = None
    # Where guarded names are resolved at connect time (aiohttp's default when None).
    resolver: AbstractResolver | None = field(default=None, repr=False)
    _own: frozenset[IP] | None = field(default=None, repr=False)

    def reason(self, ip: IP, port: int) -> str | None:
        if self.allow_private:
            return None
        why = address_reason(ip)
        if why is None and port == self.control_port and ip in self._own_addresses():
            why = "oxyd's own control port"
        return why

    def _own_addresses(self) -> frozenset[IP]:
        """Addresses the control port answers on: its host, or this machine's addresses when
        it listens on all of them. Read once (from the hosts file, not the network)."""
        if self._own is None:
            own: set[IP] = set()
            names = [self.control_host]
            try:
                host_ip = ipaddress.ip_address(self.control_host)
                if host_ip.is_unspecified:
                    names = [socket.gethostname()]
            except ValueError:
                pass
            for name in names:
                try:
                    for info in socket.getaddrinfo(name, None, type=socket.SOCK_STREAM):
                        own.add(ipaddress.ip_address(info[4][0].split("%")[0]))
                except (OSError, ValueError):
                    continue
            self._own = frozenset(own)
        return self._own

    def check_addresses(self, host: str, port: int, addresses: list[str]) -> None:
        for addr in addresses:
            try:
                ip = ipaddress.ip_address(addr.split("%")[0])
            except ValueError:
                continue
            why = self.reason(ip, port)
            if why is not None:
                shown = host if host == addr else f"{host} ({addr})"
                raise ForbiddenDestination(f"{shown} is {why}")

    async def check_url(self, url: str) -> None:
        """Raise ForbiddenDestination when `url` points at a forbidden address now. A name
        that does not resolve passes: the connect-time check sees what it resolves to then."""
        if self.allow_private:
            return
        u = yarl.URL(url)
        host = (u.host or "").strip("[]")
        port = u.port or (443 if u.scheme == "https" else 80)
        try:
            ipaddress.ip_address(host.split("%")[0])
            addresses = [host]
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_STREAM
                )
            except (OSError, UnicodeError):
                return
            addresses = [i[4][0] for i in infos]
        self.check_addresses(host, port, addresses)


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses a name if any of its addresses is forbidden. aiohttp
    does not resolve IP literals: Dispatcher checks those before sending."""

    def __init__(self, guard: Guard, inner: AbstractResolver | None = None) -> None:
        self.guard = guard
        self.inner = inner or guard.resolver or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self.inner.resolve(host, port, family)
        self.guard.check_addresses(host, port, [r["host"] for r in results])
        return results

    async def close(self) -> None:
        await self.inner.close()


def literal_reason(guard: Guard, url: str) -> str | None:
    """For an IP-literal URL (which aiohttp connects to without resolving), why it is
    forbidden; None for names and allowed literals."""
    try:
        u = yarl.URL(url)
        ip = ipaddress.ip_address((u.host or "").strip("[]").split("%")[0])
    except ValueError:
        return None
    return guard.reason(ip, u.port or (443 if u.scheme == "https" else 80))


def forbidden_in(e: BaseException) -> ForbiddenDestination | None:
    """The ForbiddenDestination inside an aiohttp connector error, if that is what it is."""
    inner = getattr(e, "os_error", None)
    return inner if isinstance(inner, ForbiddenDestination) else None
