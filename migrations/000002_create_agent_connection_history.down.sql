DROP TABLE IF EXISTS agent_connection_history;
