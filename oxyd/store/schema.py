"""The SQLite schema of oxyd.sqlite3, as numbered migrations (PRAGMA user_version).

Append a migration to add a version; never edit a released one. A fresh database runs them
all in one transaction; a database newer than the code is refused.
"""

MIGRATIONS: list[str] = [
    # v1
    """
    CREATE TABLE tenants (
        id              TEXT PRIMARY KEY,
        engine          TEXT NOT NULL,
        state           TEXT NOT NULL,
        reason          TEXT,
        state_since_ms  INTEGER NOT NULL,
        created_at_ms   INTEGER NOT NULL,
        jid             TEXT,
        push_name       TEXT,
        failures        INTEGER NOT NULL DEFAULT 0,
        ban_expires_ms  INTEGER
    );
    CREATE TABLE state_history (
        id      INTEGER PRIMARY KEY,
        tenant  TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        state   TEXT NOT NULL,
        reason  TEXT,
        at_ms   INTEGER NOT NULL
    );
    CREATE INDEX state_history_tenant ON state_history(tenant, id);

    -- Messages outlive their tenant row unless purged, so no foreign key here.
    CREATE TABLE messages (
        id              INTEGER PRIMARY KEY,
        tenant          TEXT NOT NULL,
        chat            TEXT NOT NULL,
        sender          TEXT NOT NULL,
        wa_id           TEXT NOT NULL,
        from_me         INTEGER NOT NULL,
        sent_at_ms      INTEGER NOT NULL,
        kind            TEXT NOT NULL,
        text            TEXT,
        push_name       TEXT,
        chat_alt        TEXT,
        sender_alt      TEXT,
        ref_id          TEXT,
        media           TEXT,
        raw             BLOB,
        status          TEXT NOT NULL,
        delivered_at_ms INTEGER,
        read_at_ms      INTEGER,
        played_at_ms    INTEGER,
        from_history    INTEGER NOT NULL DEFAULT 0,
        stored_at_ms    INTEGER NOT NULL,
        UNIQUE (tenant, chat, sender, wa_id)
    );
    CREATE INDEX messages_tenant_time ON messages(tenant, sent_at_ms, id);
    CREATE INDEX messages_chat_time ON messages(tenant, chat, sent_at_ms, id);
    CREATE INDEX messages_wa_id ON messages(tenant, wa_id);

    CREATE TABLE chats (
        tenant          TEXT NOT NULL,
        jid             TEXT NOT NULL,
        name            TEXT,
        last_message_ms INTEGER,
        unread_count    INTEGER NOT NULL DEFAULT 0,
        message_count   INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (tenant, jid)
    ) WITHOUT ROWID;
    CREATE INDEX chats_recent ON chats(tenant, last_message_ms, jid);

    CREATE TABLE contacts (
        tenant        TEXT NOT NULL,
        jid           TEXT NOT NULL,
        push_name     TEXT NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, jid)
    ) WITHOUT ROWID;

    CREATE TABLE tenant_counts (
        tenant          TEXT PRIMARY KEY,
        messages_stored INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;

    CREATE TABLE history_syncs (
        id            INTEGER PRIMARY KEY,
        tenant        TEXT NOT NULL,
        sync_type     TEXT NOT NULL,
        conversations INTEGER NOT NULL,
        processed     INTEGER NOT NULL,
        stored        INTEGER NOT NULL,
        at_ms         INTEGER NOT NULL
    );

    -- sha256 of the token: tokens are 256-bit random, so an unsalted hash is enough.
    CREATE TABLE tokens (
        hash          TEXT PRIMARY KEY,
        tenant        TEXT NOT NULL REFERENCES tenants(id) ON DELETE CASCADE,
        created_at_ms INTEGER NOT NULL
    );
    CREATE INDEX tokens_tenant ON tokens(tenant);

    CREATE TABLE webhooks (
        tenant        TEXT PRIMARY KEY REFERENCES tenants(id) ON DELETE CASCADE,
        url           TEXT NOT NULL,
        secret        TEXT NOT NULL,
        events        TEXT,
        updated_at_ms INTEGER NOT NULL
    );

    -- One row per (event, destination). destination is 'global' or 't:<tenant>'.
    CREATE TABLE outbox (
        id              INTEGER PRIMARY KEY,
        event_id        TEXT NOT NULL,
        destination     TEXT NOT NULL,
        tenant          TEXT,
        type            TEXT NOT NULL,
        body            TEXT NOT NULL,
        created_at_ms   INTEGER NOT NULL,
        status          TEXT NOT NULL DEFAULT 'pending',
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL,
        last_error      TEXT,
        done_at_ms      INTEGER,
        UNIQUE (event_id, destination)
    );
    CREATE INDEX outbox_pending ON outbox(status, destination, id);
    CREATE INDEX outbox_tenant ON outbox(tenant, status, id);
    """,
    # v2: cluster moves (design §16). The key is `tenant_id`, not `tenant`: these rows are
    # the node's own bookkeeping and never travel in a tenant's archive.
    """
    CREATE TABLE cluster_moves (
        tenant_id     TEXT NOT NULL,
        direction     TEXT NOT NULL,        -- 'out': handing it to peer, 'in': received from peer
        peer          INTEGER NOT NULL,
        sha256        TEXT,
        step          TEXT NOT NULL,
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant_id, direction)
    ) WITHOUT ROWID;
    """,
    # v3: incoming media. One row per media message: the download queue and its outcome.
    # Keyed like messages (not by messages.id) so a tenant's rows can move between databases.
    # The message row's `media` JSON mirrors status/url for readers; this table is the truth.
    """
    CREATE TABLE media (
        id              INTEGER PRIMARY KEY,
        tenant          TEXT NOT NULL,
        chat            TEXT NOT NULL,
        sender          TEXT NOT NULL,
        wa_id           TEXT NOT NULL,
        from_me         INTEGER NOT NULL,
        type            TEXT NOT NULL,
        mime            TEXT,
        size            INTEGER,
        expected_sha256 TEXT,
        sha256          TEXT,
        ref             TEXT,
        status          TEXT NOT NULL,
        reason          TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        reuploaded      INTEGER NOT NULL DEFAULT 0,
        next_attempt_ms INTEGER NOT NULL DEFAULT 0,
        sent_at_ms      INTEGER NOT NULL,
        queued_at_ms    INTEGER NOT NULL,
        done_at_ms      INTEGER,
        UNIQUE (tenant, chat, sender, wa_id)
    );
    CREATE INDEX media_pending ON media(status, tenant, id);
    CREATE INDEX media_sha ON media(tenant, sha256);
    CREATE INDEX media_wa_id ON media(tenant, wa_id);

    -- Media JSON written before v3 had another shape and no download: show it as skipped.
    UPDATE messages SET media = json_object(
        'type', kind,
        'mime', json_extract(media, '$.mime'),
        'size', json_extract(media, '$.size_bytes'),
        'sha256', NULL,
        'filename', json_extract(media, '$.filename'),
        'caption', text,
        'duration_s', json_extract(media, '$.duration_s'),
        'status', 'skipped',
        'reason', 'received before this oxyd version downloaded media',
        'url', NULL
    ) WHERE media IS NOT NULL AND json_extract(media, '$.status') IS NULL;
    """,
    # v4: people and groups (design §13): tenant settings, the lookup cache, the LID map,
    # saved and business names, groups and profile pictures.
    """
    ALTER TABLE tenants ADD COLUMN settings TEXT;

    CREATE TABLE lookups (
        tenant        TEXT NOT NULL,
        phone         TEXT NOT NULL,
        on_whatsapp   INTEGER NOT NULL,
        jid           TEXT,
        lid           TEXT,
        checked_at_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, phone)
    ) WITHOUT ROWID;

    -- What the engine told us of whatsmeow's LID map: one person, two addresses.
    CREATE TABLE lid_map (
        tenant        TEXT NOT NULL,
        lid           TEXT NOT NULL,
        phone         TEXT NOT NULL,
        learned_at_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, lid)
    ) WITHOUT ROWID;
    CREATE INDEX lid_map_phone ON lid_map(tenant, phone);

    ALTER TABLE contacts ADD COLUMN full_name TEXT;
    ALTER TABLE contacts ADD COLUMN first_name TEXT;
    ALTER TABLE contacts ADD COLUMN business_name TEXT;

    CREATE TABLE groups (
        tenant        TEXT NOT NULL,
        jid           TEXT NOT NULL,
        subject       TEXT,
        description   TEXT,
        owner         TEXT,
        created_at_ms INTEGER,
        announce      INTEGER NOT NULL DEFAULT 0,
        locked        INTEGER NOT NULL DEFAULT 0,
        participants  TEXT NOT NULL DEFAULT '[]',
        updated_at_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, jid)
    ) WITHOUT ROWID;

    -- picture_id NULL: the contact has no picture (a cached "no").
    CREATE TABLE pictures (
        tenant        TEXT NOT NULL,
        jid           TEXT NOT NULL,
        picture_id    TEXT,
        mime          TEXT,
        data          BLOB,
        checked_at_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, jid)
    );

    -- Only LID-addressed messages still missing the phone: what a learned mapping backfills.
    CREATE INDEX messages_lid_sender ON messages(tenant, sender)
        WHERE sender_alt IS NULL AND sender LIKE '%@lid';
    CREATE INDEX messages_lid_chat ON messages(tenant, chat)
        WHERE chat_alt IS NULL AND chat LIKE '%@lid';
    """,
    # v5: webhooks set with a tenant token are guarded against SSRF at delivery time.
    """
    ALTER TABLE webhooks ADD COLUMN guarded INTEGER NOT NULL DEFAULT 0;
    """,
    # v6: the outgoing queue (design §12) and the Idempotency-Key answers
    """
    -- seq is the queue order, id the WhatsApp id chosen at queue time (the API id).
    CREATE TABLE outgoing (
        seq           INTEGER PRIMARY KEY,
        tenant        TEXT NOT NULL,
        id            TEXT NOT NULL,
        wa_id         TEXT,
        chat          TEXT NOT NULL,
        kind          TEXT NOT NULL,
        body          TEXT NOT NULL,
        data          BLOB,
        status        TEXT NOT NULL,
        error         TEXT,
        attempts      INTEGER NOT NULL DEFAULT 0,
        queued_at_ms  INTEGER NOT NULL,
        sent_at_ms    INTEGER,
        done_at_ms    INTEGER,
        UNIQUE (tenant, id)
    );
    CREATE INDEX outgoing_queue ON outgoing(tenant, status, seq);
    CREATE INDEX outgoing_done ON outgoing(done_at_ms) WHERE done_at_ms IS NOT NULL;

    CREATE TABLE idempotency_keys (
        tenant        TEXT NOT NULL,
        key           TEXT NOT NULL,
        request_hash  TEXT NOT NULL,
        status        INTEGER NOT NULL,
        response      TEXT NOT NULL,
        created_at_ms INTEGER NOT NULL,
        PRIMARY KEY (tenant, key)
    ) WITHOUT ROWID;
    CREATE INDEX idempotency_age ON idempotency_keys(created_at_ms);
    """,
    # v7: the media quota alert already sent to a tenant, so "once" survives a restart: one
    # row per tenant while its usage stays at what it was then and the quota is unchanged.
    """
    CREATE TABLE media_quota_alerts (
        tenant        TEXT PRIMARY KEY,
        quota_bytes   INTEGER NOT NULL,
        used_bytes    INTEGER NOT NULL,
        alerted_at_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # v8: an attempt in flight on an engine that cannot reuse message ids (neonize): written
    # before the engine call, cleared by its outcome. Still set when the drain reaches the
    # row again, the process (or its engine host) ended during the call: the message may
    # have left (design §12, oxyd/send_attempt.py).
    """
    ALTER TABLE outgoing ADD COLUMN started_at_ms INTEGER;
    """,
]

LATEST = len(MIGRATIONS)
