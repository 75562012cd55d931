DROP TABLE IF EXISTS agent_state_transitions;
