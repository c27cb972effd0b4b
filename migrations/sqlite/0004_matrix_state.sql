-- Go-live sessions, rooms the bot lost, and rooms following streams
-- (`!live follow`). 

-- The open go-live session of each stream (one row while it lasts), so a
-- restart mid-stream continues it: no second notice, and the "ended" edit
-- lands on the first. Times are ms since the Unix epoch.
CREATE TABLE matrix_golive_sessions (
    stream           TEXT PRIMARY KEY NOT NULL,
    session          TEXT NOT NULL,
    started_ms       INTEGER NOT NULL,
    peak             INTEGER NOT NULL DEFAULT 0,
    announced        INTEGER NOT NULL DEFAULT 0,
    -- set while the publisher is gone (the session ends if it stays gone)
    offline_since_ms INTEGER
);

-- Mapped rooms the bot was kicked or banned from, or that are gone.
-- Cleared when the bot joins the room again.
CREATE TABLE matrix_rooms_lost (
    room_id     TEXT PRIMARY KEY NOT NULL,
    reason      TEXT NOT NULL,
    by_user     TEXT,
    at          INTEGER NOT NULL
);

-- Rooms that get a stream's go-live and ended notices (`!live follow`).
CREATE TABLE matrix_follows (
    room_id     TEXT NOT NULL,
    stream      TEXT NOT NULL,
    by_user     TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (room_id, stream)
);
CREATE INDEX matrix_follows_stream ON matrix_follows(stream);
