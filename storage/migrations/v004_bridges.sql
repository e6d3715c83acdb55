-- Bridges (webhooks, hooks and the agent gateway). Webhook and hook
-- deliveries keep their cursor in appservice_state like appservices (keyed
-- "webhook:<name>" and "hook:<name>"): the event stream is their queue.
--
-- Some room lifecycle changes leave nothing in the events table: deleting a
-- room through the gateway purges its events. Such changes are recorded
-- here, each at its own position of the server-wide stream, so that stream
-- consumers see them in order with the events around them.
CREATE TABLE bridge_room_events (
    pos     BIGINT PRIMARY KEY,
    kind    TEXT NOT NULL,
    room_id TEXT NOT NULL,
    sender  TEXT NOT NULL,
    ts      BIGINT NOT NULL
);
