"""Agent state: registry, sessions, heartbeat deadlines, the state machine, transition events.

Imports neither `store` nor `kube`: those subscribe to the events published here.
"""
