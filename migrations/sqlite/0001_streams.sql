-- Streams and their publishing keys. Only a SHA-256 of each key is stored: a
-- leaked database does not let anyone publish.
CREATE TABLE streams (
    name        TEXT PRIMARY KEY NOT NULL,
    title       TEXT,
    key_hash    TEXT NOT NULL UNIQUE,
    -- where the stream was declared: 'config', 'demo' or 'matrix'
    origin      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
