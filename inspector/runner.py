"""The runner: applies the engine's verdict to a queued packet, then the side effects.

Order matters (measured, see docs/research): the kernel verdict is given
first, so the rewritten RST reaches the local server at once; then the RST to
the client is sent, the ban is added to the firewall and the ban store, and
the events are written.  A failing side effect is reported as an event and
never stops the loop: the packet already has its verdict.
"""

from __future__ import annotations

import socket
from collections import Counter
from time import perf_counter
from collections.abc import Callable
from typing import Any, Protocol

from .bans import BanRecord, BanStore
from .engine import Engine
from .events import EventSink
from .firewall import Firewall
from .respond.reset import rst_for_client, rst_for_server
from .telemetry import SAMPLE, Telemetry
from .verdict import ACCEPT, ACCEPT_FINAL, Action, Reason

__all__ = ["Runner", "QueuedPacket", "ResetSender", "RawResetSender", "issue_ban"]

ALERT_REPEAT = 60.0  # seconds between two alert-mode reports of the same would-be-banned source


class QueuedPacket(Protocol):
    """What NetfilterQueue's packet offers (and the fake in tests)."""

    def get_payload(self) -> bytes: ...
    def set_payload(self, payload: bytes) -> None: ...
    def get_mark(self) -> int: ...
    def set_mark(self, mark: int) -> None: ...
    def repeat(self) -> None: ...
    def accept(self) -> None: ...
    def drop(self) -> None: ...


class ResetSender(Protocol):
    def send(self, packet: bytes) -> None: ...


class RawResetSender:
    """Sends prebuilt IPv4/IPv6 packets through raw sockets (header included)."""

    def __init__(self) -> None:
        self._v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, packet: bytes) -> None:
        if packet[0] >> 4 == 4:
            self._v4.sendto(packet, (socket.inet_ntop(socket.AF_INET, packet[16:20]), 0))
        else:
            self._v6.sendto(packet, (socket.inet_ntop(socket.AF_INET6, packet[24:40]), 0))

    def close(self) -> None:
        self._v4.close()
        self._v6.close()


class Runner:
    """Drives one engine from a packet source; see the module docstring."""

    def __init__(self, engine: Engine, firewall: Firewall, resets: ResetSender, events: EventSink,
                 store: BanStore, clock: Callable[[], float], mark: int = 0) -> None:
        # mark: the packet-mark bit that tells the kernel a connection is decided (0: never mark)
        self.mark = mark
        self.engine = engine
        self.firewall = firewall
        self.resets = resets
        self.events = events
        self.store = store
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self._alerted: dict[str, float] = {}  # alert mode: when each would-be-banned source was last reported
        self.telemetry = Telemetry()

    def handle(self, packet: QueuedPacket) -> None:
        data = packet.get_payload()
        now = self.clock()
        telemetry = self.telemetry
        if int(now) != telemetry.second:
            telemetry.tick(now)
        telemetry.packets += 1
        if telemetry.packets % SAMPLE:
            verdict = self.engine.process(data, now)
        else:
            started = perf_counter()
            verdict = self.engine.process(data, now)
            telemetry.observe(perf_counter() - started)
        if verdict is ACCEPT:
            packet.accept()
            return
        if verdict is ACCEPT_FINAL:
            # nothing more to inspect: mark the packet and let it traverse the chain again
            # (repeat); the chain saves the mark on the connection, whose later packets
            # then never leave the kernel
            if self.mark:
                packet.set_mark(packet.get_mark() | self.mark)
                packet.repeat()
            else:
                packet.accept()
            self.counts["decided"] += 1
            return
        applied = verdict.applied
        if applied is Action.ACCEPT:
            packet.accept()
        elif applied is Action.DROP:
            packet.drop()
        else:
            self._reset(packet, data)
        self.counts[applied.value] += 1
        self._after(data, now)

    def _reset(self, packet: QueuedPacket, data: bytes) -> None:
        try:
            packet.set_payload(rst_for_server(data))
            packet.accept()
        except Exception as e:  # noqa: BLE001 - never leave a packet without a verdict
            packet.drop()
            self._error("reset-server", e)
        try:
            self.resets.send(rst_for_client(data))
            self.counts["resets"] += 1
        except Exception as e:  # noqa: BLE001
            self._error("reset-client", e)

    def _after(self, data: bytes, now: float) -> None:
        decision = self.engine.last_decision
        if decision is None:
            return
        v = decision.verdict
        if v.reason is Reason.BANNED:
            if not v.alert:
                # the kernel drops banned sources; these slipped through before the ipset entry
                self.counts["banned-late"] += 1
                return
            # alert mode: enforce mode would drop this source from now on; say so once a minute
            last = self._alerted.get(decision.src)
            if last is not None and now - last < ALERT_REPEAT:
                self.counts["banned-alerts-quiet"] += 1
                return
            if len(self._alerted) > 100_000:
                self._alerted.clear()
            self._alerted[decision.src] = now
        self.telemetry.decision(decision.src, v.reason.value if v.reason else "", v.rule)
        event: dict[str, Any] = {"event": "verdict", **decision.as_dict()}
        self.events.emit(event)
        if v.ban and not v.alert and decision.ban_network:
            self.ban(decision.ban_network, v.ban, v.reason.value if v.reason else "", v.rule, decision.dport, now)

    def ban(self, network: str, seconds: int, reason: str, rule: str | None, dport: int | None, now: float) -> bool:
        """Ban in the kernel and the store; report it (see :func:`issue_ban`)."""
        if not issue_ban(self.store, self.firewall, self.events, network, seconds, reason, rule, dport, now):
            self.counts["errors:ban"] += 1
            return False
        self.counts["bans"] += 1
        return True

    def _error(self, what: str, e: Exception, **extra: object) -> None:
        self.counts["errors:" + what] += 1
        self.events.emit({"event": "error", "what": what, "error": f"{type(e).__name__}: {e}", **extra})


def issue_ban(store: BanStore, firewall: Firewall, events: EventSink, network: str, seconds: int, reason: str,
              rule: str | None, dport: int | None, now: float) -> bool:
    """The one ban pipeline, for packet verdicts and log sources alike: the store first
    (so a failed kernel add is retried at the next start), then the ipset, then the event."""
    store.add(BanRecord(network, now + seconds, reason, rule, now))
    try:
        firewall.ban(network, seconds)
    except Exception as e:  # noqa: BLE001 - a firewall failure is reported, never raised into the loop
        events.emit({"event": "error", "what": "ban", "error": f"{type(e).__name__}: {e}", "network": network})
        return False
    events.emit({"event": "ban", "time": round(now, 3), "network": network, "seconds": seconds,
                 "reason": reason, "rule": rule, "dport": dport})
    return True
