"""The Kubernetes side: one OpAMPAgent custom resource per agent, and the resources users declare.

Sub-packages, lowest first (each imports only those before it, plus `fleet`; never `store`):
- `api`: credentials, requests, errors, list+watch, Pod metadata requests. No operator logic.
- `shapes`: pure names, labels, status bodies, conditions, Pod references, Event bodies.
- `writes`: the shared pace of API writes.
- `mirror`: `StatusWriter` turns fleet events into CR creates, status patches and Events.
- `liveness`, `gitops`, `pods`: CR liveness, declared remote config, Pod linking.
- `wiring`: the replica's one OpAMPAgent watch and its subscribers; what Kopf does (login,
  settings).
See docs/architecture.md for the data flow and which component owns which write.
"""
