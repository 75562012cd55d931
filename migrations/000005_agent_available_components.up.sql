-- The components each agent reports it can run (OpAMP AvailableComponents), one row per
-- agent: the agent's hash of the set and, once the agent sent it in full, the whole map.
-- Written by the store writer's batches from the operator's clock, like every other table.

CREATE TABLE agent_available_components (
    agent_id text PRIMARY KEY REFERENCES agents (id) ON DELETE CASCADE,
    -- The agent's hash of the set, as lowercase hex.
    hash text NOT NULL,
    -- kind -> {"metadata": {...}, "subComponents": {name -> {...}}}; NULL while the
    -- operator holds only the hash (it asks the agent for the full set).
    components jsonb,
    -- kind -> how many components of that kind, e.g. {"receivers": 3, "exporters": 2}.
    counts jsonb NOT NULL,
    total integer NOT NULL CHECK (total >= 0),
    updated_at timestamptz NOT NULL
);
