"""Every Prometheus metric of the operator, defined in one place.

Gauges of the fleet's current counts are computed at scrape time from the registry
(`FleetCollector`), so the hot path never touches them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from opamp_operator.fleet.model import AgentPhase, Transport

REGISTRY = CollectorRegistry(auto_describe=True)

# -- OpAMP transport ---------------------------------------------------------------
messages_received = Counter(
    "opamp_messages_received_total",
    "AgentToServer messages handled, by transport and kind (what they report).",
    ["transport", "kind"],
    registry=REGISTRY,
)
message_handling_seconds = Histogram(
    "opamp_message_handling_seconds",
    "Time from a message's bytes arriving to its reply being handed to the transport.",
    ["transport"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5),
    registry=REGISTRY,
)


class MessageMetrics:
    """One transport's per-message children, looked up once each and kept.

    `Counter.labels(...)` validates and locks on every call (~3 µs, 6 % of the saturation
    profile for two per message); a kept child costs a dict look-up. Children are created on
    first use, so the exposition shows a series only once a message of its kind came.
    """

    def __init__(self, transport: str) -> None:
        self._transport = transport
        self._received: dict[str, Counter] = {}
        self._handling: Histogram | None = None

    def received(self, kind: str) -> None:
        child = self._received.get(kind)
        if child is None:
            child = self._received[kind] = messages_received.labels(self._transport, kind)
        child.inc()

    def handled(self, seconds: float) -> None:
        child = self._handling
        if child is None:
            child = self._handling = message_handling_seconds.labels(self._transport)
        child.observe(seconds)


bad_input = Counter(
    "opamp_bad_input_total",
    "Input rejected by the OpAMP listener, by transport and reason.",
    ["transport", "reason"],
    registry=REGISTRY,
)
connections_open = Gauge(
    "opamp_connections_open",
    "Open OpAMP connections (WebSockets; keep-alive HTTP connections).",
    ["transport"],
    registry=REGISTRY,
)
auth_failures = Counter(
    "opamp_auth_failures_total",
    "Agent connections refused for a missing or wrong bearer token.",
    ["transport"],
    registry=REGISTRY,
)
agent_credential_refusals = Counter(
    "opamp_agent_credential_refusals_total",
    "Agents refused for their ServiceAccount token, by transport and reason (token_rejected, "
    "not_pod_bound, pod_uid_mismatch, review_unavailable).",
    ["transport", "reason"],
    registry=REGISTRY,
)
agent_token_reviews = Counter(
    "opamp_agent_token_reviews_total",
    "Agent ServiceAccount token lookups: cache hits and TokenReviews by outcome.",
    ["outcome"],
    registry=REGISTRY,
)

# -- Fleet -------------------------------------------------------------------------
connection_duration_seconds = Histogram(
    "opamp_agent_connection_duration_seconds",
    "How long agent sessions lasted, observed when they end.",
    ["transport", "reason"],
    buckets=(1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600),
    registry=REGISTRY,
)
heartbeat_missed = Counter(
    "opamp_agent_heartbeat_missed_total",
    "Agents that went Offline because their heartbeat timed out.",
    registry=REGISTRY,
)
offline_detection_seconds = Histogram(
    "opamp_agent_offline_detection_seconds",
    "Time from an agent's last message to its Offline by heartbeat timeout: the timeout"
    " plus how late the deadline fired.",
    buckets=(1, 2.5, 5, 10, 15, 20, 30, 31, 35, 45, 60, 61, 62, 65, 75, 90, 120, 180, 300, 600),
    registry=REGISTRY,
)
agents_slower_than_timeout = Counter(
    "opamp_agents_slower_than_timeout_total",
    "Agents (each counted once) whose messages came further apart than the heartbeat timeout.",
    registry=REGISTRY,
)
available_components_requests = Counter(
    "opamp_available_components_requests_total",
    "Replies that asked an agent for its full AvailableComponents (it had sent only a hash "
    "the server holds no full set for): at most once per hash and session.",
    registry=REGISTRY,
)
agents_forgotten = Counter(
    "opamp_agents_forgotten_total",
    "Agents dropped from memory after being Offline/Error longer than the retention.",
    registry=REGISTRY,
)
phase_transitions = Counter(
    "opamp_agent_phase_transitions_total",
    "Agent phase changes, by new phase and reason.",
    ["phase", "reason"],
    registry=REGISTRY,
)
registrations_rejected = Counter(
    "opamp_registrations_rejected_total",
    "New agents refused by the agent cap (agent_limit), the registration rate limit "
    "(rate_limit) or the connection cap from the open-files limit (connection_limit).",
    ["reason"],
    registry=REGISTRY,
)
duplicate_instance_uids = Counter(
    "opamp_duplicate_instance_uids_total",
    "Second live agents found presenting another agent's instance uid; each was sent a new one.",
    ["transport"],
    registry=REGISTRY,
)
restart_requests = Counter(
    "opamp_restart_requests_total",
    "Agent restarts asked for, by source (api, annotation) and result (sent, queued; refused: "
    "not_supported, not_connected, unknown_agent).",
    ["source", "result"],
    registry=REGISTRY,
)
events_dropped = Counter(
    "opamp_fleet_events_dropped_total",
    "Fleet events dropped because a subscriber's queue was full.",
    ["subscriber"],
    registry=REGISTRY,
)
events_queue_depth = Gauge(
    "opamp_fleet_event_queue_depth",
    "Fleet events waiting in a subscriber's queue (sampled by the metrics subscriber).",
    ["subscriber"],
    registry=REGISTRY,
)

# -- Kubernetes mirror -------------------------------------------------------------
kube_writes = Counter(
    "opamp_kube_writes_total",
    "Writes to the Kubernetes API (creates, status patches, events), by kind and outcome.",
    ["kind", "outcome"],
    registry=REGISTRY,
)
kube_write_queue_depth = Gauge(
    "opamp_kube_write_queue_depth", "Agents with a CR update waiting to be written.",
    registry=REGISTRY,
)  # fmt: skip
kube_updates_dropped = Counter(
    "opamp_kube_updates_dropped_total",
    "CR updates not queued because the write queue was full (a full resync follows).",
    registry=REGISTRY,
)
kube_liveness_transitions = Counter(
    "opamp_kube_liveness_transitions_total",
    "CRs of agents no live session holds, moved by the liveness timer, by new phase.",
    ["phase", "reason"],
    registry=REGISTRY,
)
kube_gc_deleted = Counter(
    "opamp_kube_gc_deleted_total",
    "OpAMPAgent resources deleted after staying Offline/Error longer than the GC TTL.",
    registry=REGISTRY,
)
# -- Replica Leases (kube/leases, kube/liveness/adoption.py) --------------------------
replica_lease_current = Gauge(
    "opamp_replica_lease_current",
    "1 while this replica's Lease was renewed within the Lease duration, else 0.",
    registry=REGISTRY,
)
replica_lease_renewals = Counter(
    "opamp_replica_lease_renewals_total",
    "Renewals of this replica's Lease (with the listing of the others'), by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
replica_lease_renewal_seconds = Histogram(
    "opamp_replica_lease_renewal_seconds",
    "How long a successful renewal of this replica's Lease took, first request to answer.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20),
    registry=REGISTRY,
)
replica_lease_longest_gap = Gauge(
    "opamp_replica_lease_longest_gap_seconds",
    "The longest this replica's Lease went between two successful renewals since the start "
    "(a replica is taken for lost past the Lease duration).",
    registry=REGISTRY,
)
replica_adoptions = Counter(
    "opamp_replica_adoptions_total",
    "Lost replicas adopted by this one (their CRs Offline replica_lost, their rows closed).",
    registry=REGISTRY,
)
replica_adoption_paused = Gauge(
    "opamp_replica_adoption_paused",
    "1 while adoption is paused: more than half the replicas' Leases expired at once.",
    registry=REGISTRY,
)
kube_pod_link_checks = Counter(
    "opamp_kube_pod_link_checks_total",
    "Checks of the Pod an agent reports it runs in, by result (linked, pod_not_found...).",
    ["result"],
    registry=REGISTRY,
)
kube_pod_deleted = Counter(
    "opamp_kube_pod_deleted_total",
    "Agents whose Pod was deleted: Offline (pod_deleted) and OpAMPAgent removed; target is "
    "agent (known to this process) or cr (only its CR remembered it).",
    ["target"],
    registry=REGISTRY,
)
kube_pod_watches = Gauge(
    "opamp_kube_pod_watches", "Namespaces whose Pods are watched (agents claim Pods there).",
    registry=REGISTRY,
)  # fmt: skip
kube_pod_watch_errors = Counter(
    "opamp_kube_pod_watch_errors_total",
    "Failed Pod listings and broken Pod watches, by outcome (rejected: e.g. 403).",
    ["outcome"],
    registry=REGISTRY,
)
loop_passes = Counter(
    "opamp_loop_passes_total",
    "Rounds completed by each periodic loop, failed rounds included (a flat line: the loop "
    "is stuck); tests wait for rounds instead of sleeping.",
    ["loop"],
    registry=REGISTRY,
)
kube_watches_open = Gauge(
    "opamp_kube_watches_open",
    "Watch requests this process holds open on the API server, by resource (one per kind "
    "and namespace is the design: a second one is a bug).",
    ["resource"],
    registry=REGISTRY,
)
kube_informer_errors = Counter(
    "opamp_kube_informer_errors_total",
    "Failed lists and broken watches of the resources remote config comes from, by resource.",
    ["resource"],
    registry=REGISTRY,
)
kube_invalid_config_specs = Counter(
    "opamp_kube_invalid_config_specs_total",
    "OpAMPAgentConfig generations whose spec cannot be used (selector, remoteConfig, rollout).",
    registry=REGISTRY,
)
connection_settings_refusals = Counter(
    "opamp_connection_settings_refusals_total",
    "Declared connection settings not offered: an unusable spec, a missing Secret or key.",
    ["reason"],
    registry=REGISTRY,
)
kube_desired_config_changes = Counter(
    "opamp_kube_desired_config_changes_total",
    "Agents whose desired remote config changed (set, replaced or forgotten), by source kind.",
    ["source"],
    registry=REGISTRY,
)

# -- PostgreSQL ----------------------------------------------------------------------
db_flush_seconds = Histogram(
    "opamp_db_flush_seconds",
    "Time to write one batch to PostgreSQL.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
db_writes = Counter(
    "opamp_db_writes_total", "Rows written to PostgreSQL, by table.", ["table"],
    registry=REGISTRY,
)  # fmt: skip
db_errors = Counter(
    "opamp_db_errors_total", "Failed PostgreSQL operations, by operation.", ["operation"],
    registry=REGISTRY,
)  # fmt: skip
db_queue_depth = Gauge(
    "opamp_db_queue_depth", "History events waiting to be written to PostgreSQL.",
    registry=REGISTRY,
)  # fmt: skip
db_history_deleted = Counter(
    "opamp_db_history_deleted_total",
    "History rows deleted by the retention, by table.",
    ["table"],
    registry=REGISTRY,
)
db_dropped = Counter(
    "opamp_db_dropped_total",
    "Writes dropped because the queue was full (heartbeats are shed before history).",
    ["kind"],
    registry=REGISTRY,
)
db_session_commits = Counter(
    "opamp_db_session_commits_total",
    "First replies of new sessions, by whether the session's row was committed before"
    " (recorded) or the bounded wait ended first (unconfirmed: database slow or down).",
    ["outcome"],
    registry=REGISTRY,
)
db_session_commit_wait_seconds = Histogram(
    "opamp_db_session_commit_wait_seconds",
    "How long a new session's first reply waited for its history row to be committed.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)

# -- Collector (gcpolicy.py) ---------------------------------------------------------
gc_pause_seconds = Histogram(
    "opamp_gc_pause_seconds",
    "Garbage-collector pauses (the whole process stops), by generation (2: full).",
    ["generation"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)
gc_policy_actions = Counter(
    "opamp_gc_policy_actions_total",
    "Collector policy actions: freeze (the settled heap leaves collections), refreeze (what "
    "outlived the young collections since joins it), thaw (after churn: unfreeze, collect).",
    ["action"],
    registry=REGISTRY,
)
gc_heap_frozen = Gauge(
    "opamp_gc_heap_frozen",
    "1 while the collector policy holds the heap frozen out of garbage collection.",
    registry=REGISTRY,
)

# -- REST API ------------------------------------------------------------------------
api_requests = Counter(
    "opamp_api_requests_total",
    "REST API requests answered, by route template, method and status code.",
    ["route", "method", "code"],
    registry=REGISTRY,
)
api_request_seconds = Histogram(
    "opamp_api_request_seconds",
    "Time to answer a REST API request (authorization included), by route template.",
    ["route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
api_auth_reviews = Counter(
    "opamp_api_auth_reviews_total",
    "TokenReviews and SubjectAccessReviews sent to Kubernetes, by kind and outcome.",
    ["kind", "outcome"],
    registry=REGISTRY,
)
api_auth_cache = Counter(
    "opamp_api_auth_cache_total",
    "REST authorization decisions served from the cache (hit) or by asking Kubernetes (miss).",
    ["result"],
    registry=REGISTRY,
)
api_errors = Counter(
    "opamp_api_errors_total",
    "REST API requests that failed on our side or a dependency's, by route and cause.",
    ["route", "cause"],
    registry=REGISTRY,
)


class FleetCollector(Collector):
    """Current agent counts, read from the registry at scrape time."""

    def __init__(
        self,
        counts: Callable[[], dict[tuple[AgentPhase, Transport | None], int]],
        departed: Callable[[], int] = lambda: 0,
    ):
        self._counts = counts
        self._departed = departed

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = self._counts()
        by_phase = {phase: 0 for phase in AgentPhase}
        detailed = GaugeMetricFamily(
            "opamp_agents", "Agents known to this process, by phase and transport.",
            labels=["phase", "transport"],
        )  # fmt: skip
        for (phase, transport), count in sorted(counts.items(), key=str):
            by_phase[phase] += count
            detailed.add_metric([phase.value, transport.value if transport else "none"], count)
        # Gauges with a counter's _total suffix (promtool check metrics says so): the names
        # the project was specified with, kept and documented in docs/deploy.md.
        yield GaugeMetricFamily(
            "opamp_agents_online_total", "Agents Online now.", value=by_phase[AgentPhase.ONLINE]
        )
        yield GaugeMetricFamily(
            "opamp_agents_offline_total",
            "Agents Offline or in Error now.",
            value=by_phase[AgentPhase.OFFLINE] + by_phase[AgentPhase.ERROR],
        )
        # Part of opamp_agents_offline_total: what is left after subtracting it are the
        # agents lost without a goodbye (a scale-down or a deleted Pod is no loss).
        yield GaugeMetricFamily(
            "opamp_agents_departed",
            "Agents Offline after a goodbye (AgentDisconnect or Pod deleted), never escalated.",
            value=self._departed(),
        )
        yield detailed

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())
