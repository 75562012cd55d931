"""PostgreSQL persistence: pool, migrations, queries, the batched writer, crash recovery.

Subscribes to fleet events; the fleet never imports anything from here.
"""
