-- PostgreSQL twin of migrations/sqlite/0001_streams.sql: same tables, same
-- columns, same meaning. Integers are BIGINT so both backends read as i64.

-- Streams and their publishing keys. Only a SHA-256 of each key is stored: a
-- leaked database does not let anyone publish.
CREATE TABLE streams (
    name        TEXT PRIMARY KEY NOT NULL,
    title       TEXT,
    key_hash    TEXT NOT NULL UNIQUE,
    -- where the stream was declared: 'config', 'demo' or 'matrix'
    origin      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
