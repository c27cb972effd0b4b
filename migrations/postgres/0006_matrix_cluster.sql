-- Several roomcast processes on one database (issue 13, item 5). PostgreSQL
-- twin of migrations/sqlite/0006_matrix_cluster.sql (there one process is
-- the rule and nothing reads these but the same process).

-- Leases with an expiry, renewed by their node while it works: `room:<id>`
-- (one node at a time processes a room's inbox, in order), `outbox` (one
-- node at a time delivers the notice outbox, in order) and `node:<id>` (the
-- node is alive). A node that dies stops renewing; its leases lapse.
-- Times are ms since the Unix epoch.
CREATE TABLE matrix_leases (
    key         TEXT PRIMARY KEY NOT NULL,
    node        TEXT NOT NULL,
    expires_ms  BIGINT NOT NULL
);
CREATE INDEX matrix_leases_node ON matrix_leases(node);

-- The node whose publisher a go-live session belongs to: only it announces
-- the session and ends it; a node whose `node:` lease lapsed gives it up.
ALTER TABLE matrix_golive_sessions ADD COLUMN node TEXT;
