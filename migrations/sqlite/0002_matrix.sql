-- Matrix application service state. Everything the appservice needs to survive
-- a restart: which room carries which stream, what it has already processed and
-- what it still has to tell the homeserver.

-- Rooms roomcast serves (created by the bot, attached by an admin, or created
-- on demand from an alias in roomcast's namespace).
CREATE TABLE matrix_rooms (
    room_id     TEXT PRIMARY KEY NOT NULL,
    alias       TEXT,
    name        TEXT,
    topic       TEXT,
    -- 'public' or anything else (invite, knock, restricted…): private
    join_rule   TEXT NOT NULL DEFAULT 'public',
    encrypted   INTEGER NOT NULL DEFAULT 0,
    -- room opted in to @room mentions in go-live notices (`!live notify on`)
    notify      INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL
);

-- Room ↔ stream mapping. `slot` is NULL for the room's main stream and the
-- slot's label for extra streams (multi-camera events).
CREATE TABLE matrix_streams (
    stream      TEXT PRIMARY KEY NOT NULL REFERENCES streams(name),
    room_id     TEXT NOT NULL REFERENCES matrix_rooms(room_id),
    slot        TEXT,
    owner       TEXT,
    created_at  INTEGER NOT NULL
);
CREATE INDEX matrix_streams_room ON matrix_streams(room_id);

-- Transactions already applied (a replay is a no-op) and the events applied
-- from a transaction that failed half-way (its retry skips them).
CREATE TABLE matrix_txns (
    txn_id      TEXT PRIMARY KEY NOT NULL,
    done_at     INTEGER NOT NULL
);
CREATE TABLE matrix_events_done (
    event_id    TEXT PRIMARY KEY NOT NULL,
    done_at     INTEGER NOT NULL
);

-- The bot's direct-message room with each user.
CREATE TABLE matrix_dms (
    user_id     TEXT PRIMARY KEY NOT NULL,
    room_id     TEXT NOT NULL
);

-- Guests of the watch page: a puppet user each. Only a hash of the guest's
-- token is kept.
CREATE TABLE matrix_guests (
    token_hash  TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
-- Puppets that joined a room, and those a moderator removed (kicked/banned).
CREATE TABLE matrix_guest_rooms (
    user_id     TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    removed     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, room_id)
);

-- Outbox of things to tell the homeserver (go-live notices, their end, state
-- events), delivered in order with retries until they succeed. `txn_id` makes
-- a resend after a crash a no-op on the homeserver.
CREATE TABLE matrix_outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL,
    room_id     TEXT NOT NULL,
    stream      TEXT NOT NULL,
    session     TEXT NOT NULL,
    payload     TEXT NOT NULL,
    txn_id      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    done_at     INTEGER,
    event_id    TEXT
);
CREATE INDEX matrix_outbox_pending ON matrix_outbox(done_at, id);

-- Small key/value settings (the viewer-link signing secret).
CREATE TABLE settings (
    key         TEXT PRIMARY KEY NOT NULL,
    value       TEXT NOT NULL
);
