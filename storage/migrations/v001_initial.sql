-- AgentSpace schema, version 1. One schema for SQLite and PostgreSQL.
-- A line starting with "-- only: postgres" or "-- only: sqlite" is kept (without
-- the marker) for that engine only. Never edit a shipped migration: add vNNN.

-- The single stream position counter; every syncable change takes the next value.
CREATE TABLE stream_position (
    id  INTEGER PRIMARY KEY,
    pos BIGINT NOT NULL
);
INSERT INTO stream_position (id, pos) VALUES (1, 0);

CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    localpart     TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL DEFAULT '',
    created_ts    BIGINT NOT NULL,
    is_guest      BOOLEAN NOT NULL DEFAULT FALSE,
    is_admin      BOOLEAN NOT NULL DEFAULT FALSE,
    deactivated   BOOLEAN NOT NULL DEFAULT FALSE,
    user_type     TEXT,
    appservice_id TEXT,
    displayname   TEXT,
    avatar_url    TEXT
);

CREATE TABLE devices (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    display_name TEXT,
    created_ts   BIGINT NOT NULL,
    last_seen_ts BIGINT NOT NULL DEFAULT 0,
    last_seen_ip TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, device_id)
);

-- Only the SHA-256 of each token is stored.
CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    expires_ts BIGINT NOT NULL DEFAULT 0,
    refresh_token_hash TEXT
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX refresh_tokens_device ON refresh_tokens (user_id, device_id);

CREATE TABLE rooms (
    room_id      TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator      TEXT NOT NULL,
    created_ts   BIGINT NOT NULL,
    published    BOOLEAN NOT NULL DEFAULT FALSE
);

-- Every room event, in stream order. pos is both the global stream position
-- and (rooms have one linear history here) the topological order.
CREATE TABLE events (
    pos            BIGINT PRIMARY KEY,
    event_id       TEXT NOT NULL UNIQUE,
    room_id        TEXT NOT NULL,
    type           TEXT NOT NULL,
    state_key      TEXT,
    sender         TEXT NOT NULL,
    origin_ts      BIGINT NOT NULL,
    depth          BIGINT NOT NULL,
    membership     TEXT,
    rel_type       TEXT,
    relates_to     TEXT,
    body           TEXT,
    pdu_json       TEXT NOT NULL,
    unsigned_json  TEXT NOT NULL DEFAULT '{}',
    redacted_by    TEXT,
    txn_id         TEXT,
    txn_device_id  TEXT
);
CREATE INDEX events_room_pos ON events (room_id, pos);
CREATE INDEX events_state ON events (room_id, type, state_key, pos);
CREATE INDEX events_relates ON events (relates_to, rel_type, pos);

-- The current state of each room.
CREATE TABLE room_state (
    room_id   TEXT NOT NULL,
    type      TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    pos       BIGINT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);

-- Current membership, denormalised from room_state for per-user lookups.
CREATE TABLE memberships (
    room_id    TEXT NOT NULL,
    user_id    TEXT NOT NULL,
    membership TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    pos        BIGINT NOT NULL,
    forgotten  BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id, membership);

CREATE TABLE room_aliases (
    alias      TEXT PRIMARY KEY,
    room_id    TEXT NOT NULL,
    creator    TEXT NOT NULL,
    created_ts BIGINT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

-- txnId idempotency of /send and /redact, per device.
CREATE TABLE transactions (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    type    TEXT NOT NULL,
    content TEXT NOT NULL,
    pos     BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, type)
);
CREATE INDEX account_data_pos ON account_data (user_id, pos);

CREATE TABLE receipts (
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id    TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    ts           BIGINT NOT NULL,
    pos          BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_room_pos ON receipts (room_id, pos);

CREATE TABLE filters (
    user_id   TEXT NOT NULL,
    filter_id BIGINT NOT NULL,
    filter    TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
);

CREATE TABLE presence (
    user_id        TEXT PRIMARY KEY,
    presence       TEXT NOT NULL,
    status_msg     TEXT,
    last_active_ts BIGINT NOT NULL,
    pos            BIGINT NOT NULL
);
CREATE INDEX presence_pos ON presence (pos);

CREATE TABLE push_rules (
    user_id TEXT PRIMARY KEY,
    rules   TEXT NOT NULL
);

CREATE TABLE device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE one_time_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_json  TEXT NOT NULL,
    fallback  BOOLEAN NOT NULL DEFAULT FALSE,
    used      BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (user_id, device_id, key_id)
);

CREATE TABLE cross_signing_keys (
    user_id  TEXT NOT NULL,
    key_type TEXT NOT NULL,
    key_json TEXT NOT NULL,
    PRIMARY KEY (user_id, key_type)
);

-- Signatures uploaded by one user on another user's key or device.
CREATE TABLE key_signatures (
    signer_user_id TEXT NOT NULL,
    signer_key_id  TEXT NOT NULL,
    target_user_id TEXT NOT NULL,
    target_key_id  TEXT NOT NULL,
    signature      TEXT NOT NULL,
    PRIMARY KEY (signer_user_id, signer_key_id, target_user_id, target_key_id)
);

-- Users whose device list or keys changed at pos.
CREATE TABLE device_list_changes (
    user_id TEXT NOT NULL,
    pos     BIGINT NOT NULL,
    PRIMARY KEY (user_id, pos)
);
CREATE INDEX device_list_changes_pos ON device_list_changes (pos);

CREATE TABLE to_device (
    pos        BIGINT NOT NULL,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    sender     TEXT NOT NULL,
    type       TEXT NOT NULL,
    content    TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, pos)
);

CREATE TABLE to_device_txns (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    txn_id     TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE media (
    media_id     TEXT PRIMARY KEY,
    content_type TEXT NOT NULL,
    size_bytes   BIGINT NOT NULL,
    upload_name  TEXT,
    user_id      TEXT NOT NULL,
    created_ts   BIGINT NOT NULL,
    sha256       TEXT NOT NULL
);

-- Full-text search over content.body (POST /search).
-- SQLite: FTS4 (built into the driver without build tags); rowid = events.pos.
-- only: sqlite CREATE VIRTUAL TABLE events_fts USING fts4(body, tokenize=unicode61 "remove_diacritics=2");
-- only: postgres CREATE INDEX events_body_fts ON events USING GIN (to_tsvector('simple', coalesce(body, '')));
