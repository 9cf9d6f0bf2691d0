"""Pure translation of neonize (whatsmeow) protobuf events into oxyd.model events (a
message's content: content.py; JIDs and times: jids.py).

No I/O and no neonize calls: every function takes protobuf objects and returns plain events,
so the whole mapping is tested on hand-built protobufs. It never imports neonize itself.

Decisions (documented here because the store relies on them):
- JIDs are written without their device part (`user@server`): a sender's phone and its linked
  devices are one sender, so the message key (tenant, chat, sender, id) stays stable.
- LID addressing: where whatsmeow gives the phone JID next to an `@lid` chat/sender
  (SenderAlt, RecipientAlt), the PHONE JID becomes `chat`/`sender` and the LID goes to
  `chat_alt`/`sender_alt`. When only the LID is known it stays in `chat`/`sender`.
- `status@broadcast` and broadcast lists are kept with `is_broadcast=True`, never dropped.
- Receipts: DELIVERED, READ, PLAYED map to "delivered"/"read"/"played". READ_SELF and
  PLAYED_SELF (our own other device read someone else's message), SENDER (sync to our own
  devices), RETRY, SERVER_ERROR, INACTIVE, PEER_MSG and HISTORY_SYNC say nothing about a
  recipient reading our message: they are ignored (return None).
- `raw` holds the serialized neonize `Message` event for live messages and the serialized
  `WebMessageInfo` for history messages (`from_history` tells which).
- Push names: live messages carry `push_name`; history sync push names become Contact events.
- Protocol-only payloads (key distribution, app-state keys, history notifications) are not
  messages: `message_from_event` returns None for them.
"""

from __future__ import annotations

from typing import Any

from oxyd.model import (
    ClientDead,
    ClientOutdated,
    Connected,
    ConnectFailure,
    Contact,
    Disconnected,
    Event,
    HistorySync,
    KeepAliveRestored,
    KeepAliveTimeout,
    LoggedOut,
    Message,
    OfflineSyncCompleted,
    PairFailed,
    PairSuccess,
    Receipt,
    StreamReplaced,
    TemporaryBan,
)
from oxyd.neonize.content import content
from oxyd.neonize.jids import is_broadcast, is_lid, is_pn, jid_str, parse_jid, pick_phone, to_ms

RECEIPT_TYPES = {1: "delivered", 4: "read", 6: "played"}
CONNECT_FAILURE_NAMES = {
    1: "generic",
    2: "logged_out",
    3: "temp_banned",
    4: "main_device_gone",
    5: "unknown_logout",
    6: "client_outdated",
    7: "bad_user_agent",
    8: "internal_server_error",
    9: "experimental",
    10: "service_unavailable",
}
HISTORY_SYNC_TYPES = {
    0: "initial_bootstrap",
    1: "initial_status_v3",
    2: "full",
    3: "recent",
    4: "push_name",
    5: "non_blocking_data",
    6: "on_demand",
}

__all__ = ["jid_str", "parse_jid", "to_ms"]  # tests and callers still use them through here


def message_from_event(ev: Any, *, own_jid: str | None = None) -> Message | None:
    """A neonize `Message` event (live) as an oxyd Message, or None for protocol payloads."""
    info = ev.Info
    src = info.MessageSource
    kind, text, media, ref_id = content(ev.Message)
    if kind is None:
        return None
    raw_sender = jid_str(src.Sender)
    sender, sender_alt = pick_phone(raw_sender, jid_str(src.SenderAlt))
    raw_chat = jid_str(src.Chat)
    chat, chat_alt = raw_chat, None
    if is_lid(raw_chat) and not src.IsGroup:
        # In a 1:1 chat the peer is the sender (inbound) or the recipient (outbound).
        peer_alt = jid_str(src.RecipientAlt) if src.IsFromMe else jid_str(src.SenderAlt)
        if is_pn(peer_alt):
            chat, chat_alt = peer_alt, raw_chat
    if src.IsFromMe and own_jid and not is_pn(sender):
        sender, sender_alt = own_jid, sender
    return Message(
        wa_id=info.ID,
        chat=chat or "",
        sender=sender or "",
        from_me=bool(src.IsFromMe),
        sent_at_ms=to_ms(info.Timestamp),
        kind=kind,
        text=text,
        push_name=info.Pushname or None,
        chat_alt=chat_alt,
        sender_alt=sender_alt,
        media=media,
        ref_id=ref_id,
        raw=ev.SerializePartialToString(),
        is_group=bool(src.IsGroup) or (chat or "").endswith("@g.us"),
        is_broadcast=is_broadcast(raw_chat),
    )


def receipt_from_event(ev: Any) -> Receipt | None:
    kind = RECEIPT_TYPES.get(int(ev.Type))
    if kind is None or not ev.MessageIDs:
        return None
    src = ev.MessageSource
    sender, _ = pick_phone(jid_str(src.Sender), jid_str(src.SenderAlt))
    chat = jid_str(src.Chat)
    if is_lid(chat) and not src.IsGroup:
        chat, _ = pick_phone(chat, jid_str(src.SenderAlt))
    return Receipt(
        chat=chat or "",
        sender=sender or "",
        wa_ids=tuple(ev.MessageIDs),
        type=kind,
        at_ms=to_ms(ev.Timestamp),
    )


def history_message(
    wmi: Any, chat: str, chat_alt: str | None, own_jid: str | None, chat_name: str | None
) -> Message | None:
    """One history-sync WebMessageInfo as a Message(from_history=True)."""
    if not wmi.HasField("message") or not wmi.key.ID:
        return None  # stubs (group notices, calls) carry no message body
    kind, text, media, ref_id = content(wmi.message)
    if kind is None:
        return None
    key = wmi.key
    is_group = chat.endswith("@g.us")
    broadcast = is_broadcast(chat) or is_broadcast(parse_jid(key.remoteJID))
    if key.fromMe:
        sender = own_jid or ""
    elif is_group or broadcast:
        sender = parse_jid(key.participant or wmi.participant) or ""
    else:
        sender = chat
    return Message(
        wa_id=key.ID,
        chat=chat,
        sender=sender,
        from_me=bool(key.fromMe),
        sent_at_ms=to_ms(wmi.messageTimestamp),
        kind=kind,
        text=text,
        push_name=wmi.pushName or None,
        chat_name=chat_name,
        chat_alt=chat_alt,
        media=media,
        ref_id=ref_id,
        raw=wmi.SerializePartialToString(),
        is_group=is_group,
        is_broadcast=broadcast,
        from_history=True,
    )


def history_events(ev: Any, *, own_jid: str | None = None) -> list[Event]:
    """A neonize HistorySync event: one HistorySync (messages + chat names), then Contacts."""
    data = ev.Data
    messages: list[Message] = []
    names: list[tuple[str, str]] = []
    for conv in data.conversations:
        raw_chat = parse_jid(conv.ID) or conv.ID
        chat, chat_alt = pick_phone(raw_chat, parse_jid(conv.pnJID))
        if chat_alt is None and is_pn(chat) and conv.lidJID:
            chat_alt = parse_jid(conv.lidJID)
        name = conv.name or conv.displayName or None
        if name:
            names.append((chat, name))
        for item in conv.messages:
            msg = history_message(item.message, chat, chat_alt, own_jid, name)
            if msg is not None:
                messages.append(msg)
    for wmi in data.statusV3Messages:
        msg = history_message(wmi, "status@broadcast", None, own_jid, None)
        if msg is not None:
            messages.append(msg)
    out: list[Event] = [
        HistorySync(
            sync_type=HISTORY_SYNC_TYPES.get(int(data.syncType), str(data.syncType)),
            conversations=len(data.conversations),
            messages=tuple(messages),
            chat_names=tuple(names),
        )
    ]
    for p in data.pushnames:
        jid = parse_jid(p.ID)
        if jid and p.pushname:
            out.append(Contact(jid=jid, push_name=p.pushname))
    return out


def lifecycle_event(name: str, ev: Any, *, me: Any = None) -> Event | None:
    """Session events by neonize class name (ConnectedEv -> "Connected")."""
    if name == "Connected":
        jid = jid_str(me.JID) if me is not None and me.HasField("JID") else None
        push = (me.PushName or None) if me is not None else None
        return Connected(jid=jid, push_name=push)
    if name in ("Disconnected", "StreamError"):
        # StreamError: whatsmeow drops the socket and reconnects by itself, like Disconnected.
        return Disconnected()
    if name == "KeepAliveTimeout":
        return KeepAliveTimeout(error_count=int(ev.ErrorCount) or 1)
    if name == "KeepAliveRestored":
        return KeepAliveRestored()
    if name == "OfflineSyncCompleted":
        return OfflineSyncCompleted(count=int(ev.Count))
    if name == "LoggedOut":
        reason = CONNECT_FAILURE_NAMES.get(int(ev.Reason), f"reason {int(ev.Reason)}")
        return LoggedOut(reason=f"{reason} (on connect)" if ev.OnConnect else reason)
    if name == "StreamReplaced":
        return StreamReplaced()
    if name == "TemporaryBan":
        return TemporaryBan(code=int(ev.Code), expire_s=float(ev.Expire))
    if name == "ClientOutdated":
        return ClientOutdated()
    if name == "ConnectFailure":
        reason = int(ev.Reason)
        if reason == 6:
            return ClientOutdated()
        return ConnectFailure(reason=reason, message=ev.Message)
    if name == "PairStatus":
        if int(ev.Status) == 2:
            return PairSuccess(jid=jid_str(ev.ID) or "", push_name=ev.BusinessName or None)
        return PairFailed(reason=ev.Error or "pairing refused")
    return None


def dead(error: BaseException | str | None) -> ClientDead:
    if isinstance(error, BaseException):
        return ClientDead(error=f"{type(error).__name__}: {error}"[:500])
    return ClientDead(error=(error or "session ended")[:500])
