"""How a session or a connect attempt ends: Ended, the events that need a person (and what
the person should do), and check_end, which reads an event for an ending."""

from __future__ import annotations

from typing import Any

from oxyd import model as m
from oxyd.model import State

# SQLite's own words for a damaged database file, as the engine reports them when its device
# store cannot be opened.
_STORE_CORRUPT = ("file is not a database", "database disk image is malformed")
# What an operator should do about each state that needs a person.
ACTIONS = {
    State.LOGGED_OUT: "the phone unlinked this device: pair it again",
    State.CONFLICT: "another client uses this session: stop the other client, then start it",
    State.OUTDATED: "WhatsApp refuses this client version: upgrade oxyd (neonize), then start",
    State.FAILED: "too many failed attempts in a row: check the last error, then start it",
    State.BANNED: "temporarily banned by WhatsApp: oxyd retries once after the ban expires",
}
_TERMINAL = {
    m.LoggedOut: State.LOGGED_OUT,
    m.StreamReplaced: State.CONFLICT,
    m.ClientOutdated: State.OUTDATED,
    m.TemporaryBan: State.BANNED,
}


class Ended(Exception):
    """The session (or attempt) ended; `state` is set for needs-a-person endings."""

    def __init__(self, reason: str, state: State | None = None, event: Any = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.state = state
        self.event = event


def check_end(ev: m.Event) -> None:
    """Raise Ended for an event that ends a session or an attempt; return for the others."""
    state = _TERMINAL.get(type(ev))
    if state is not None:
        reason = getattr(ev, "reason", None) or state.value.replace("_", " ")
        raise Ended(str(reason), state, ev)
    if isinstance(ev, m.ConnectFailure):
        raise Ended(f"connect failure {ev.reason}: {ev.message}".rstrip(": "))
    if isinstance(ev, m.ClientDead):
        if ev.error and any(s in ev.error for s in _STORE_CORRUPT):
            # The engine could not open its own device store: retrying cannot repair a
            # damaged file, and a person must look (restore a backup, or re-pair).
            raise Ended(f"device store corrupt: {ev.error}", State.FAILED)
        raise Ended(f"client ended: {ev.error}" if ev.error else "client ended")
