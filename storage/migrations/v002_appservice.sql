-- Application-service delivery state. The events table itself is the queue:
-- each appservice has a cursor (delivered_pos) into the stream, and at most
-- one transaction in flight whose id and end position are stored before it
-- is sent, so a retry after a crash resends the same txnId with the same
-- events.
CREATE TABLE appservice_state (
    appservice_id   TEXT PRIMARY KEY,
    delivered_pos   BIGINT NOT NULL,
    last_txn_id     BIGINT NOT NULL DEFAULT 0,
    pending_txn_id  BIGINT,
    pending_end_pos BIGINT,
    last_success_ts BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT NOT NULL DEFAULT '',
    last_error_ts   BIGINT NOT NULL DEFAULT 0,
    failures        BIGINT NOT NULL DEFAULT 0
);
