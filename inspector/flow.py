"""Flow state and the bounded flow table.

A flow is keyed by the raw bytes of (source address, destination address,
source port, destination port); the key's length tells IPv4 from IPv6.  The
table is an insertion-ordered LRU: every packet moves its flow to the end,
so idle flows collect at the front where a periodic sweep removes them, and
the table never holds more than ``max_flows`` entries (the least recently
seen flow is evicted first), whatever a flood sends.
"""

from __future__ import annotations

from collections import OrderedDict

from .stream import Stream

# what a flow's client stream is inspected for (not the rule scopes of inspector.rules)
KIND_SMTP, KIND_PAYLOAD = 1, 2


class Flow:
    """One TCP connection as seen from the client side."""

    __slots__ = ("stream", "isn", "base", "last", "kind", "state", "carry", "done", "blocked")

    def __init__(self, isn: int | None, base: int, kind: int, now: float) -> None:
        self.stream: Stream | None = None  # created with the first payload: SYN-only flows stay small
        self.isn = isn  # None: picked up midstream
        self.base = base
        self.last = now
        self.kind = kind
        self.state: object = None  # the protocol detector's per-flow state
        self.carry = ""  # payload scope: tail of the previous chunk
        self.done = False  # nothing more to inspect: the rest of the flow is accepted
        self.blocked = False  # a verdict was issued for this flow


class FlowTable:
    """Bounded, idle-expiring flow table."""

    __slots__ = ("flows", "max_flows", "idle", "evicted", "expired", "next_sweep")

    def __init__(self, max_flows: int, idle: float) -> None:
        self.flows: OrderedDict[bytes, Flow] = OrderedDict()
        self.max_flows = max_flows
        self.idle = idle
        self.evicted = 0
        self.expired = 0
        self.next_sweep = float("-inf")  # callers may test this before calling sweep()

    def __len__(self) -> int:
        return len(self.flows)

    def add(self, key: bytes, flow: Flow) -> None:
        flows = self.flows
        flows[key] = flow
        flows.move_to_end(key)
        if len(flows) > self.max_flows:
            flows.popitem(last=False)
            self.evicted += 1

    def sweep(self, now: float) -> None:
        """Drop flows idle for longer than the timeout (called about once a second)."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + 1.0
        horizon = now - self.idle
        flows = self.flows
        while flows:
            key, flow = next(iter(flows.items()))
            if flow.last >= horizon:
                break
            del flows[key]
            self.expired += 1
