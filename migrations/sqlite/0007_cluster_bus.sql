-- Cluster mode needs PostgreSQL; this keeps both migration directories at
-- the same version and stays empty here. Twin of
-- migrations/postgres/0007_cluster_bus.sql.
CREATE TABLE cluster_bus_payloads (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    body   TEXT NOT NULL,
    at_ms  BIGINT NOT NULL
);

ALTER TABLE cluster_nodes ADD COLUMN public_url TEXT;
ALTER TABLE cluster_nodes ADD COLUMN max_viewers BIGINT NOT NULL DEFAULT 0;
