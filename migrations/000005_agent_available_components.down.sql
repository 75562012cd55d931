DROP TABLE IF EXISTS agent_available_components;
