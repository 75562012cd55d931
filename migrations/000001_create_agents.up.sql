-- One row per agent ever seen: its latest known state.
--
-- Every timestamp in this schema is written by the operator from its own clock (UTC) and
-- passed in as a query parameter; nothing uses the database's now() or column defaults,
-- so history stays consistent with what the operator reports in CRs and logs.

CREATE TABLE agents (
    -- The OpAMP instance_uid as canonical (lowercase, hyphenated) UUID text.
    id text PRIMARY KEY
        CHECK (id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'),
    status text NOT NULL CHECK (status IN ('online', 'offline', 'error')),
    last_seen_at timestamptz,
    last_connected_at timestamptz,
    last_disconnected_at timestamptz,
    disconnect_reason text,
    -- {"identifying": {...}, "non_identifying": {...}} as the agent last reported it.
    description jsonb,
    -- Capability names, e.g. ["ReportsStatus", "AcceptsRemoteConfig"].
    capabilities jsonb,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);

-- "Which agents are online/offline/stale": by status, then by how long ago they were seen.
CREATE INDEX agents_status_last_seen_at_idx ON agents (status, last_seen_at);
