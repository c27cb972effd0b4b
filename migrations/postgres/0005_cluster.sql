-- Cluster mode ([cluster]): the nodes sharing this database and where each
-- live stream is published. Times are ms since the Unix epoch, written by the
-- nodes (one clock per row's writer; a node compares only its own heartbeat
-- against others' within a few seconds, so NTP-synced hosts suffice).

-- One row per running node, refreshed every second; a node whose heartbeat
-- is a few seconds old is dead, and a clean shutdown deletes its row.
CREATE TABLE cluster_nodes (
    node_id      TEXT PRIMARY KEY NOT NULL,
    internal_url TEXT NOT NULL,
    started_ms   BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    -- load, for GET /api/v1/cluster and viewer placement
    viewers      BIGINT NOT NULL DEFAULT 0,
    relays       BIGINT NOT NULL DEFAULT 0
);

-- The node a stream's publisher is connected to (its origin). A new publish
-- session overwrites the row (takeover across nodes); the session's end
-- deletes it only if it is still that session's.
CREATE TABLE cluster_origins (
    stream     TEXT PRIMARY KEY NOT NULL,
    node_id    TEXT NOT NULL,
    session    TEXT NOT NULL,
    since_ms   BIGINT NOT NULL
);
