"""oxyd.sqlite3: the Store, its connections (connection.py) with the queries about tenants
(tenant_queries.py) and about what they received (message_queries.py); schema.py, writer.py
and outbox.py beside it."""

from __future__ import annotations

from oxyd.store.connection import DB_NAME, SchemaTooNew, StoreError
from oxyd.store.cursors import (
    CHATS_CURSOR,
    MESSAGES_CURSOR,
    cursor_pattern,
    decode_cursor,
    encode_cursor,
)
from oxyd.store.message_queries import MESSAGE_COLS, MessageQueries, message_json
from oxyd.store.outbox import OUTBOX_INSERT, insert_outbox
from oxyd.store.tenant_queries import TenantQueries, hash_token

# Names that lived here before the split, for the modules that still import them from here.
__all__ = [
    "CHATS_CURSOR",
    "DB_NAME",
    "MESSAGES_CURSOR",
    "MESSAGE_COLS",
    "OUTBOX_INSERT",
    "SchemaTooNew",
    "Store",
    "StoreError",
    "cursor_pattern",
    "decode_cursor",
    "encode_cursor",
    "hash_token",
    "insert_outbox",
    "message_json",
]


class Store(TenantQueries, MessageQueries):
    """The database of one data directory (Store.open)."""
