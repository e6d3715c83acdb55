-- Per-room loop-breaker budgets (issue 5). A room without a row uses the
-- server's defaults (agents.loop_breaker in the configuration). 0 in a
-- limit column means "no limit" for that dimension.
CREATE TABLE room_loop_breakers (
    room_id         TEXT PRIMARY KEY,
    enabled         BOOLEAN NOT NULL,
    max_consecutive INTEGER NOT NULL,
    max_per_minute  INTEGER NOT NULL,
    updated_ts      BIGINT NOT NULL
);
