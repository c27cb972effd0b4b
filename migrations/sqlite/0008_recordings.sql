-- Recordings of broadcasts (src/recording): one row per recording, its
-- files in recording.dir/<id>/. Times are ms since the Unix epoch.
CREATE TABLE recordings (
    -- 128 random bits, hex: the id in every URL
    id            TEXT PRIMARY KEY NOT NULL,
    stream        TEXT NOT NULL,
    session       TEXT NOT NULL,
    -- the node that writes it (cluster mode; '' standalone): only that
    -- node closes it after a crash
    node          TEXT NOT NULL DEFAULT '',
    started_ms    INTEGER NOT NULL,
    ended_ms      INTEGER,
    duration_ms   INTEGER NOT NULL DEFAULT 0,
    bytes         INTEGER NOT NULL DEFAULT 0,
    video_codec   TEXT,
    audio_codec   TEXT,
    peak_viewers  INTEGER NOT NULL DEFAULT 0,
    title_start   TEXT NOT NULL,
    title_end     TEXT NOT NULL,
    room_id       TEXT,
    -- 'recording', 'complete' or 'interrupted'
    state         TEXT NOT NULL
);
CREATE INDEX recordings_by_stream ON recordings (stream, started_ms);
CREATE INDEX recordings_by_start ON recordings (started_ms);

-- A stream's own choice (`!live record on|off`), over the config's.
CREATE TABLE recording_choices (
    stream      TEXT PRIMARY KEY NOT NULL,
    record      INTEGER NOT NULL,
    by_user     TEXT NOT NULL,
    at          INTEGER NOT NULL
);
