"""oxyd.sqlite3: the Store, its connections (connection.py) with the queries about tenants
(tenant_queries.py) and about what they received (message_queries.py); schema.py, writer.py
and outbox.py beside it."""

from __future__ import annotations

from oxyd.store.connection import DB_NAME, SchemaTooNew, StoreError
from oxyd.store.message_queries import MessageQueries
from oxyd.store.tenant_queries import TenantQueries, hash_token

# The Store's own names, for its users: where the file is, what opening it raises, how a
# token is kept.
__all__ = ["DB_NAME", "SchemaTooNew", "Store", "StoreError", "hash_token"]


class Store(TenantQueries, MessageQueries):
    """The database of one data directory (Store.open)."""
