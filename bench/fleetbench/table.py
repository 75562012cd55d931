"""The benchmark's tables (Markdown) and a JSON dump of every number behind them."""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import profiling
from .churn import ChurnResult
from .operator_runs import FleetResult
from .peer_runs import PeerFleetResult
from .saturation import SaturationResult

MIB = 1024 * 1024


def _pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def _s(value: float | None, digits: int = 1) -> str:
    return "not reached" if value is None else f"{value:.{digits}f} s"


def _row(name: str, cells: Sequence[str]) -> str:
    return f"| {name} | " + " | ".join(cells) + " |"


def fleet_head(r: FleetResult) -> str:
    """The column's title: "10,000 agents" (WebSocket), "10,000 HTTP agents"."""
    over = " HTTP" if r.plan.transport == "http" else ""
    return f"{r.plan.agents:,}{over} agents"


def held_cell(r: FleetResult) -> str:
    """Agents held at once; an HTTP agent holds no connection, so there it is agents Online."""
    if r.plan.transport == "http":
        return f"{r.peak_connections:,.0f} Online (no connection between polls)"
    return f"{r.peak_connections:,.0f}"


def fleet_table(results: Sequence[FleetResult], peers: dict[str, PeerFleetResult]) -> str:
    head = [fleet_head(r) for r in results]
    lines = [_row("", head), "|---|" + "---:|" * len(results)]

    def add(name: str, cell: Any) -> None:
        lines.append(_row(name, [cell(r) for r in results]))

    add("agents held connected at once", held_cell)
    add(
        "all connected after (ramp)",
        lambda r: f"{_s(r.connected_seconds)} ({r.plan.ramp:g}/s)",
    )
    add("all CRs Online after", lambda r: _s(r.cr_online_seconds))
    add(
        "Kubernetes writes to bring the fleet up (per agent)",
        lambda r: (
            f"{sum(r.ramp_kube_writes.values()):,.0f} "
            f"({sum(r.ramp_kube_writes.values()) / r.plan.main_agents:.1f})"
        ),
    )
    add("operator CPU, steady (% of one core)", lambda r: f"{r.steady.operator_cpu_pct:.1f} %")
    add("machine busy, steady (all processes, 2 cores = 100 %)",
        lambda r: f"{r.steady.machine_busy_pct:.0f} %")  # fmt: skip
    add(
        "operator RSS: before agents / steady / peak",
        lambda r: (
            f"{r.baseline_rss / MIB:.0f} / {r.steady.operator_rss / MIB:.0f} / "
            f"{max(r.ramp_peak_rss, r.steady.operator_rss) / MIB:.0f} MiB"
        ),
    )
    add(
        "operator memory per connected agent",
        lambda r: f"{(r.steady.operator_rss - r.baseline_rss) / r.steady.agents / 1024:.1f} KiB",
    )
    add(
        "simulator CPU / RSS, steady (all its processes)",
        lambda r: (
            f"{r.steady.sim_cpu_pct:.1f} % / {r.steady.sim_rss / MIB:.0f} MiB "
            f"({r.simulators} process{'es' if r.simulators > 1 else ''})"
        ),
    )
    add("kube-apiserver CPU / RSS, steady", _apiserver)
    add("etcd CPU / RSS, steady; its database size and keys", _etcd)
    add(
        "heartbeats handled, steady",
        lambda r: f"{r.steady.messages / r.steady.seconds:,.0f}/s",
    )
    add(
        "Kubernetes writes per heartbeat, steady",
        lambda r: (
            f"{r.steady.kube_writes / max(r.steady.messages, 1):.3f} "
            f"({r.steady.kube_writes:,.0f} in {r.steady.seconds:.0f} s; "
            f"{r.steady.transitions:.0f} transitions)"
        ),
    )
    add(
        "Postgres statements/s (BEGIN/COMMIT incl.), steady",
        lambda r: (
            f"{r.steady.pg.statements / r.steady.seconds:.1f} "
            f"({r.steady.pg.control / r.steady.seconds:.1f}); "
            f"{r.steady.pg.transactions / r.steady.seconds:.1f} xact/s, "
            f"{r.steady.pg.rows / r.steady.seconds:,.0f} rows/s"
        ),
    )
    add(
        "REST GET /agents/{id}/status p50 / p99 / max",
        lambda r: (
            f"{r.rest.p50_ms:.2f} / {r.rest.p99_ms:.2f} / {r.rest.max_ms:.2f} ms "
            f"(machine {r.rest_machine_busy_pct:.0f} % busy)"
        ),
    )
    add(
        "operator GC in the steady window: collections, time, longest pause",
        lambda r: r.steady.gc.describe() if r.steady.gc else "-",
    )
    add(
        "operator GC during the REST requests",
        lambda r: r.rest_gc.describe() if r.rest_gc else "-",
    )
    if any(r.churn for r in results):
        churn_rows(add)
    add("offline detection after the deadline p50 / p99 / max", _offline)
    add("Lease renewals ok / failed; longest gap; slowest: ramp",
        lambda r: r.ramp_lease.describe() if r.ramp_lease else "-")  # fmt: skip
    add("Lease renewals ok / failed; longest gap; slowest: up to the storm",
        lambda r: r.lease.describe() if r.lease else "-")  # fmt: skip
    add(
        "storm: SIGTERM to exit / restart to ready",
        lambda r: (
            f"{r.storm.stop_seconds:.1f} s / {r.storm.restart_seconds:.1f} s" if r.storm else "-"
        ),
    )
    add(
        "storm: SIGTERM to all reconnected / all CRs Online",
        lambda r: (
            f"{_s(r.storm.connected_seconds)} / {_s(r.storm.online_seconds)}" if r.storm else "-"
        ),
    )
    add(
        "storm: Kubernetes writes; registrations refused (retried)",
        lambda r: (
            f"{sum(r.storm.kube_writes.values()):,.0f}; {r.storm.rejected_registrations:,.0f}"
            if r.storm
            else "-"
        ),
    )
    add("storm: history rows missing", _history)
    add("adoption: SIGKILL to first / last CR Offline replica_lost (expected)", _adoption_times)
    add("adoption: per CR p50 / max after SIGKILL", _adoption_spread)
    add("adoption: CRs adopted of those held; seen twice; other CRs", _adoption_counts)
    add("adoption: killed replica's rows left open / closed replica_lost; transitions",
        _adoption_rows)  # fmt: skip
    add("adoption: survivor CPU, SIGKILL to done / while writing; its Kubernetes writes",
        _adoption_cost)  # fmt: skip
    if peers:
        add("peer (opamp-go): memory per connection (HTTP: per agent)",
            lambda r: _peer_memory(peers, r))  # fmt: skip
        add("peer (opamp-go): CPU, steady", lambda r: _peer_cpu(peers, r))
        add("operator / peer: memory per connection", lambda r: _memory_ratio(peers, r))
    return "\n".join(lines)


def _apiserver(r: FleetResult) -> str:
    k = r.steady.plane if r.steady else None
    return "-" if k is None else f"{k.apiserver_cpu_pct:.1f} % / {k.apiserver_rss / MIB:.0f} MiB"


def _etcd(r: FleetResult) -> str:
    k = r.steady.plane if r.steady else None
    if k is None:
        return "-"
    return (
        f"{k.etcd_cpu_pct:.1f} % / {k.etcd_rss / MIB:.0f} MiB; "
        f"{k.etcd_db_bytes / MIB:.0f} MiB, {k.etcd_keys:,.0f} keys"
    )


def churn_rows(add: Callable[[str, Callable[[FleetResult], str]], None]) -> None:
    """The churn phase's rows (churn.py): "-" in a column without one."""

    def each(cell: Callable[[ChurnResult], str]) -> Callable[[FleetResult], str]:
        return lambda r: "-" if r.churn is None else cell(r.churn)

    add("churn: fleet while churning (main fleet reduced by the churning agents)",
        each(_churn_fleet))  # fmt: skip
    add("churn: operator RSS after warm-up: start / end; min / max", each(_churn_rss))
    add("churn: RSS slope after warm-up (least squares)", each(_churn_slope))
    add("churn: sessions opened / ended in the window", each(_churn_sessions))
    add("churn: collector policy freezes / thaws in the window", each(_churn_policy))
    add("churn: collector pauses: longest; ≥ 50 ms; total GC time", each(_churn_gc))


def _churn_fleet(c: ChurnResult) -> str:
    p = c.plan
    connected = _s(c.connected_seconds)
    return (
        f"{c.main_agents:,} main + {p.agents:,} churning ({p.rate:g} goodbyes/s, back after "
        f"~{p.delay:g} s; all connected after {connected}), silent agents after; window "
        f"{c.window_seconds:.0f} s, warm-up {c.warmup:.0f} s, {len(c.samples)} samples, "
        f"{c.disconnects:,} disconnects"
    )


def _churn_sessions(c: ChurnResult) -> str:
    return f"{c.delta('sessions_opened'):,.0f} / {c.delta('sessions_ended'):,.0f}"


def _churn_policy(c: ChurnResult) -> str:
    return f"{c.delta('freezes'):.0f} / {c.delta('thaws'):.0f}"


def _churn_rss(c: ChurnResult) -> str:
    rss = [s.rss / MIB for s in c.settled]
    if not rss:
        return "no samples after the warm-up"
    return f"{rss[0]:.0f} / {rss[-1]:.0f} MiB; {min(rss):.0f} / {max(rss):.0f} MiB"


def _churn_slope(c: ChurnResult) -> str:
    slope = c.rss_slope_mib
    n = len(c.settled)
    return "-" if slope is None else f"{slope:+.1f} MiB per 10 minutes (n={n})"


def _churn_gc(c: ChurnResult) -> str:
    if c.gc is None:
        return "- (operator not under gcwatch)"
    longest = "< 10 ms" if c.gc.longest is None else f"{c.gc.longest * 1000:.0f} ms"
    return f"{longest}; {c.gc.long}; {c.gc.seconds:.2f} s ({c.gc.collections:,} collections)"


def _offline(r: FleetResult) -> str:
    d = r.offline_delays
    if not d:
        return "no samples"
    missed = f", {r.offline_missed} not seen" if r.offline_missed else ""
    return (
        f"{_pct(d, 50):.2f} / {_pct(d, 99):.2f} / {max(d):.2f} s (n={len(d)}{missed}; "
        f"min {min(d):.2f})"
    )


def _history(r: FleetResult) -> str:
    if r.storm is None or r.storm.history is None:
        return "-"
    h = r.storm.history
    reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(h.closed_by_restart.items()))
    return (
        f"{h.missing} of {h.agents:,} agents (no row before: {h.without_session_before}, "
        f"left open: {h.left_open_before}, no new open row: {h.without_session_after}); "
        f"old sessions ended as: {reasons}"
    )


def _adoption_times(r: FleetResult) -> str:
    a = r.adoption
    if a is None:
        return "-"
    low, high = a.expected_first
    times = f"{_s(a.first_seconds)} / {_s(a.last_seconds)}"
    timed_out = f"; timed out: {', '.join(a.timed_out)}" if a.timed_out else ""
    renewed = "?" if a.renewed_before_kill is None else f"{a.renewed_before_kill:.1f} s"
    return (
        f"{times} (expected: first {low:.1f} to {high:.1f} s, last ≤ {a.expected_last:.1f} s; "
        f"Lease renewed {renewed} before the kill; adoption began at {_s(a.look_seconds)})"
        f"{timed_out}"
    )


def _adoption_spread(r: FleetResult) -> str:
    a = r.adoption
    if a is None or not a.delays:
        return "-"
    spread = max(a.delays) - min(a.delays)
    rate = f"{a.writes / spread:,.0f}/s" if spread > 0 else "-"
    return (
        f"{_pct(a.delays, 50):.1f} / {max(a.delays):.1f} s (n={len(a.delays):,}); first to "
        f"last {spread:.1f} s: {a.writes:,.0f} writes, {rate} (pace {a.writes_per_second:g}/s)"
    )


def _adoption_counts(r: FleetResult) -> str:
    a = r.adoption
    if a is None:
        return "-"
    others = "".join(f", {k} {v:,}" for k, v in sorted(a.other_outcomes.items()))
    lease = "deleted" if a.lost_lease_deleted else "NOT deleted"
    return (
        f"{a.adopted:,} of {a.agents:,}{others}; {a.duplicates}; {a.unexpected} "
        f"(adoptions {a.adoptions:g}, killed replica's Lease {lease})"
    )


def _adoption_rows(r: FleetResult) -> str:
    a = r.adoption
    if a is None or a.rows is None:
        return "-"
    rows = a.rows
    return (
        f"{rows.left_open:,} / {rows.closed_lost:,}; {rows.transitions:,} for "
        f"{rows.transition_agents:,} agents ({rows.duplicate_transitions} duplicates)"
    )


def _adoption_cost(r: FleetResult) -> str:
    a = r.adoption
    if a is None:
        return "-"
    writing = "-" if a.survivor_cpu_pct_writing is None else f"{a.survivor_cpu_pct_writing:.0f} %"
    writes = ", ".join(f"{k} {v:,.0f}" for k, v in sorted(a.survivor_kube_writes.items()))
    return f"{a.survivor_cpu_seconds:.1f} CPU-s / {writing} of one core; {writes}"


def _peer_memory(peers: dict[str, PeerFleetResult], r: FleetResult) -> str:
    p = peers.get(r.plan.label)
    held = "heard from" if p is not None and p.transport == "http" else "connected"
    return "-" if p is None else f"{p.per_agent_bytes / 1024:.1f} KiB ({p.connected:,} {held})"


def _peer_cpu(peers: dict[str, PeerFleetResult], r: FleetResult) -> str:
    p = peers.get(r.plan.label)
    return "-" if p is None else f"{p.cpu_pct:.1f} % ({p.messages / p.window_seconds:,.0f} msg/s)"


def _memory_ratio(peers: dict[str, PeerFleetResult], r: FleetResult) -> str:
    p = peers.get(r.plan.label)
    if p is None or not p.per_agent_bytes or r.steady is None:
        return "-"
    ours = (r.steady.operator_rss - r.baseline_rss) / r.steady.agents
    return f"{ours / p.per_agent_bytes:.1f}x"


def saturation_table(ours: SaturationResult, peer: SaturationResult | None) -> str:
    runs = [("operator", ours)] + ([("opamp-go peer", peer)] if peer else [])
    lines = [
        "| server | messages handled/s | server CPU | messages per CPU-second "
        "| server RSS | simulator CPU | machine busy | settled |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in runs:
        lines.append(
            f"| {name} | {r.per_second:,.0f} | {r.server_cpu_pct:.0f} % | "
            f"{r.per_cpu_second:,.0f} | {r.server_rss / MIB:.0f} MiB | {r.sim_cpu_pct:.0f} % | "
            f"{r.machine_busy_pct:.0f} % | {'yes' if r.settled else 'no'} |"
        )
    if peer is not None and peer.per_second and peer.per_cpu_second:
        lines.append("")
        lines.append(
            f"Ratios operator / peer: messages/s {ours.per_second / peer.per_second:.2f}, "
            f"messages per CPU-second {ours.per_cpu_second / peer.per_cpu_second:.2f}."
        )
    return "\n".join(lines)


def profile_table(path: Path, top: int = 15) -> str:
    samples, own, total = profiling.summarize(path, top)
    if not samples:
        return f"(no samples in {path.name})"
    lines = [f"{samples:,} samples (GIL held) in {path.name}", "", "| share | part |", "|---:|---|"]
    lines += [f"| {share:.1%} | {name} |" for name, share in profiling.categories(path)]
    lines += ["", "| self | total | function |"]
    lines.append("|---:|---:|---|")
    seen = set()
    for hot in own + total:
        if hot.where in seen:
            continue
        seen.add(hot.where)
        lines.append(f"| {hot.self_share:.1%} | {hot.total_share:.1%} | `{hot.where}` |")
    return "\n".join(lines)


def dump(path: Path, payload: dict[str, Any]) -> None:
    def default(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.asdict(value)
        if isinstance(value, Path):
            return str(value)
        raise TypeError(type(value).__name__)

    path.write_text(json.dumps(payload, default=default, indent=2) + "\n")


def offline_summary(delays: Sequence[float]) -> dict[str, float]:
    if not delays:
        return {}
    return {
        "n": len(delays),
        "p50": _pct(delays, 50),
        "p99": _pct(delays, 99),
        "max": max(delays),
        "mean": statistics.fmean(delays),
    }
