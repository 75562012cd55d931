"""Wiring: the one OpAMPAgent watch and its subscribers, and what Kopf does for us."""
