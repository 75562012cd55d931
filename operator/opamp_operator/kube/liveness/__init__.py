"""Liveness of CRs that no live session in this process holds: a deadline schedule and a judge."""
