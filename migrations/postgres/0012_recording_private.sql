-- Whether the stream was private at any time while it was recorded: such a
-- recording stays private after the stream is detached or made public, and
-- is served only while the stream is private in the same room again.
ALTER TABLE recordings ADD COLUMN private BIGINT NOT NULL DEFAULT 0;
