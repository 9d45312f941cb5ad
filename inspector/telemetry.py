"""Live counters for ``inspector status`` and the metrics endpoint.

Per-second buckets of packets and non-accept verdicts over the last minute,
the most frequent sources and blocked domains (bounded: the tail is cut when
they grow), and the engine's per-packet latency.  Cheap enough to update on
every packet: two integer additions and a comparison (of the packet's time with the
current second's bounds, no conversion).
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

WINDOW = 60  # seconds of history for the rates
_KEEP = 2000  # distinct sources/domains kept before the tail is cut


# engine latency histogram bounds (seconds), sampled on one packet in SAMPLE
LATENCY_BOUNDS = (2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2)
SAMPLE = 64


class Telemetry:
    """Per-second counters of packets and verdicts over the last minute, the top sources and blocked domains, and the
    engine's latency histogram (see the module docstring).
    """
    __slots__ = ("second", "next_second", "packets", "verdicts", "history", "sources", "domains", "reasons", "latency",
                 "latency_sum", "latency_count")

    def __init__(self) -> None:
        self.second = 0
        self.next_second = 0  # second + 1: a packet at or past it (or before second) calls tick()
        self.packets = 0
        self.verdicts = 0
        self.history: deque[tuple[int, int, int]] = deque(maxlen=WINDOW)
        self.sources: Counter[str] = Counter()
        self.domains: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.latency = [0] * (len(LATENCY_BOUNDS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0

    def observe(self, seconds: float) -> None:
        """Count one engine latency sample of ``seconds``."""
        i = 0
        for bound in LATENCY_BOUNDS:
            if seconds <= bound:
                break
            i += 1
        self.latency[i] += 1
        self.latency_sum += seconds
        self.latency_count += 1

    def tick(self, now: float) -> None:
        """Close the current second's bucket when ``now`` (Unix seconds) is in a new one."""
        second = int(now)
        if second != self.second:
            if self.second:
                self.history.append((self.second, self.packets, self.verdicts))
            self.second, self.packets, self.verdicts = second, 0, 0
            self.next_second = second + 1

    def decision(self, src: str, reason: str, rule: str | None) -> None:
        """Count one non-accept verdict from ``src`` for ``reason`` (and the blocked domain ``rule``)."""
        self.verdicts += 1
        self.reasons[reason] += 1
        if src:
            self.sources[src] += 1
            if len(self.sources) > _KEEP:
                self.sources = Counter(dict(self.sources.most_common(_KEEP // 2)))
        if reason == "domain" and rule:
            self.domains[rule] += 1
            if len(self.domains) > _KEEP:
                self.domains = Counter(dict(self.domains.most_common(_KEEP // 2)))

    def snapshot(self, now: float) -> dict[str, Any]:
        """The last minute's rates, the counts and the latency histogram at ``now``, JSON-ready."""
        self.tick(now)
        recent = [h for h in self.history if h[0] >= int(now) - WINDOW]
        seconds = max(1, len(recent))
        return {
            "packets_per_s": round(sum(h[1] for h in recent) / seconds, 1),
            "verdicts_per_s": round(sum(h[2] for h in recent) / seconds, 1),
            "reasons": dict(self.reasons),
            "top_sources": self.sources.most_common(10),
            "top_domains": self.domains.most_common(10),
            "latency": {"buckets": list(self.latency), "sum": self.latency_sum, "count": self.latency_count},
        }


def merge(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine the workers' snapshots."""
    sources: Counter[str] = Counter()
    domains: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    buckets = [0] * (len(LATENCY_BOUNDS) + 1)
    total, count = 0.0, 0
    for s in snapshots:
        lat = s.get("latency")
        if lat:
            buckets = [a + b for a, b in zip(buckets, lat["buckets"], strict=False)]
            total += lat["sum"]
            count += lat["count"]
        sources.update(dict(s.get("top_sources", [])))
        domains.update(dict(s.get("top_domains", [])))
        reasons.update(s.get("reasons", {}))
    latency = {"buckets": buckets, "sum": total, "count": count}
    return {
        "packets_per_s": round(sum(s.get("packets_per_s", 0) for s in snapshots), 1),
        "verdicts_per_s": round(sum(s.get("verdicts_per_s", 0) for s in snapshots), 1),
        "reasons": dict(reasons),
        "top_sources": sources.most_common(10),
        "top_domains": domains.most_common(10),
        "latency": latency,
    }
