-- One row per OpAMP session (a WebSocket connection, or an HTTP agent's run of polls).
--
-- A row is inserted when the session opens (disconnected_at NULL) and closed when it ends.
-- Timestamps come from the operator's clock as parameters, never the database's now().

CREATE TABLE agent_connection_history (
    id bigserial PRIMARY KEY,
    agent_id text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    session_id uuid NOT NULL UNIQUE,
    -- The operator replica that served the session: after a crash, each replica closes
    -- only the rows it left open, not those of replicas still running.
    replica_id text NOT NULL,
    connected_at timestamptz NOT NULL,
    disconnected_at timestamptz,
    duration_seconds double precision CHECK (duration_seconds >= 0),
    disconnect_reason text,
    remote_addr text,
    transport text NOT NULL CHECK (transport IN ('websocket', 'http')),
    created_at timestamptz NOT NULL,
    CONSTRAINT agent_connection_history_closed_consistently CHECK (
        (disconnected_at IS NULL) = (duration_seconds IS NULL)
        AND (disconnected_at IS NULL) = (disconnect_reason IS NULL)
    )
);

-- One agent's sessions, newest first (keyset paging on connected_at, id).
CREATE INDEX agent_connection_history_agent_id_idx
    ON agent_connection_history (agent_id, connected_at DESC, id DESC);
-- Fleet-wide time ranges ("sessions started in the last hour").
CREATE INDEX agent_connection_history_connected_at_idx
    ON agent_connection_history (connected_at);
-- Rows still open: small, used by crash recovery and "who is connected where".
CREATE INDEX agent_connection_history_open_idx
    ON agent_connection_history (agent_id, replica_id)
    WHERE disconnected_at IS NULL;
