"""The Kubernetes mirror: one OpAMPAgent custom resource per agent.

`writer.StatusWriter` turns fleet events into CR writes (coalesced, rate-limited);
`handlers.build_registry` holds the Kopf handlers that watch the CRs themselves (liveness
of agents whose process died, deletions, garbage collection). Imports `fleet`, never `store`.
"""
