-- The cluster bus (src/cluster/bus.rs) sends control events with NOTIFY,
-- which takes at most 8000 bytes: a bigger message (a long chat message, the
-- viewer counts of many streams) is kept here and the notification names
-- its row. Rows are pruned after a minute.
CREATE TABLE cluster_bus_payloads (
    id     BIGSERIAL PRIMARY KEY,
    body   TEXT NOT NULL,
    at_ms  BIGINT NOT NULL
);

-- Viewer placement (cluster.redirect_viewers): where viewers reach a node
-- and how many it takes.
ALTER TABLE cluster_nodes ADD COLUMN public_url TEXT;
ALTER TABLE cluster_nodes ADD COLUMN max_viewers BIGINT NOT NULL DEFAULT 0;
