-- Go-live sessions, rooms the bot lost, and rooms following streams
-- (`!live follow`). PostgreSQL twin of migrations/sqlite/0004_matrix_state.sql.

-- The open go-live session of each stream (one row while it lasts), so a
-- restart mid-stream continues it: no second notice, and the "ended" edit
-- lands on the first. Times are ms since the Unix epoch.
CREATE TABLE matrix_golive_sessions (
    stream           TEXT PRIMARY KEY NOT NULL,
    session          TEXT NOT NULL,
    started_ms       BIGINT NOT NULL,
    peak             BIGINT NOT NULL DEFAULT 0,
    announced        BIGINT NOT NULL DEFAULT 0,
    -- set while the publisher is gone (the session ends if it stays gone)
    offline_since_ms BIGINT
);

-- Mapped rooms the bot was kicked or banned from, or that are gone.
-- Cleared when the bot joins the room again.
CREATE TABLE matrix_rooms_lost (
    room_id     TEXT PRIMARY KEY NOT NULL,
    reason      TEXT NOT NULL,
    by_user     TEXT,
    at          BIGINT NOT NULL
);

-- Rooms that get a stream's go-live and ended notices (`!live follow`).
CREATE TABLE matrix_follows (
    room_id     TEXT NOT NULL,
    stream      TEXT NOT NULL,
    by_user     TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (room_id, stream)
);
CREATE INDEX matrix_follows_stream ON matrix_follows(stream);
