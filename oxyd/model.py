"""Domain vocabulary: tenant states and the events an engine reports. Plain data, no I/O."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field

from oxyd.proxy import mask

TENANT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def valid_tenant_id(tenant_id: object) -> bool:
    # fullmatch, not match: "$" would accept a trailing newline, and ids become paths.
    return isinstance(tenant_id, str) and TENANT_ID_RE.fullmatch(tenant_id) is not None


class State(enum.StrEnum):
    NEW = "new"
    PAIRING = "pairing"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    BACKOFF = "backoff"
    STOPPED = "stopped"
    LOGGED_OUT = "logged_out"
    CONFLICT = "conflict"
    BANNED = "banned"
    OUTDATED = "outdated"
    FAILED = "failed"


# Needs a person: never retried automatically, survives restarts.
PARKED = frozenset({State.LOGGED_OUT, State.CONFLICT, State.OUTDATED, State.FAILED})
# States in which the supervisor does not try to connect at start.
IDLE = PARKED | {State.NEW, State.STOPPED}

ENGINES = ("neonize", "simulator")


# ---- events an engine reports (delivered on the event loop, in order, per tenant) ----


@dataclass(frozen=True, slots=True)
class Media:
    mime: str | None = None
    size_bytes: int | None = None
    filename: str | None = None
    sha256: str | None = None
    duration_s: int | None = None
    width: int | None = None
    height: int | None = None
    caption: str | None = None
    # How the engine finds the file again (opaque to everything but that engine): the
    # simulator's CDN token, neonize's serialised media message. Never shown through the API.
    ref: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One WhatsApp message, inbound, outbound or from history sync."""

    wa_id: str
    chat: str
    sender: str
    from_me: bool
    sent_at_ms: int
    kind: str = "text"  # text, image, video, audio, voice, document, sticker, location, ...
    text: str | None = None
    push_name: str | None = None
    chat_name: str | None = None
    # LID addressing: the phone JIDs whatsmeow gives next to an @lid chat/sender.
    chat_alt: str | None = None
    sender_alt: str | None = None
    media: Media | None = None
    # For reactions, edits and revokes: the message they refer to.
    ref_id: str | None = None
    raw: bytes | None = None
    is_group: bool = False
    is_broadcast: bool = False
    # History-sync messages must not bump unread counts or fire "received" webhooks.
    from_history: bool = False


@dataclass(frozen=True, slots=True)
class Receipt:
    chat: str
    sender: str
    wa_ids: tuple[str, ...]
    type: str  # delivered | read | played
    at_ms: int


@dataclass(frozen=True, slots=True)
class HistorySync:
    sync_type: str
    conversations: int
    messages: tuple[Message, ...]
    chat_names: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Connected:
    jid: str | None = None
    push_name: str | None = None


@dataclass(frozen=True, slots=True)
class Disconnected:
    """Unexpected drop; the library reconnects by itself."""


@dataclass(frozen=True, slots=True)
class KeepAliveTimeout:
    error_count: int = 1


@dataclass(frozen=True, slots=True)
class KeepAliveRestored:
    pass


@dataclass(frozen=True, slots=True)
class OfflineSyncCompleted:
    count: int = 0


@dataclass(frozen=True, slots=True)
class LoggedOut:
    reason: str = "logged out"


@dataclass(frozen=True, slots=True)
class StreamReplaced:
    pass


@dataclass(frozen=True, slots=True)
class TemporaryBan:
    code: int
    expire_s: float


@dataclass(frozen=True, slots=True)
class ClientOutdated:
    pass


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    reason: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class ClientDead:
    """The engine's session ended for any reason not reported above."""

    error: str = ""


@dataclass(frozen=True, slots=True)
class PairQR:
    code: str
    expires_ms: int


@dataclass(frozen=True, slots=True)
class PairCode:
    code: str
    expires_ms: int


@dataclass(frozen=True, slots=True)
class PairSuccess:
    jid: str
    push_name: str | None = None


@dataclass(frozen=True, slots=True)
class PairFailed:
    reason: str


@dataclass(frozen=True, slots=True)
class Contact:
    jid: str
    push_name: str


# ---- people and groups (design §13) ----


@dataclass(frozen=True, slots=True)
class Participant:
    """A group member. `error` is WhatsApp's per-participant refusal code on a create or a
    participant change (403 privacy, 404 not on WhatsApp, 408 left recently, 409 already in)."""

    jid: str
    lid: str | None = None
    phone: str | None = None
    role: str = "member"  # member | admin | superadmin
    error: int | None = None


@dataclass(frozen=True, slots=True)
class Group:
    jid: str
    subject: str | None = None
    description: str | None = None
    owner: str | None = None
    created_at_ms: int | None = None
    announce: bool = False  # only admins send
    locked: bool = False  # only admins edit the group's info
    participants: tuple[Participant, ...] = ()


@dataclass(frozen=True, slots=True)
class LookupResult:
    phone: str
    on_whatsapp: bool
    jid: str | None = None
    lid: str | None = None
    business_name: str | None = None


@dataclass(frozen=True, slots=True)
class Picture:
    """A profile picture. `data` is None when WhatsApp says the cached `id` is still current."""

    id: str
    data: bytes | None = None
    mime: str = "image/jpeg"


@dataclass(frozen=True, slots=True)
class IdentityLearned:
    """The engine learned that a LID and a phone JID are the same person."""

    lid: str
    phone: str


@dataclass(frozen=True, slots=True)
class ContactName:
    """Names from the account's address book (app state) or a business profile."""

    jid: str
    full_name: str | None = None
    first_name: str | None = None
    business_name: str | None = None


@dataclass(frozen=True, slots=True)
class GroupJoined:
    """The account is now in this group (created, added, joined by link)."""

    group: Group


@dataclass(frozen=True, slots=True)
class GroupChanged:
    jid: str
    by: str | None = None
    at_ms: int = 0
    subject: str | None = None
    description: str | None = None
    announce: bool | None = None
    locked: bool | None = None
    join: tuple[str, ...] = ()
    leave: tuple[str, ...] = ()
    promote: tuple[str, ...] = ()
    demote: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CallRejected:
    """An incoming call the engine declined because the tenant has `reject_calls` on."""

    call_id: str
    caller: str
    at_ms: int
    video: bool = False


Event = (
    Message
    | Receipt
    | HistorySync
    | Connected
    | Disconnected
    | KeepAliveTimeout
    | KeepAliveRestored
    | OfflineSyncCompleted
    | LoggedOut
    | StreamReplaced
    | TemporaryBan
    | ClientOutdated
    | ConnectFailure
    | ClientDead
    | PairQR
    | PairCode
    | PairSuccess
    | PairFailed
    | Contact
    | IdentityLearned
    | ContactName
    | GroupJoined
    | GroupChanged
    | CallRejected
)
# Data events the writer stores (with their webhooks) in its batches.
PEOPLE_DATA = (IdentityLearned, ContactName, GroupJoined, GroupChanged, CallRejected)


@dataclass(slots=True)
class Tenant:
    """The persisted row of one tenant plus live figures the supervisor keeps."""

    id: str
    engine: str = "neonize"
    state: State = State.NEW
    state_since_ms: int = 0
    last_error: str | None = None
    jid: str | None = None
    push_name: str | None = None
    failures: int = 0
    next_attempt_ms: int | None = None
    last_event_ms: int | None = None
    created_at_ms: int = 0
    ban_expires_ms: int | None = None
    messages_stored: int = 0
    queue_depth: int = 0
    extra: dict = field(default_factory=dict)
    # Per-tenant settings (PATCH /v1/tenants/{id}): see oxyd/http/settings.py.
    settings: dict = field(default_factory=dict)

    def as_json(self) -> dict:
        return {
            "id": self.id,
            "engine": self.engine,
            "state": str(self.state),
            "jid": self.jid,
            "push_name": self.push_name,
            "state_since_ms": self.state_since_ms,
            "last_error": self.last_error,
            "failures": self.failures,
            "next_attempt_ms": self.next_attempt_ms,
            "last_event_ms": self.last_event_ms,
            "messages_stored": self.messages_stored,
            "queue_depth": self.queue_depth,
            "settings": settings_json(self.settings),
        }


SETTINGS_DEFAULTS = {"reject_calls": False, "mark_online": False, "proxy": None}


def settings_json(settings: dict) -> dict:
    out = {**SETTINGS_DEFAULTS, **settings}
    out["proxy"] = mask(out["proxy"])
    return out
