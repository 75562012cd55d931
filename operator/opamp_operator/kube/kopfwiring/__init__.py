"""Kopf wiring: the handlers Kopf runs on OpAMPAgent resources (start-up, clean-up, events)."""
