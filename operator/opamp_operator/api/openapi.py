"""The OpenAPI 3.1 description of the REST API, written by hand to match the handlers.

Tests run schemathesis against a live server with this document, so a change to a handler
that is not made here too fails them.
"""

from __future__ import annotations

from typing import Any

from opamp_operator.config import ApiSettings

JSON = "application/json"
PROBLEM = "application/problem+json"

_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_TIME = {"type": "string", "format": "date-time"}
_PHASE = {"type": "string", "enum": ["Online", "Offline", "Error"]}
_TRANSPORT = {"type": "string", "enum": ["websocket", "http"]}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_ANY_OBJECT = {"type": "object", "additionalProperties": True}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Any], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed object whose properties are all required but `optional`."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [name for name in properties if name not in optional],
        "properties": properties,
    }


def _page(item: str, cursor: str) -> dict[str, Any]:
    return _obj(
        {
            "items": {"type": "array", "items": _ref(item)},
            "nextCursor": {
                "type": ["string", "null"],
                "description": f"Pass as `cursor` for the next page; null on the last. {cursor}",
            },
        }
    )


_COUNTS = {
    "type": "object",
    "maxProperties": 16,
    "additionalProperties": {"type": "integer", "minimum": 0},
    "description": "Components by kind (the list's top-level keys, e.g. receivers).",
}
_COMPONENTS_SUMMARY = {
    "hash": {"type": "string", "description": "The agent's hash of the set, hex."},
    "complete": {
        "type": "boolean",
        "description": "The full list is known (false: only the hash; the agent is asked).",
    },
    "counts": _COUNTS,
    "total": {"type": "integer", "minimum": 0},
}

SCHEMAS: dict[str, Any] = {
    "Problem": _obj(
        {
            "type": {"type": "string", "format": "uri-reference"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "instance": {"type": "string"},
        },
        optional=("instance",),
    ),
    "AgentSummary": _obj(
        {
            "id": {"type": "string", "format": "uuid"},
            "phase": _PHASE,
            "reason": {"type": "string"},
            "phaseSince": _TIME,
            "lastSeen": _TIME,
            "connected": {"type": "boolean"},
            "transport": {"oneOf": [_TRANSPORT, {"type": "null"}]},
            "serviceName": _NULLABLE_TEXT,
            "serviceVersion": _NULLABLE_TEXT,
            "hostName": _NULLABLE_TEXT,
        }
    ),
    "AgentPage": _page("AgentSummary", "It is the last id of this page."),
    "Connection": _obj(
        {
            "sessionId": {"type": "string"},
            "transport": _TRANSPORT,
            "remoteAddr": {"type": "string"},
            "connectedAt": _TIME,
            "liveness": {"type": "string", "enum": ["heartbeat", "connection"]},
            # namespace/name of the Pod-bound ServiceAccount token it authenticated with
            "serviceAccount": _NULLABLE_TEXT,
        }
    ),
    "AgentStatus": _obj(
        {
            "id": {"type": "string", "format": "uuid"},
            "phase": _PHASE,
            "reason": {"type": "string"},
            "phaseSince": _TIME,
            "firstSeen": _TIME,
            "lastSeen": _TIME,
            "connected": {"type": "boolean"},
            "lastConnected": _NULLABLE_TIME,
            "lastDisconnected": _NULLABLE_TIME,
            "disconnectReason": _NULLABLE_TEXT,
            "connection": {"oneOf": [_ref("Connection"), {"type": "null"}]},
            "description": _obj(
                {"identifyingAttributes": _ANY_OBJECT, "nonIdentifyingAttributes": _ANY_OBJECT}
            ),
            "capabilities": {"type": "array", "items": {"type": "string"}},
            "customCapabilities": {
                "type": "array",
                "items": {"type": "string", "maxLength": 253},
                "maxItems": 32,
                "description": "CustomCapabilities the agent reports (reverse-FQDN names), sorted.",
            },
            "health": {"oneOf": [_ANY_OBJECT, {"type": "null"}]},
            "effectiveConfigHash": _NULLABLE_TEXT,
            "remoteConfigStatus": {"oneOf": [_ANY_OBJECT, {"type": "null"}]},
            "sequenceNum": {"type": "integer", "minimum": 0},
            "availableComponents": {"oneOf": [_ref("ComponentsSummary"), {"type": "null"}]},
        }
    ),
    "ComponentsSummary": _obj(_COMPONENTS_SUMMARY),
    "ComponentDetails": _obj(
        {
            "metadata": _ANY_OBJECT,
            "subComponents": {"type": "object", "additionalProperties": _ref("ComponentDetails")},
        }
    ),
    "AgentComponents": _obj(
        {
            "id": {"type": "string", "format": "uuid"},
            **_COMPONENTS_SUMMARY,
            "components": {"type": "object", "additionalProperties": _ref("ComponentDetails")},
            "source": {
                "type": "string",
                "enum": ["fleet", "database"],
                "description": "fleet: this operator's copy now; database: as last stored "
                "(the agent is not known in memory).",
            },
            "storedAt": _NULLABLE_TIME,
        }
    ),
    "OfflineAgent": _obj(
        {
            "id": {"type": "string", "format": "uuid"},
            "phase": {"type": "string", "enum": ["Offline", "Error"]},
            "reason": {"type": "string"},
            "since": _TIME,
            "secondsInPhase": {"type": "number", "minimum": 0},
            "lastSeen": _TIME,
            "serviceName": _NULLABLE_TEXT,
            "serviceVersion": _NULLABLE_TEXT,
            "hostName": _NULLABLE_TEXT,
        }
    ),
    "OfflineList": _obj(
        {
            "items": {"type": "array", "items": _ref("OfflineAgent")},
            "count": {"type": "integer", "minimum": 0},
        }
    ),
    "Session": _obj(
        {
            "sessionId": {"type": "string"},
            "connectedAt": _TIME,
            "disconnectedAt": _NULLABLE_TIME,
            "durationSeconds": {"type": ["number", "null"]},
            "disconnectReason": _NULLABLE_TEXT,
            "remoteAddr": _NULLABLE_TEXT,
            "transport": _TRANSPORT,
        }
    ),
    "SessionPage": _page("Session", "Newest first."),
    "Transition": _obj(
        {
            "from": {"oneOf": [_PHASE, {"type": "null"}]},
            "to": _PHASE,
            "reason": {"type": "string"},
            "at": _TIME,
        }
    ),
    "TransitionPage": _page("Transition", "Newest first."),
    "ReconnectAccepted": _obj(
        {
            "id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "const": "reconnect requested"},
            "transport": {"oneOf": [_TRANSPORT, {"type": "null"}]},
        }
    ),
    "RestartAccepted": _obj(
        {
            "id": {"type": "string", "format": "uuid"},
            "status": {"type": "string", "const": "restart requested"},
            "result": {
                "type": "string",
                "enum": ["sent", "queued"],
                "description": "sent: pushed on the agent's WebSocket; queued: in the reply "
                "to the HTTP agent's next poll.",
            },
            "transport": {"oneOf": [_TRANSPORT, {"type": "null"}]},
        }
    ),
    "Health": _obj({"status": {"type": "string", "const": "ok"}}),
    "Readiness": _obj(
        {
            "ready": {"type": "boolean"},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}},
            "error": {"type": "string"},
        },
        optional=("error",),
    ),
}

_PROBLEM_CONTENT = {PROBLEM: {"schema": _ref("Problem")}}
RESPONSES: dict[str, Any] = {
    "BadRequest": {
        "description": "Malformed agent id or query parameter.",
        "content": _PROBLEM_CONTENT,
    },
    "Unauthorized": {
        "description": "No bearer token, or Kubernetes did not accept it (TokenReview).",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
        "content": _PROBLEM_CONTENT,
    },
    "Forbidden": {
        "description": "RBAC denies the verb on opampagents.opamp.dev (SubjectAccessReview).",
        "content": _PROBLEM_CONTENT,
    },
    "NotFound": {"description": "No such agent.", "content": _PROBLEM_CONTENT},
    "Unavailable": {
        "description": "Kubernetes (for authorization) or PostgreSQL (for history) did not answer.",
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
        "content": _PROBLEM_CONTENT,
    },
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": _ref(schema)}}}


def _errors(*codes: int) -> dict[str, Any]:
    names = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}
    names[503] = "Unavailable"
    return {str(code): {"$ref": f"#/components/responses/{names[code]}"} for code in codes}


def _operation(
    operation_id: str, summary: str, parameters: list[Any], responses: dict[str, Any]
) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": parameters,
        "responses": responses,
    }


def openapi_document(settings: ApiSettings) -> dict[str, Any]:
    """The document served at /api/v1/openapi.json (page limits come from `settings`)."""
    agent_id = {
        "name": "id", "in": "path", "required": True,
        "description": "The agent's instance_uid as a UUID.",
        "schema": {"type": "string", "format": "uuid"},
    }  # fmt: skip
    limit = {
        "name": "limit", "in": "query", "required": False,
        "description": f"Page size (default {settings.page_size}).",
        "schema": {"type": "integer", "minimum": 1, "maximum": settings.max_page_size},
    }  # fmt: skip
    agent_cursor = {
        "name": "cursor", "in": "query", "required": False,
        "description": "Continue after this agent id (the `nextCursor` of the previous page).",
        "schema": {"type": "string", "format": "uuid"},
    }  # fmt: skip
    session_cursor = {
        "name": "cursor", "in": "query", "required": False,
        "description": "`nextCursor` of the previous page (connected_at in microseconds since "
        "the epoch, `_`, row id).",
        "schema": {"type": "string", "pattern": "^[0-9]{1,17}_[0-9]{1,18}$"},
    }  # fmt: skip
    transition_cursor = {
        "name": "cursor", "in": "query", "required": False,
        "description": "`nextCursor` of the previous page (a row id).",
        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
    }  # fmt: skip
    status = {
        "name": "status", "in": "query", "required": False,
        "schema": {"type": "string", "enum": ["online", "offline", "error"]},
    }  # fmt: skip
    public: list[Any] = []  # no security requirement
    paths: dict[str, Any] = {
        "/api/v1/agents": {
            "get": _operation(
                "listAgents", "Agents ordered by id, optionally of one phase (verb: list).",
                [status, limit, agent_cursor],
                {"200": _json("AgentPage", "One page of agents."), **_errors(400, 401, 403, 503)},
            )
        },
        "/api/v1/agents/offline": {
            "get": _operation(
                "listOfflineAgents", "Every Offline/Error agent, longest down first (verb: list).",
                [],
                {"200": _json("OfflineList", "Agents not Online."), **_errors(401, 403, 503)},
            )
        },
        "/api/v1/agents/{id}/status": {
            "get": _operation(
                "getAgentStatus", "What this operator knows about an agent now (verb: get).",
                [agent_id],
                {"200": _json("AgentStatus", "The agent."), **_errors(400, 401, 403, 404, 503)},
            )
        },
        "/api/v1/agents/{id}/connection-history": {
            "get": _operation(
                "getConnectionHistory", "The agent's sessions, newest first (verb: get).",
                [agent_id, limit, session_cursor],
                {"200": _json("SessionPage", "One page."), **_errors(400, 401, 403, 404, 503)},
            )
        },
        "/api/v1/agents/{id}/transitions": {
            "get": _operation(
                "getTransitions", "The agent's phase changes, newest first (verb: get).",
                [agent_id, limit, transition_cursor],
                {"200": _json("TransitionPage", "One page."), **_errors(400, 401, 403, 404, 503)},
            )
        },
        "/api/v1/agents/{id}/components": {
            "get": _operation(
                "getAvailableComponents",
                "The components the agent reports it can run (AvailableComponents; verb: get).",
                [agent_id],
                {"200": _json("AgentComponents", "The full list, or the hash only."),
                 **_errors(400, 401, 403, 404, 503)},
            )
        },
        "/api/v1/agents/{id}/reconnect": {
            "post": _operation(
                "reconnectAgent", "Ask a connected agent to reconnect (verb: update).",
                [agent_id],
                {
                    "202": _json("ReconnectAccepted", "The agent was asked to reconnect."),
                    "409": {"description": "Not connected here.", "content": _PROBLEM_CONTENT},
                    **_errors(400, 401, 403, 404, 503),
                },
            )
        },
        "/api/v1/agents/{id}/restart": {
            "post": _operation(
                "restartAgent",
                "Send a connected agent the OpAMP Restart command (verb: update).",
                [agent_id],
                {
                    "202": _json("RestartAccepted", "The Restart command was sent or queued."),
                    "409": {
                        "description": "Not connected here, or the agent does not claim "
                        "AcceptsRestartCommand (problem type .../restart-not-supported).",
                        "content": _PROBLEM_CONTENT,
                    },
                    **_errors(400, 401, 403, 404, 503),
                },
            )
        },
        "/api/v1/openapi.json": {
            "get": {
                **_operation(
                    "getOpenApi", "This document (no authentication).", [],
                    {"200": {"description": "OpenAPI 3.1",
                             "content": {JSON: {"schema": _ANY_OBJECT}}}},
                ),
                "security": public,
            }
        },
        "/metrics": {
            "get": {
                **_operation(
                    "getMetrics", "Prometheus metrics (no authentication).", [],
                    {"200": {"description": "Text exposition format.",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}},
                ),
                "security": public,
            }
        },
        "/healthz": {
            "get": {
                **_operation(
                    "getHealth", "The process is alive (no authentication).", [],
                    {"200": _json("Health", "Alive.")},
                ),
                "security": public,
            }
        },
        "/readyz": {
            "get": {
                **_operation(
                    "getReadiness",
                    "Ready when the OpAMP listener, database and Kubernetes all are (no auth).",
                    [],
                    {"200": _json("Readiness", "Ready."), "503": _json("Readiness", "Not ready.")},
                ),
                "security": public,
            }
        },
    }  # fmt: skip
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "opamp-operator",
            "version": "1",
            "description": "Agent state from the operator's OpAMP server. Callers authenticate "
            "with a Kubernetes bearer token; RBAC on opampagents.opamp.dev decides (get/list "
            "to read, update to request a reconnect or a restart). Errors are RFC 9457 problem "
            "documents.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": RESPONSES,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
    if not settings.auth_enabled:
        # Served as configured: without authentication no token is required anywhere.
        del document["security"]
    return document
