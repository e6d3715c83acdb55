-- Admin API (Synapse-compatible subset): blocked rooms, registration tokens
-- and the "erased" flag of deactivated users.

-- GDPR erasure requested with the account's deactivation (POST
-- /_synapse/admin/v1/deactivate with "erase": true).
ALTER TABLE users ADD COLUMN erased BOOLEAN NOT NULL DEFAULT FALSE;

-- Rooms nobody on this server may join, be invited to or knock on. A room id
-- may be blocked before it is known and stays blocked after a purge.
CREATE TABLE blocked_rooms (
    room_id    TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL,
    blocked_ts BIGINT NOT NULL
);

-- Registration tokens (the m.login.registration_token stage of /register).
-- uses_allowed and expiry_time NULL mean unlimited.
CREATE TABLE registration_tokens (
    token        TEXT PRIMARY KEY,
    uses_allowed BIGINT,
    completed    BIGINT NOT NULL DEFAULT 0,
    expiry_time  BIGINT,
    created_ts   BIGINT NOT NULL
);

-- A registration that has passed the token stage but not finished yet holds
-- one use of the token until its UIA session expires ("pending").
CREATE TABLE registration_token_reservations (
    session_id TEXT PRIMARY KEY,
    token      TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX registration_token_reservations_token ON registration_token_reservations (token, expires_ts);
