"""The seam between oxyd and a WhatsApp library: every engine implements these Protocols.

An engine reports what happens through a *sink*: a plain function called on the event loop
thread, in order, that never blocks and never awaits. Outcomes of `connect()` and `pair()`
arrive as events (Connected, ConnectFailure, LoggedOut, PairQR, ...), exactly as whatsmeow
reports them, so the supervisor has one place where it learns about a session.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from oxyd.model import ContactName, Event, Group, LookupResult, Participant, Picture
from oxyd.outgoing import Outgoing, SendResult

Sink = Callable[[Event], None]


class EngineError(Exception):
    """A call on a client failed; the message is safe to show to an operator."""


class NotConnected(EngineError):
    pass


class StoreUnusable(EngineError):
    """The device store cannot be used until a person looks (corrupt, unreadable): the tenant
    is parked as failed, never retried."""


class Refused(EngineError):
    """WhatsApp refused a request as a whole (not a group admin, privacy); `status` is
    WhatsApp's own code (403, 406, ...)."""

    default_status = 403

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status or self.default_status


class NotFound(Refused):
    """No such group, not in it, an invalid or reset invite (404). A type of its own: the
    engine host's pipe rebuilds an exception from its type name and message only."""

    default_status = 404


class SendRejected(EngineError):
    """WhatsApp will never accept this message (retrying cannot help): the queued message
    fails with `code` (invalid_recipient, not_on_whatsapp, media_too_large, invalid_message)."""

    def __init__(self, code: str, message: str | None = None) -> None:
        if message is None:  # rebuilt from its text (an engine host sends "code: message")
            code, _, message = code.partition(": ")
        super().__init__(f"{code}: {message}")
        self.code = code


class SendUnknown(EngineError):
    """The message may have reached WhatsApp, but no answer says so (the server's ack never
    came, the connection dropped after the message left, the engine host died during the
    call). An engine that reuses message ids resends safely; one that cannot would send a
    second message, so the sender fails it with `outcome_unknown` (design §12)."""


@runtime_checkable
class Client(Protocol):
    """One tenant's WhatsApp session. One object per tenant for its whole life."""

    # Whether send() sends with Outgoing.id, so that a resend of the same id is one message
    # for the recipient (the simulator: True). neonize 0.5.2 cannot (its SendMessage export
    # lets whatsmeow choose the id): every attempt there is a new message, so the sender
    # never abandons a call in flight and never resends one whose outcome is unknown.
    reuses_message_ids: bool

    async def is_paired(self) -> bool:
        """Whether the device store holds a paired device (read from the store, no session)."""
        ...

    async def connect(self) -> None:
        """Start a session with the paired device. Returns once started; the outcome arrives
        as an event. Raising is the same as a ClientDead event."""
        ...

    async def heartbeat(self) -> bool:
        """Cheap liveness check of the running session."""
        ...

    async def send(self, out: Outgoing) -> SendResult:
        """Send one queued message with the id chosen at queue time when the engine can
        (`reuses_message_ids`). Raises NotConnected or EngineError when nothing was sent
        (transient: retried), SendRejected (terminal: the message fails), SendUnknown when
        the message may have left (see there)."""
        ...

    async def mark_read(self, chat: str, ids: list[str], sender: str | None) -> None:
        """Send read receipts for these received messages of one chat (sender: the group
        member who sent them; None in a 1:1 chat). Raises NotConnected."""
        ...

    async def chat_presence(self, chat: str, state: str) -> None:
        """Chat presence: composing, recording or paused. Raises NotConnected."""
        ...

    async def download_media(self, ref: str, dest: str, max_bytes: int) -> dict:
        """Download the media file `ref` (Media.ref) into the file `dest`, streamed where the
        library allows. Returns {"status": "ok", "size", "sha256" (hex of the plain bytes)},
        or {"status": "expired" | "too_large", "error"} when the CDN copy is gone
        (403/404/410) / the file is over `max_bytes`. Raises EngineError (NotConnected) for
        transient failures. Plain data in and out: it crosses an engine host's pipe."""
        ...

    async def request_media_reupload(
        self, ref: str, chat: str, sender: str, wa_id: str, from_me: bool
    ) -> str:
        """Ask the phone to upload an expired file again (whatsmeow's media retry receipt);
        returns the new reference. Raises EngineError when the phone cannot or the engine
        does not support it."""
        ...

    async def pair(self, phone: str | None) -> None:
        """Start pairing an unpaired store: PairQR / PairCode events, then PairSuccess or
        PairFailed."""
        ...

    async def logout(self) -> None:
        """Unlink the device and end the session; the device store is emptied."""
        ...

    async def stop(self) -> None:
        """End the session (or pairing) if any. Idempotent; no events after it returns."""
        ...

    async def remove(self) -> None:
        """Delete the device store. Called after stop() when a tenant is removed."""
        ...

    async def configure(self, settings: dict) -> None:
        """The tenant's settings (`proxy`, `reject_calls`, `mark_online`; absent = default).
        Called before a connect and whenever they change; a proxy applies from the next
        connect, the others at once."""
        ...

    # ---- people and groups (design §13). Each one is a request to WhatsApp's servers (but
    # identity()) and raises NotConnected without a live session. ----

    async def lookup(self, phones: list[str]) -> list[LookupResult]:
        """Which of these numbers (digits) are on WhatsApp: one query for all of them."""
        ...

    async def identity(self, jid: str) -> str | None:
        """The other form of a JID (phone JID <-> LID) from the device's own LID map."""
        ...

    async def address_book(self) -> list[ContactName]:
        """The account's saved contacts with their names (the device's own copy of app state:
        no server call)."""
        ...

    async def user_info(self, jid: str) -> dict:
        """`{"jid", "lid", "status", "business_name"}` of one user."""
        ...

    async def picture(self, jid: str, known_id: str | None) -> Picture | None:
        """The profile picture; None when there is none; `data` None when `known_id` is
        still the current one."""
        ...

    async def groups(self) -> list[Group]: ...

    async def group(self, jid: str) -> Group:
        """Raises Refused(404) when the account is not in it."""
        ...

    async def create_group(self, subject: str, participants: list[str]) -> Group: ...

    async def update_participants(
        self, jid: str, action: str, participants: list[str]
    ) -> list[Participant]:
        """action: add | remove | promote | demote. One result per participant, with
        WhatsApp's `error` code where it refused that one."""
        ...

    async def invite_link(self, jid: str, reset: bool) -> str: ...

    async def join_group(self, code: str) -> str:
        """Join by invite code; returns the group's JID."""
        ...

    async def leave_group(self, jid: str) -> None: ...


@runtime_checkable
class Engine(Protocol):
    name: str

    def client(self, tenant_id: str, sink: Sink) -> Client: ...

    async def close(self) -> None:
        """Release engine-wide resources after every client was stopped."""
        ...
