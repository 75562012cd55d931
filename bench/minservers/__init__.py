"""Minimal OpAMP servers for the transport-cost benchmark (bench/framing.py), one per process.

Each reads an AgentToServer, answers a ServerToAgent with the same instance_uid, and counts
it (`answer`); they differ only in how bytes become messages (the transport), which is
what the benchmark measures. `python -m minservers VARIANT` runs one.
"""
