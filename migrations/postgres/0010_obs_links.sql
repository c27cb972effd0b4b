-- One-time OBS profile links (`!live obs`, src/obs_profile/link.rs): the
-- SHA-256 of the link's secret, never the secret nor the key it derives.
-- A row is deleted when its link is downloaded; expired rows are pruned
-- when a new link is made. Times are seconds since the Unix epoch.
CREATE TABLE obs_links (
    id          TEXT PRIMARY KEY NOT NULL,
    stream      TEXT NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX obs_links_expires ON obs_links(expires_at);
