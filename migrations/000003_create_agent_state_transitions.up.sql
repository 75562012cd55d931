-- Every phase change of every agent (Online/Offline/Error), with the reason.
-- `at` is the operator's clock at the change, passed as a parameter.

CREATE TABLE agent_state_transitions (
    id bigserial PRIMARY KEY,
    agent_id text NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    -- NULL for the agent's first phase.
    from_status text CHECK (from_status IN ('online', 'offline', 'error')),
    to_status text NOT NULL CHECK (to_status IN ('online', 'offline', 'error')),
    reason text NOT NULL,
    at timestamptz NOT NULL
);

CREATE INDEX agent_state_transitions_agent_id_at_idx
    ON agent_state_transitions (agent_id, at);
