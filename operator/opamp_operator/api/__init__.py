"""REST API: agent status and history, reconnect requests, OpenAPI, health and metrics.

`ApiServer` (server.py) is the entry point; `KubeAuthorizer` (auth.py) checks callers with
TokenReview + SubjectAccessReview; `StoreHistoryReader` (history.py) reads PostgreSQL.
"""
