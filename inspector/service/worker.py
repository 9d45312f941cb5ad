"""A worker process of ``inspector run --workers N``: one queue, one engine, no ban store.

The worker bans in the kernel itself (lowest latency) through its own
:class:`~inspector.respond.bans.BanPipeline` (no store), and reports every ban, event and, once
a second, its stats to the supervisor over a pipe (:class:`Outbox`).  From the supervisor it
takes ``add_ban``/``remove_ban`` (bans issued elsewhere), ``reload`` and ``stop``.  When the
supervisor goes away the worker stops; ``--queue-bypass`` keeps the traffic flowing.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection
from time import monotonic
from typing import Any

from ..events import now_iso
from ..nets import Address, Whitelist
from ..respond.bans import Ban, BanPipeline
from ..sources.nfqueue import NfQueue
from . import SAVE_EVERY, ServiceError
from .host import open_firewall
from .loop import Loop
from .packets import PacketSide, load_config_and_rules

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
        self.outbox.put("event", event)


class Worker:
    """One worker; :meth:`start` raises ServiceError, :meth:`run` returns the exit code."""

    def __init__(self, config_path: str | None, rules_path: str | None, overrides: dict[str, Any], index: int,
                 queue: int, conn: Connection, bans: list[tuple[str, float, str]], own: list[Address],
                 clock: Callable[[], float] = time.time) -> None:
        self.config_path = config_path
        self.rules_path = rules_path
        self.overrides = overrides
        self.index = index
        self.queue = queue
        self.conn = conn
        self.outbox = Outbox(conn)
        self.snapshot = bans
        self.own = own
        self.clock = clock
        self.loop = Loop(clock)

    def start(self) -> None:
        """Load, bind the queue, announce ``started`` to the supervisor."""
        config, rules = load_config_and_rules(self.config_path, self.rules_path, self.overrides)
        events = ChannelSink(self.outbox)
        self.firewall = open_firewall(config)
        self.bans = BanPipeline(None, self.firewall, events, Whitelist(config.whitelist), self.own,
                                config.ipv4_prefix, config.ipv6_prefix)
        self.bans.add_listener(self._report_ban)
        self.side = side = PacketSide(self.config_path, self.rules_path, self.overrides, config, rules, self.clock)
        for network, expires, reason in self.snapshot:
            side.engine.add_ban(network, expires, reason)
        svc = config.service
        side.start(self.loop, NfQueue(self.queue, svc.queue_maxlen, svc.fail_open), events, self.bans)
        assert side.packets is not None
        side.packets.hold, side.packets.flush = self.outbox.hold, self._flush
        self.loop.add_reader(self.conn.fileno(), self._from_supervisor)
        self.loop.every(SAVE_EVERY, self._send_stats)
        self.loop.on_hup = side.request_reload
        self.loop.catch_signals()
        events.emit(side.started_event(self.clock(), len(self.snapshot), worker=self.index))

    def _report_ban(self, kind: str, what: Ban | str) -> None:
        if kind == "ban" and isinstance(what, Ban):
            self.outbox.put("ban", {"ban": asdict(what), "now": self.bans.now})

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
                elif kind == "stop":
                    self.loop.stop()
        except (EOFError, OSError):
            self.loop.stop()  # the supervisor is gone: stop; --queue-bypass keeps traffic flowing

    def _send_stats(self, now: float) -> None:
        stats = self.side.stats(now)
        counts: Counter[str] = Counter(stats["counts"])
        counts.update(self.bans.counts)
        try:
            self.conn.send(("stats", {"worker": self.index, "queue": self.queue, **stats, "counts": dict(counts)}))
        except OSError:
            self.loop.stop()

    def run(self) -> int:
        """Handle packets until stopped; then unbind and close."""
        self.loop.run()
        now = self.clock()
        self.side.close()
        try:
            self.outbox.put("event", {"event": "stopped", "time": round(now, 3), "at": now_iso(now)})
        except OSError:
            pass
        self.firewall.close()
        self.loop.close()
        return 0


def worker_main(config_path: str | None, rules_path: str | None, overrides: dict[str, Any], index: int,
                queue: int, conn: Connection, bans: list[tuple[str, float, str]], own: list[Address],
                close: list[int]) -> None:
    """The worker process's entry point (after fork): close the supervisor's descriptors, die
    with the supervisor, run a :class:`Worker`."""
    for fd in close:  # the supervisor's sockets are not ours
        try:
            os.close(fd)
        except OSError:
            pass
    signal.set_wakeup_fd(-1)
    die_with_parent()
    worker = Worker(config_path, rules_path, overrides, index, queue, conn, bans, own)
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
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)
