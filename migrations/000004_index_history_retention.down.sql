DROP INDEX IF EXISTS agent_state_transitions_at_idx;
