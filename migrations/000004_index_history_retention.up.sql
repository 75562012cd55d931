-- History retention deletes transitions older than a cutoff in bounded batches
-- (store/retention.py): without an index on `at` alone each batch scans the table.
-- Connection history is pruned by connected_at, already indexed (migration 000002).
CREATE INDEX agent_state_transitions_at_idx ON agent_state_transitions (at);
