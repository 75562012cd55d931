"""Replica Leases: this replica's own (created, renewed, released) and what the others' say."""
