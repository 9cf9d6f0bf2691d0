"""oxyd.sqlite3: db (open, migrate, queries), schema, writer (batched ingest), outbox rows."""
