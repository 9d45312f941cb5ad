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
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Protocol

from .engine import Engine
from .events import EventSink
from .respond.bans import Ban, BanPipeline
from .respond.reset import build_resets
from .telemetry import SAMPLE, Telemetry
from .verdict import ACCEPT, ACCEPT_BODY, ACCEPT_REPLIES, ACCEPT_RESUME, BYPASS, Action, Decision, Reason

__all__ = ["Runner", "QueuedPacket", "ResetSender", "RawResetSender"]

ALERT_REPEAT = 60.0  # seconds between two alert-mode reports of the same would-be-banned source


class QueuedPacket(Protocol):
    """What NetfilterQueue's packet offers (and the fake in tests)."""

    def get_payload(self) -> bytes:
        """The packet's bytes (the IP header on)."""
    def set_payload(self, payload: bytes) -> None:
        """Replace the packet's bytes (given with the next verdict)."""
    def get_mark(self) -> int:
        """The packet's mark."""
    def set_mark(self, mark: int) -> None:
        """Set the mark given with the next verdict."""
    def repeat(self) -> None:
        """Verdict NF_REPEAT: the packet traverses the hook again (with its new mark)."""
    def accept(self) -> None:
        """Verdict NF_ACCEPT."""
    def drop(self) -> None:
        """Verdict NF_DROP."""


class ResetSender(Protocol):
    """Sends a prebuilt IP packet (a reset): :class:`RawResetSender`, or the recording fake of the tests."""

    def send(self, packet: bytes) -> None:
        """Send ``packet`` (IPv4 or IPv6, header included); raises OSError."""


class RawResetSender:
    """Sends prebuilt IPv4/IPv6 packets through raw sockets (header included)."""

    def __init__(self) -> None:
        self._v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self._v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)

    def send(self, packet: bytes) -> None:
        """Send ``packet`` to its destination address through the raw socket of its family; raises OSError."""
        if packet[0] >> 4 == 4:
            self._v4.sendto(packet, (socket.inet_ntop(socket.AF_INET, packet[16:20]), 0))
        else:
            self._v6.sendto(packet, (socket.inet_ntop(socket.AF_INET6, packet[24:40]), 0))

    def close(self) -> None:
        """Close both raw sockets."""
        self._v4.close()
        self._v6.close()


@dataclass(eq=False)
class Runner:
    """Gives one queued packet its kernel verdict from the engine's decision, then the side effects
    (resets, the verdict event, the ban through the :class:`~inspector.respond.bans.BanPipeline`).

    ``mark``: the packet-mark bit that tells the kernel a connection is bypassed (0: never mark);
    ``body_mark``: the bit for SMTP connections inside a DATA body (0, or no ``mark``: never marked;
    every segment is then queued, which costs packets, not inspection);
    ``reply_mark``: the bit for SMTP connections whose server packets are queued too (the engine
    watches replies: ``Engine.watch_replies``; 0: never set);
    ``accept_later``/``accept_noted``: the queue's batched accept (see
    :class:`~inspector.sources.nfqueue.NfQueue`; None: every accept is given at once), set by
    the packet loop; the noted accepts are given before any drop or reset;
    ``counts``: what was done (``accept``, ``drop``, ``reset``, ``resets``, ``decided`` (bypassed),
    ``in-body``, ``out-of-body``, ``banned-late``, ``errors:<what>``).
    """

    engine: Engine
    resets: ResetSender
    events: EventSink
    bans: BanPipeline
    clock: Callable[[], float]
    mark: int = 0
    body_mark: int = 0  # the mark bit of SMTP flows in a DATA body (0: no in-body filter)
    reply_mark: int = 0  # the mark bit of SMTP flows whose server replies are queued (0: none)
    counts: Counter[str] = field(default_factory=Counter, init=False)
    telemetry: Telemetry = field(default_factory=Telemetry, init=False)
    # alert mode: when each would-be-banned source was last reported
    _alerted: dict[str, float] = field(default_factory=dict, init=False)
    accept_later: Callable[[QueuedPacket], None] | None = field(default=None, init=False)
    accept_noted: Callable[[], None] | None = field(default=None, init=False)

    def handle(self, packet: QueuedPacket) -> None:
        """Decide ``packet`` (its bytes, at the clock's ``now``), give it exactly one verdict, then
        act on the decision.  Exceptions from the engine are the caller's to catch (the packet
        loop accepts the packet then); the side effects never raise."""
        data = packet.get_payload()
        now = self.clock()
        telemetry = self.telemetry
        if not telemetry.second <= now < telemetry.next_second:
            telemetry.tick(now)
        telemetry.packets += 1
        if telemetry.packets % SAMPLE:
            decision = self.engine.process(data, now)
        else:
            started = perf_counter()
            decision = self.engine.process(data, now)
            telemetry.observe(perf_counter() - started)
        if decision is ACCEPT:
            later = self.accept_later
            if later is None:
                packet.accept()
            else:
                later(packet)  # with the others of this burst, in one batch verdict
            return
        if decision is BYPASS:
            # bypass: nothing more to inspect; mark the packet and let it traverse the chain again
            # (repeat); the chain saves the mark on the connection, whose later packets
            # then never leave the kernel
            if self.mark:
                packet.set_mark(packet.get_mark() | self.mark)
                packet.repeat()
            else:
                packet.accept()
            self.counts["decided"] += 1
            return
        if decision is ACCEPT_BODY or decision is ACCEPT_RESUME or decision is ACCEPT_REPLIES:
            # SMTP: the connection's state in the kernel, each verdict naming the whole state (see
            # setup-nfqueue.sh, smtp_body_marks): body bit alone = in a DATA body (the reply bit cleared);
            # reply bit alone = the server's packets queued too (the body bit cleared); the decided bit
            # with the others = neither
            if decision is ACCEPT_BODY:
                bits = self.body_mark
            elif decision is ACCEPT_REPLIES:
                bits = self.reply_mark
            else:
                bits = self.body_mark | self.reply_mark
                bits = bits | self.mark if bits else 0
            if bits and self.mark:
                packet.set_mark(packet.get_mark() | bits)
                packet.repeat()
            else:
                packet.accept()
            self.counts["in-body" if decision is ACCEPT_BODY else "replies" if decision is ACCEPT_REPLIES
                        else "out-of-body"] += 1
            return
        applied = decision.applied
        if applied is Action.ACCEPT:  # alert mode: with the burst's batch too
            later = self.accept_later
            if later is None:
                packet.accept()
            else:
                later(packet)
        else:
            if self.accept_noted is not None:
                self.accept_noted()  # the earlier packets first: a reset never overtakes them
            if applied is Action.DROP:
                packet.drop()
            else:
                self._reset(packet, data, decision)
        self.counts[applied.value] += 1
        self._after(decision, now)

    def _reset(self, packet: QueuedPacket, data: bytes, decision: Decision) -> None:
        to_client = None
        try:
            if decision.fields is None:
                raise ValueError("not a TCP packet")
            to_server, to_client = build_resets(data, decision.fields)
            packet.set_payload(to_server)
            packet.accept()
        except Exception as e:  # noqa: BLE001 - never leave a packet without a verdict
            packet.drop()
            self._error("reset-server", e)
        if to_client is None:
            return
        try:
            self.resets.send(to_client)
            self.counts["resets"] += 1
        except Exception as e:  # noqa: BLE001
            self._error("reset-client", e)

    def _after(self, decision: Decision, now: float) -> None:
        v = decision
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
        event: dict[str, Any] = {"event": "verdict", "path": "packet", **decision.as_dict()}
        self.events.emit(event)
        if v.ban and not v.alert and decision.ban_network:
            self.bans.issue(Ban(decision.ban_network, v.ban, v.reason.value if v.reason else "", v.rule,
                                "packet", None, decision.dport), now)

    def _error(self, what: str, e: Exception, **extra: object) -> None:
        self.counts["errors:" + what] += 1
        self.events.emit({"event": "error", "what": what, "error": f"{type(e).__name__}: {e}", **extra})
