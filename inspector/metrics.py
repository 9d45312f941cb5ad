"""Prometheus metrics (``[metrics] listen = "127.0.0.1:9478"``; off by default, loopback only).

A custom collector builds every metric from the service's status at scrape
time, so the packet path never touches the client library: packets, verdicts
by reason, bans issued (by reason) and active, kernel queue drops and
fail-open passes, the engine's sampled per-packet latency, rule reloads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from .telemetry import LATENCY_BOUNDS


class StatusCollector:
    """A Prometheus collector that reads the service's ``status`` on every scrape."""

    def __init__(self, status: Callable[[], dict[str, Any]]) -> None:
        self.status = status

    def collect(self) -> Iterator[Any]:
        """The metric families for one scrape: packets, verdicts by reason, bans, queue drops, engine latency."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        st = self.status()
        counts = st.get("counts", {})
        live = st.get("live", {})
        yield CounterMetricFamily("inspector_packets", "Packets inspected", value=st.get("packets", 0))
        verdicts = CounterMetricFamily("inspector_verdicts", "Non-accept verdicts by reason", labels=["reason"])
        for reason, n in sorted(live.get("reasons", {}).items()):
            verdicts.add_metric([reason], n)
        yield verdicts
        yield CounterMetricFamily("inspector_bans_issued", "Bans issued since start", value=counts.get("bans", 0))
        active = GaugeMetricFamily("inspector_bans_active", "Active bans by reason", labels=["reason"])
        for reason, n in sorted(st.get("bans_by_reason", {}).items()):
            active.add_metric([reason], n)
        yield active
        queues = st.get("queues", [])
        yield CounterMetricFamily("inspector_queue_dropped", "Packets the kernel dropped: queue or socket full",
                                  value=sum(q["queue_dropped"] + q["user_dropped"] for q in queues))
        handed = sum(q["id_sequence"] for q in queues)
        yield CounterMetricFamily("inspector_fail_open_passes",
                                  "Packets handed to the queue but never received (let through by fail-open)",
                                  value=max(0, handed - st.get("packets", 0)))
        yield CounterMetricFamily("inspector_rule_reloads", "Successful rule reloads", value=st.get("reloads", 0))
        storage = st.get("storage") or {}
        errors = CounterMetricFamily("inspector_write_errors", "Failed writes (retried), by file", labels=["file"])
        waiting = GaugeMetricFamily("inspector_writes_pending", "Entries waiting to be written, by file",
                                    labels=["file"])
        for name in ("state", "events"):
            part = storage.get(name) or {}
            errors.add_metric([name], part.get("write_errors", 0))
            waiting.add_metric([name], part.get("pending", 0))
        yield errors
        yield waiting
        yield CounterMetricFamily("inspector_events_dropped", "Events dropped: the event log's backlog was full",
                                  value=(storage.get("events") or {}).get("dropped", 0))
        lat = live.get("latency") or {"buckets": [0] * (len(LATENCY_BOUNDS) + 1), "sum": 0.0}
        cumulative, running = [], 0
        for bound, n in zip([*map(str, LATENCY_BOUNDS), "+Inf"], lat["buckets"], strict=False):
            running += n
            cumulative.append((bound, running))
        yield HistogramMetricFamily("inspector_engine_seconds", "Engine time per packet (sampled 1 in 64)",
                                    buckets=cumulative, sum_value=lat["sum"])
        policy = st.get("policy")
        if policy:  # the MTA's policy hook ([policy] listen)
            answers = CounterMetricFamily("inspector_policy_requests", "Policy requests by outcome and bound hit",
                                          labels=["outcome"])
            for outcome, n in sorted(policy.get("counts", {}).items()):
                answers.add_metric([outcome], n)
            yield answers
            yield GaugeMetricFamily("inspector_policy_connections", "Open MTA connections to the policy service",
                                    value=policy.get("connections", 0))


def serve(listen: str, status: Callable[[], dict[str, Any]]) -> Any:
    """Start the endpoint in a thread; ``listen`` is "host:port" (loopback unless told otherwise)."""
    from prometheus_client import start_http_server
    from prometheus_client.core import CollectorRegistry

    host, _, port = listen.rpartition(":")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(status))
    return start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
