-- Cluster mode needs PostgreSQL (config validation refuses [cluster] with
-- SQLite); these tables keep both migration directories at the same
-- version and stay empty here. Twin of migrations/postgres/0005_cluster.sql.
CREATE TABLE cluster_nodes (
    node_id      TEXT PRIMARY KEY NOT NULL,
    internal_url TEXT NOT NULL,
    started_ms   BIGINT NOT NULL,
    heartbeat_ms BIGINT NOT NULL,
    viewers      BIGINT NOT NULL DEFAULT 0,
    relays       BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE cluster_origins (
    stream     TEXT PRIMARY KEY NOT NULL,
    node_id    TEXT NOT NULL,
    session    TEXT NOT NULL,
    since_ms   BIGINT NOT NULL
);
