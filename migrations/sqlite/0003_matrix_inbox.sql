-- The appservice's durable inbox: a transaction's events are written here
-- before the homeserver gets its 200, and processed afterwards in order per
-- room. What is here at a crash is processed at start-up.
CREATE TABLE matrix_inbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    -- one row per event, whatever transaction brought it (exactly once)
    event_id    TEXT NOT NULL UNIQUE,
    room_id     TEXT NOT NULL,
    -- the event as roomcast reads it (JSON)
    event       TEXT NOT NULL,
    received_at INTEGER NOT NULL
);
CREATE INDEX matrix_inbox_room ON matrix_inbox(room_id, seq);

-- What a command (by the event id that carried it) has already done, so a
-- command processed again after a crash or a failed homeserver call
-- finishes what is left instead of doing it twice (`!live new` creates one
-- room, `!live key` delivers one key).
CREATE TABLE matrix_command_steps (
    event_id    TEXT NOT NULL,
    step        TEXT NOT NULL,
    value       TEXT NOT NULL,
    done_at     INTEGER NOT NULL,
    PRIMARY KEY (event_id, step)
);
