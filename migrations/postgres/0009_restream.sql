-- Restream destinations set from Matrix (`!live restream add`) or the API
-- (issue 15). Config-file destinations are not stored: the file is their
-- source. The key is sealed (AES-256-GCM, src/restream/secret.rs) with a
-- secret kept outside the database, so a dump alone does not reveal it.
CREATE TABLE restream_destinations (
    stream      TEXT NOT NULL,
    label       TEXT NOT NULL,
    url         TEXT NOT NULL,
    key_sealed  TEXT NOT NULL,
    enabled     BIGINT NOT NULL DEFAULT 1,
    added_by    TEXT,
    PRIMARY KEY (stream, label)
);
