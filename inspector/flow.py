"""Flow state: handshakes in progress, proven flows, and the bounded tables that hold them.

A flow is keyed by the raw bytes of (source address, destination address,
source port, destination port); the key's length tells IPv4 from IPv6.

Two tables, so that packets nobody has proven can never push out a
connection in progress:

* :attr:`FlowTable.embryos` holds handshakes: one small :data:`Embryo` tuple per
  client SYN (its ISN, TSval, and what the server answered, where the view
  shows the server).  A SYN flood only ever evicts other embryos.
* :attr:`FlowTable.flows` holds **proven** flows only (the handshake
  completed, see ``Engine``): an insertion-ordered LRU where every packet
  moves its flow to the end, idle flows are swept from the front, and the
  table never holds more than ``max_flows`` (the least recently seen flow is
  evicted first).  A flow evicted while still under inspection leaves a
  tombstone, so that its next packet is not mistaken for a new flow.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from .stream import Stream

# what a flow's client stream is inspected for (not the rule scopes of inspector.rules)
KIND_SMTP, KIND_PAYLOAD = 1, 2


# A client SYN whose handshake has not been proven yet:
#   (isn, tsval, last, server_isn, server_next, refused)
# isn: the SYN's sequence number; tsval: its TSval (timestamps negotiated, the server's default) or None;
# last: when it was last seen (s); server_isn: from the server's SYN-ACK where the view shows it, else None;
# server_next: the server's highest sequence number sent + 1; refused: the server answered with a RST.
# A plain tuple, replaced on change (the table keeps its place): a SYN flood makes one per packet, and a
# tuple of numbers costs no Python call to build and leaves the garbage collector's generations at its
# first collection.  With an object per SYN, a 100,000-source flood cost 1.74 us per SYN against 1.30
# (0.23 us of the difference the collector's).
Embryo = tuple[int, int | None, float, int | None, int, bool]
EMBRYO_LAST: Final = 2  # the index of ``last``


class Flow:
    """One proven TCP connection as seen from the client side."""

    __slots__ = ("stream", "isn", "base", "last", "kind", "state", "carry", "done", "blocked", "tsval",
                 "reopen")

    def __init__(self, isn: int | None, base: int, kind: int, now: float, tsval: int | None = None) -> None:
        self.stream: Stream | None = None  # created with the first payload: data-less flows stay small
        self.isn = isn  # None: picked up midstream (no SYN seen: the stream start is not known)
        self.base = base
        self.last = now
        self.kind = kind
        self.state: object = None  # the protocol detector's per-flow state
        self.carry = ""  # payload scope: tail of the previous chunk
        self.done = False  # nothing more to inspect: the rest of the flow is accepted
        self.blocked = False  # a verdict was issued for this flow
        self.tsval = tsval  # ts_recent to start the stream with (timestamps negotiated), else None
        self.reopen: int | None = None  # ISN + 1 of a SYN that came while this flow was open


class FlowTable:
    """Bounded, idle-expiring tables of proven flows and of handshakes."""

    __slots__ = ("flows", "embryos", "tombstones", "max_flows", "max_embryos", "idle", "evicted",
                 "evicted_open", "embryos_evicted", "expired", "next_sweep")

    def __init__(self, max_flows: int, idle: float, max_embryos: int | None = None) -> None:
        self.flows: OrderedDict[bytes, Flow] = OrderedDict()
        self.embryos: OrderedDict[bytes, Embryo] = OrderedDict()
        self.tombstones: OrderedDict[bytes, float] = OrderedDict()  # evicted mid-inspection -> when
        self.max_flows = max_flows
        self.max_embryos = max_embryos if max_embryos is not None else max_flows
        self.idle = idle
        self.evicted = 0
        self.evicted_open = 0  # of which still under inspection
        self.embryos_evicted = 0
        self.expired = 0
        self.next_sweep = float("-inf")  # callers may test this before calling sweep()

    def __len__(self) -> int:
        return len(self.flows)

    def add(self, key: bytes, flow: Flow) -> None:
        """Add a proven flow, evicting the least recently seen one when full."""
        flows = self.flows
        flows[key] = flow
        flows.move_to_end(key)
        if len(flows) > self.max_flows:
            old_key, old = flows.popitem(last=False)
            self.evicted += 1
            if not old.done:
                self.evicted_open += 1
                tombs = self.tombstones
                tombs[old_key] = old.last
                if len(tombs) > self.max_flows:
                    tombs.popitem(last=False)

    def evict_embryo(self) -> None:
        """Drop the least recently added handshake: the table holds more than ``max_embryos`` (the engine adds
        handshakes itself, ``embryos[key] = ...``, and only other handshakes are ever evicted for them)."""
        self.embryos.popitem(last=False)
        self.embryos_evicted += 1

    def sweep(self, now: float) -> None:
        """Drop flows, handshakes and tombstones idle for longer than the timeout (about once a second)."""
        if now < self.next_sweep:
            return
        self.next_sweep = now + 1.0
        horizon = now - self.idle
        self.expired += _drop_idle(self.flows, horizon)
        embryos = self.embryos
        while embryos:
            if next(iter(embryos.values()))[EMBRYO_LAST] >= horizon:
                break
            embryos.popitem(last=False)
        tombs = self.tombstones
        while tombs:
            key, when = next(iter(tombs.items()))
            if when >= horizon:
                break
            del tombs[key]


def _drop_idle(table: OrderedDict[bytes, Flow], horizon: float) -> int:
    """Drop the entries of ``table`` (least recently seen first) whose ``last`` is before
    ``horizon``; return how many."""
    dropped = 0
    while table:
        entry = next(iter(table.values()))
        if entry.last >= horizon:
            break
        table.popitem(last=False)
        dropped += 1
    return dropped
