"""``inspector run --workers N``: one worker process per queue, one supervisor.

The kernel spreads IPv4 connections over queues ``queue .. queue+N-1`` by
address pair (``--queue-balance``), so every packet of a source reaches the
same worker and its rate state is exact; IPv6 goes to the first queue only,
because the kernel's IPv6 hash does not keep a /64 together (measured, see
docs/research) and rates are counted per /64.

The supervisor is a :class:`~.host.Host` (the ban store and its file, the event log, the
control socket, the log sources, the side components) plus the workers
(:mod:`.worker`): it records the bans the workers report and passes every ban to every
worker's engine, combines their ``started`` and ``reload`` events, forwards reloads, and
restarts a worker that dies (its queue fails open meanwhile, through ``--queue-bypass``).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from ..config import ConfigError
from ..events import EventSink, now_iso
from ..firewall import Firewall
from ..nets import Address, Network
from ..respond.bans import Ban
from ..telemetry import merge
from . import Inputs, ServiceError
from .host import Host
from .loop import Loop
from .worker import worker_main

__all__ = ["Supervisor", "RESTARTS_PER_MINUTE"]

RESTARTS_PER_MINUTE = 5

Spawn = Callable[..., BaseProcess]


class Supervisor:
    """The supervisor; :meth:`start` raises ServiceError, :meth:`run` returns the exit code.

    ``firewall``, ``events`` and ``own`` may be given (tests); ``context`` is the
    multiprocessing context the workers are started with (default: fork).
    """

    def __init__(self, config_path: str | None, rules_path: str | None, overrides: dict[str, Any],
                 workers: int, clock: Callable[[], float] = time.time, firewall: Firewall | None = None,
                 events: EventSink | None = None, own: Iterable[Address] | None = None,
                 context: Any = None, signals: bool = True, target: Callable[..., None] = worker_main) -> None:
        self.inputs = Inputs(config_path, rules_path, overrides)
        self.count = workers
        self.clock = clock
        self.loop = Loop(clock)
        self.ctx = context if context is not None else multiprocessing.get_context("fork")
        self.signals = signals
        self.target = target
        self._adapters = (firewall, events, own)
        self.workers: dict[int, tuple[BaseProcess, Connection]] = {}
        self.stats: dict[int, dict[str, Any]] = {}
        self.restarts: list[float] = []
        self.reloads = 0
        self.pending_start = set(range(workers))  # "started" is announced once every worker is bound
        self.announced = False
        self.worker_info: dict[int, dict[str, Any]] = {}
        self.reloads_pending: dict[int, dict[str, Any]] = {}
        self._send_lock = threading.Lock()  # side components ban from their own threads
        self._origin: int | None = None  # the worker whose ban is being recorded
        self._whitelist: list[str] | None = None  # the whole whitelist, once [whitelist] files/hosts set it

    def start(self) -> None:
        """Load, restore the bans, listen, spawn the workers."""
        firewall, events, own = self._adapters
        config, _ = self.inputs.load()
        if firewall is None and os.geteuid() != 0:
            raise ServiceError("inspector run needs root (CAP_NET_ADMIN) to bind an NFQUEUE and manage ipsets")
        self.config = config
        self.base = config.service.queue
        self.host = host = Host(config, self.clock, self.loop, firewall, events, own)
        host.packet_status = self._packet_status
        host.bans.add_listener(self._to_workers)
        host.to_packets = self._whitelist_to_workers
        host.start()
        self.own = sorted(host.bans.own, key=str)
        if self.signals:
            self.loop.catch_signals()
        self.loop.on_hup = self._reload
        self.loop.each_turn(self._reap)
        self.started = self.clock()
        for index in range(self.count):
            self._spawn(index)

    @property
    def events(self) -> EventSink:
        """The event sink of this service."""
        return self.host.events

    def _spawn(self, index: int) -> None:
        parent, child = self.ctx.Pipe()
        bans = self.host.bans.snapshot(self.clock())
        # the worker must not hold the supervisor's ends of any pipe (its own or its siblings'):
        # otherwise a worker never sees EOF when the supervisor dies
        close = [*self.loop.wake_fds(), parent.fileno()] + [c.fileno() for _, c in self.workers.values()]
        if self.host.control.sock is not None:
            close.append(self.host.control.fileno())
        if self.host.log_file is not None:
            close.append(self.host.log_file.fileno())
        proc = self.ctx.Process(target=self.target, name=f"inspector-worker-{index}", daemon=False,
                                args=(self.inputs, index, self.base + index, child, bans, self.own, close))
        proc.start()
        child.close()
        self.workers[index] = (proc, parent)
        if self._whitelist is not None:
            with self._send_lock:
                parent.send(("whitelist", self._whitelist))
        self.loop.add_reader(parent.fileno(), lambda: self._drain(index, parent))

    def _broadcast(self, message: tuple[str, Any], skip: int | None = None) -> None:
        with self._send_lock:
            for index, (_, conn) in list(self.workers.items()):
                if index != skip:
                    with contextlib.suppress(OSError):
                        conn.send(message)

    def _to_workers(self, kind: str, what: Ban | str) -> None:
        if kind == "unban":
            self._broadcast(("remove_ban", what))
        elif isinstance(what, Ban) and self.host.bans.is_engine_form(what.network):
            # a narrowed IPv6 single-address ban (log policy) stays narrow: the kernel set holds it
            self._broadcast(("add_ban", (what.network, self.host.bans.now + what.seconds, what.reason)),
                            skip=self._origin)

    def _whitelist_to_workers(self, networks: tuple[Network, ...]) -> None:
        self._whitelist = [str(n) for n in networks]
        self._broadcast(("whitelist", self._whitelist))

    def _reload(self) -> None:
        self._broadcast(("reload", None))
        try:
            config = self.inputs.load_config()
        except ConfigError:
            return  # the workers report the error; the running logs stay
        from dataclasses import replace

        self.config = replace(config, service=self.config.service)
        self.host.reload_logs(self.config)

    def _drain(self, index: int, conn: Connection) -> None:
        try:
            while conn.poll():
                message = conn.recv()
                for kind, body in (message[1] if message[0] == "batch" else (message,)):
                    self._message(index, kind, body)
        except (EOFError, OSError):
            self.loop.remove_reader(conn.fileno())

    def _message(self, index: int, kind: str, body: Any) -> None:
        """One message from worker ``index``."""
        if kind == "event":
            self._worker_event(index, body)
        elif kind == "ban":
            self._origin = index
            try:
                self.host.bans.record(Ban(**body["ban"]), float(body["now"]))
            finally:
                self._origin = None
        elif kind == "stats":
            self.stats[index] = body
        elif kind == "fatal":
            self.events.emit({"event": "error", "what": "worker", "worker": index, "error": body})

    def _worker_event(self, index: int, event: dict[str, Any]) -> None:
        """Pass a worker's event on; started/reload/stopped are combined into one per supervisor."""
        kind = event.get("event")
        if kind == "stopped":
            return  # the supervisor's own "stopped" event carries every worker's counts
        if kind == "started":
            self.pending_start.discard(index)
            self.worker_info[index] = event
            if not self.pending_start and not self.announced:
                self.announced = True
                self._announce()
            return
        if kind == "reload":
            self.reloads_pending[index] = event
            if len(self.reloads_pending) >= len(self.workers):
                results = list(self.reloads_pending.values())
                self.reloads_pending = {}
                failed = [r for r in results if not r.get("ok")]
                merged = dict(failed[0] if failed else results[0])
                merged["workers"] = len(results)
                if not failed:
                    self.reloads += 1
                self.events.emit(merged)
            return
        self.events.emit(event)

    def _announce(self) -> None:
        self.started = self.host.started = self.clock()
        first = self.worker_info.get(0, {})
        self.events.emit({"event": "started", "time": round(self.started, 3), "at": now_iso(self.started),
                          "pid": os.getpid(), "queue": self.base, "workers": self.count, "mode": self.config.mode,
                          "bans_restored": self.host.restored, "domains": first.get("domains"),
                          "rules": first.get("rules"), "fail_open": all(i.get("fail_open") for i in
                                                                         self.worker_info.values())})

    def _reap(self, now: float) -> None:
        for index, (proc, conn) in list(self.workers.items()):
            if proc.is_alive() or self.loop.stopping:
                continue
            self.loop.remove_reader(conn.fileno())
            conn.close()
            del self.workers[index]
            self.events.emit({"event": "error", "what": "worker-exit", "worker": index, "code": proc.exitcode})
            self.restarts = [t for t in self.restarts if now - t < 60] + [now]
            if len(self.restarts) > RESTARTS_PER_MINUTE:
                self.events.emit({"event": "error", "what": "worker-restarts",
                                  "error": f"more than {RESTARTS_PER_MINUTE} worker restarts in a minute: stopping "
                                           "(traffic flows through --queue-bypass)"})
                self.loop.stop()
                return
            self._spawn(index)

    def _packet_status(self, now: float) -> dict[str, Any]:
        total: Counter[str] = Counter()
        for s in self.stats.values():
            total.update(s.get("counts", {}))
        first = self.stats.get(0, {})
        return {"queue": self.base, "workers": len(self.workers),
                "packets": sum(s.get("packets", 0) for s in self.stats.values()), "counts": dict(total),
                "rules": first.get("rules"), "reloads": self.reloads,
                "live": merge([s.get("live", {}) for s in self.stats.values()]), "per_worker": self.stats}

    def run(self) -> int:
        """Supervise until stopped; then :meth:`stop`."""
        self.loop.run()
        return self.stop()

    def stop(self) -> int:
        """Stop the workers (10 s, then SIGTERM), save, close; emit ``stopped``.  Returns 0."""
        self._broadcast(("stop", None))
        deadline = time.monotonic() + 10
        for proc, _ in self.workers.values():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        for index, (_, conn) in self.workers.items():
            self._drain(index, conn)
        host = self.host
        now = self.clock()
        host.close_components()
        host.save_final(now)
        self.events.emit({"event": "stopped", "time": round(now, 3), "at": now_iso(now),
                          "workers": {i: s.get("counts", {}) for i, s in sorted(self.stats.items())}})
        host.close()
        self.loop.close()
        return 0
