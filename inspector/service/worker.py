"""A worker process of ``inspector run --workers N``: one queue, one engine, no ban store.

The worker bans in the kernel itself (lowest latency) through its own
:class:`~inspector.respond.bans.BanPipeline` (no store), and reports every ban, event and, once
a second, its stats to the supervisor over a pipe (:class:`Outbox`).  From the supervisor it
takes ``add_ban``/``remove_ban`` (bans issued elsewhere), ``reload`` and ``stop``.  When the
supervisor goes away the worker stops; ``--queue-bypass`` keeps the traffic flowing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from time import monotonic
from typing import Any

from ..events import now_iso
from ..firewall import Firewall
from ..kernel_whitelist import merge_kernel_whitelist
from ..nets import Address, Whitelist
from ..respond.bans import Ban, BanPipeline
from ..runner import ResetSender
from ..sources.nfqueue import NfQueue
from . import SAVE_EVERY, Inputs, ServiceError
from .host import open_firewall
from .loop import Loop, PacketQueue
from .packets import PacketSide

__all__ = ["Outbox", "ChannelSink", "Worker", "worker_main"]


class Outbox:
    """Messages from a worker to the supervisor, ``(kind, body)`` tuples on a pipe.  While a burst
    of packets is handled (``hold()`` .. ``flush()``) they are collected and then sent as one
    ``("batch", [...])`` message: one pickle and one pipe write per burst instead of one per
    event.  A long burst (a flood) is flushed every ``MAX_ITEMS`` messages or ``MAX_DELAY``
    seconds, so nothing waits long.  ``send`` raises OSError when the supervisor is gone."""

    MAX_ITEMS = 64
    MAX_DELAY = 0.05  # seconds

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.items: list[tuple[str, Any]] = []
        self.holding = False
        self.since = 0.0

    def put(self, kind: str, body: Any) -> None:
        """Send ``(kind, body)`` now, or with the burst's batch while holding."""
        if not self.holding:
            self.conn.send((kind, body))
            return
        items = self.items
        now = monotonic()
        if not items:
            self.since = now
        items.append((kind, body))
        if len(items) >= self.MAX_ITEMS or now - self.since >= self.MAX_DELAY:
            self._send()

    def hold(self) -> None:
        """Collect messages until :meth:`flush`."""
        self.holding = True

    def flush(self) -> None:
        """Send what was collected, and send at once from now on."""
        self.holding = False
        if self.items:
            self._send()

    def _send(self) -> None:
        items, self.items = self.items, []
        self.conn.send(("batch", items) if len(items) > 1 else items[0])


class ChannelSink:
    """An event sink that sends each event to the supervisor."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    def emit(self, event: dict[str, Any]) -> None:
        """Send ``event`` to the supervisor (with the burst's batch while one is handled)."""
        self.outbox.put("event", event)


@dataclass(eq=False)
class Worker:
    """One worker on queue number ``queue``, talking to the supervisor over ``conn``; ``bans`` are
    the active bans for its engine, ``own`` this host's addresses.  :meth:`start` raises
    ServiceError, :meth:`run` returns the exit code.  The adapters may be given (tests: fakes):
    ``packets`` (default: the NFQUEUE), ``firewall`` (default: the ipset sets), ``resets``
    (default: raw sockets); ``signals`` False leaves the signal handlers alone."""

    inputs: Inputs
    index: int
    queue: int
    conn: Connection
    bans: list[tuple[str, float, str]]
    own: list[Address]
    clock: Callable[[], float] = time.time
    packets: PacketQueue | None = None
    firewall: Firewall | None = None
    resets: ResetSender | None = None
    signals: bool = True

    def __post_init__(self) -> None:
        self.outbox = Outbox(self.conn)
        self.loop = Loop(self.clock)
        self._whitelist: tuple[str, ...] | None = None  # the supervisor's whole whitelist ([whitelist] files/hosts)

    def start(self) -> None:
        """Load, bind the queue, announce ``started`` to the supervisor."""
        config, rules = self.inputs.load()
        events = ChannelSink(self.outbox)
        if self.firewall is None:
            self.firewall = open_firewall(config)
        config = merge_kernel_whitelist(config, self.firewall, events)  # the one whitelist, as the supervisor's
        self.pipeline = BanPipeline(None, self.firewall, events, Whitelist(config.whitelist), self.own,
                                    config.ipv4_prefix, config.ipv6_prefix)
        self.pipeline.add_listener(self._report_ban)
        self.side = side = PacketSide(self.inputs, config, rules, self.clock)
        firewall = self.firewall
        side.adjust = lambda config: merge_kernel_whitelist(config, firewall, events)
        for network, expires, reason in self.bans:
            side.engine.add_ban(network, expires, reason)
        svc = config.service
        queue = self.packets if self.packets is not None else NfQueue(self.queue, svc.queue_maxlen, svc.fail_open)
        side.start(self.loop, queue, events, self.pipeline, self.resets)
        assert side.packets is not None
        side.packets.batch(self.outbox.hold, self._flush)
        self.loop.add_reader(self.conn.fileno(), self._from_supervisor)
        self.loop.every(SAVE_EVERY, self._send_stats)
        self.loop.on_hup = side.request_reload
        side.on_reloaded = self._apply_whitelist
        if self.signals:
            self.loop.catch_signals()
        events.emit(side.started_event(self.clock(), len(self.bans), worker=self.index))

    def _apply_whitelist(self, *_reloaded: Any) -> None:
        """The supervisor's whole whitelist ([whitelist] files/hosts), also after a reload rebuilt the engine."""
        if self._whitelist is not None:
            self.side.engine.whitelist = Whitelist(self._whitelist, loopback=False)
            self.pipeline.whitelist = Whitelist(self._whitelist)

    def _report_ban(self, kind: str, what: Ban | str) -> None:
        if kind == "ban" and isinstance(what, Ban):
            self.outbox.put("ban", {"ban": asdict(what), "now": self.pipeline.now})

    def _flush(self) -> None:
        try:
            self.outbox.flush()
        except OSError:
            self.loop.stop()

    def _from_supervisor(self) -> None:
        engine = self.side.engine
        try:
            while self.conn.poll():
                kind, body = self.conn.recv()
                if kind == "add_ban":
                    engine.add_ban(*body)
                elif kind == "remove_ban":
                    engine.remove_ban(body)
                elif kind == "reload":
                    self.side.request_reload()
                elif kind == "whitelist":
                    self._whitelist = tuple(body)
                    self._apply_whitelist()
                elif kind == "stop":
                    self.loop.stop()
        except (EOFError, OSError):
            self.loop.stop()  # the supervisor is gone: stop; --queue-bypass keeps traffic flowing

    def _send_stats(self, now: float) -> None:
        stats = self.side.stats(now)
        counts: Counter[str] = Counter(stats["counts"])
        counts.update(self.pipeline.counts)
        try:
            self.conn.send(("stats", {"worker": self.index, "queue": self.queue, **stats, "counts": dict(counts)}))
        except OSError:
            self.loop.stop()

    def run(self) -> int:
        """Handle packets until stopped; then unbind and close."""
        self.loop.run()
        now = self.clock()
        self.side.close()
        with contextlib.suppress(OSError):
            self.outbox.put("event", {"event": "stopped", "time": round(now, 3), "at": now_iso(now)})
        close = getattr(self.firewall, "close", None)
        if close is not None:
            close()
        self.loop.close()
        return 0


def worker_main(inputs: Inputs, index: int, queue: int, conn: Connection, bans: list[tuple[str, float, str]],
                own: list[Address], close: list[int]) -> None:
    """The worker process's entry point (after fork): close the supervisor's descriptors, die
    with the supervisor, run a :class:`Worker`."""
    for fd in close:  # the supervisor's sockets are not ours
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.set_wakeup_fd(-1)
    die_with_parent()
    worker = Worker(inputs, index, queue, conn, bans, own)
    try:
        worker.start()
    except ServiceError as e:
        conn.send(("fatal", str(e)))
        sys.exit(1)
    sys.exit(worker.run())


def die_with_parent() -> None:
    """SIGTERM this worker when the supervisor dies, even by SIGKILL: the worker then
    unbinds its queue at once and --queue-bypass lets the traffic through."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
