"""``inspector run --workers N``: one process per queue, one supervisor.

The kernel spreads IPv4 connections over queues ``queue .. queue+N-1`` by
address pair (``--queue-balance``), so every packet of a source reaches the
same worker and its rate state is exact; IPv6 goes to the first queue only,
because the kernel's IPv6 hash does not keep a /64 together (measured, see
docs/research) and rates are counted per /64.

Each worker runs the single-process service loop on its own queue with its
own engine; it bans in the kernel itself (lowest latency) and reports bans and
events to the supervisor over a pipe.  The supervisor owns what must be one:
the ban store and its file, the event log, the control socket; it passes bans
to every worker's engine, forwards reloads, and restarts a worker that dies
(its queue fails open meanwhile, through ``--queue-bypass``).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import socket
import subprocess
import sys
import time
from time import monotonic
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from .bans import BanRecord, BanStore
from .config import Config, ConfigError
from .events import now_iso
from .kernel_whitelist import merge_kernel_whitelist
from .perms import files_policy
from .rules import RuleError
from .app import load
from .runner import issue_ban
from .service import (Service, ServiceError, _Fanout, _record_json, apply_log_bans, apply_overrides,
                      ban_summary, close_control, close_shared, lift_ban, make_log_monitor, open_control_socket,
                      make_state_writer, notify_disk, open_firewall, open_sinks, report_log_failures, restore_bans,
                      save_bans, serve_control, storage_health)

__all__ = ["Supervisor", "detect_queues"]

RESTARTS_PER_MINUTE = 5


def detect_queues(iptables: str = "iptables", chain: str = "INSPECTOR") -> tuple[int, int] | None:
    """The queue range the installed rules use: ``(first, count)``, or None if none is installed."""
    try:
        out = subprocess.run([iptables, "-w", "-S", chain], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines():
        words = line.split()
        if "--queue-balance" in words:
            first, last = words[words.index("--queue-balance") + 1].split(":")
            return int(first), int(last) - int(first) + 1
        if "--queue-num" in words:
            return int(words[words.index("--queue-num") + 1]), 1
    return None


# -- the worker side ---------------------------------------------------------------

class _Outbox:
    """Messages from a worker to the supervisor.  While a burst of packets is handled
    (``hold()`` .. ``flush()``) they are collected and then sent as one ``batch`` message:
    one pickle and one pipe write per burst instead of one per event.  A long burst (a flood)
    is flushed every ``MAX_ITEMS`` messages or ``MAX_DELAY`` seconds, so nothing waits long."""

    MAX_ITEMS = 64
    MAX_DELAY = 0.05

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.items: list[tuple[str, Any]] = []
        self.holding = False
        self.since = 0.0

    def put(self, kind: str, body: Any) -> None:
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
        self.holding = True

    def flush(self) -> None:
        self.holding = False
        if self.items:
            self._send()

    def _send(self) -> None:
        items, self.items = self.items, []
        self.conn.send(("batch", items) if len(items) > 1 else items[0])


class _ChannelSink:
    def __init__(self, outbox: _Outbox) -> None:
        self.outbox = outbox

    def emit(self, event: dict[str, Any]) -> None:
        self.outbox.put("event", event)


class _ChannelStore(BanStore):
    """The worker's view of the ban store: adds go to the supervisor, which owns the file."""

    def __init__(self, outbox: _Outbox) -> None:
        super().__init__(None)
        self.outbox = outbox

    def add(self, record: BanRecord) -> None:
        self.outbox.put("ban", asdict(record))


class WorkerService(Service):
    def __init__(self, config_path: str | None, rules_path: str | None, overrides: dict[str, Any],
                 index: int, queue: int, conn: Connection, bans: list[tuple[str, float, str]]) -> None:
        super().__init__(config_path, rules_path, overrides)
        self.index = index
        self.queue = queue
        self.conn = conn
        self.outbox = _Outbox(conn)
        self.snapshot = bans

    def _identity(self) -> dict[str, Any]:
        return {"worker": self.index}

    def _make_events(self, config: Config) -> Any:
        return _ChannelSink(self.outbox)

    def _make_store(self, config: Config) -> BanStore:
        return _ChannelStore(self.outbox)

    def _make_control(self, config: Config) -> socket.socket | None:
        return None

    def _make_metrics(self, config: Config) -> Any:
        return None  # the supervisor serves the metrics of all workers

    def _make_logs(self, config: Config) -> Any:
        return None  # the supervisor follows the logs

    def _restore_bans(self) -> int:
        for network, expires, reason in self.snapshot:
            self.engine.add_ban(network, expires, reason)
        self._saved_bans = 0
        return len(self.snapshot)

    def _save(self, now: float, force: bool = False) -> None:
        pass  # the supervisor saves

    def _extra_watch(self) -> list[Any]:
        return [self.conn]

    def _before_packets(self) -> None:
        self.outbox.hold()

    def _after_packets(self) -> None:
        try:
            self.outbox.flush()
        except OSError:
            self.stopping = True

    def _on_ready(self, ready: list[Any]) -> None:
        if self.conn not in ready:
            return
        try:
            while self.conn.poll():
                kind, body = self.conn.recv()
                if kind == "add_ban":
                    self.engine.add_ban(*body)
                elif kind == "remove_ban":
                    self.engine.remove_ban(body)
                elif kind == "reload":
                    self._reload_requested = True
                elif kind == "stop":
                    self.stopping = True
        except (EOFError, OSError):
            self.stopping = True  # the supervisor is gone: stop; --queue-bypass keeps traffic flowing

    def _tick(self, now: float) -> None:
        try:
            self.conn.send(("stats", {"worker": self.index, "queue": self.queue, "packets": self.engine.packets,
                                      "counts": dict(self.runner.counts), "engine": self.engine.stats(),
                                      "live": self.runner.telemetry.snapshot(now), "rules": self.rules_info}))
        except OSError:
            self.stopping = True


def _worker_main(config_path: str | None, rules_path: str | None, overrides: dict[str, Any], index: int,
                 queue: int, conn: Connection, bans: list[tuple[str, float, str]], close: list[int]) -> None:
    for fd in close:  # the supervisor's sockets are not ours
        try:
            os.close(fd)
        except OSError:
            pass
    signal.set_wakeup_fd(-1)
    _die_with_parent()
    service = WorkerService(config_path, rules_path, overrides, index, queue, conn, bans)
    try:
        service.start()
    except ServiceError as e:
        conn.send(("fatal", str(e)))
        sys.exit(1)
    sys.exit(service.run())


def _die_with_parent() -> None:
    """SIGTERM this worker when the supervisor dies, even by SIGKILL: the worker then
    unbinds its queue at once and --queue-bypass lets the traffic through."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


# -- the supervisor ------------------------------------------------------------------

class Supervisor:
    def __init__(self, config_path: str | None, rules_path: str | None, overrides: dict[str, Any],
                 workers: int, clock: Callable[[], float] = time.time) -> None:
        self.config_path = config_path
        self.rules_path = rules_path
        self.overrides = overrides
        self.count = workers
        self.clock = clock
        self.stopping = False
        self.reload = False
        self.workers: dict[int, tuple[multiprocessing.process.BaseProcess, Connection]] = {}
        self.stats: dict[int, dict[str, Any]] = {}
        self.restarts: list[float] = []
        self.counts: Counter[str] = Counter()

    def start(self) -> None:
        try:
            config, rules = load(self.config_path, self.rules_path)
        except (ConfigError, RuleError) as e:
            raise ServiceError(str(e)) from None
        config = apply_overrides(config, self.overrides)
        if os.geteuid() != 0:
            raise ServiceError("inspector run needs root (CAP_NET_ADMIN) to bind an NFQUEUE and manage ipsets")
        self.config = config
        svc = config.service
        self.base = svc.queue if self.overrides.get("queue") is None else int(self.overrides["queue"])
        sinks, self._log_file = open_sinks(config)
        self.events = _Fanout(sinks)
        self.firewall = open_firewall(config)
        self.config = config = merge_kernel_whitelist(config, self.firewall, self.events)
        self.store = BanStore(Path(svc.state_file), files_policy(config.extra))
        restored = restore_bans(self.store, self.firewall, self.events, self.clock())
        self.control = open_control_socket(svc.control_socket, config.extra)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.ctx = multiprocessing.get_context("fork")
        self.restored = restored
        self.started = self.clock()
        self.pending_start = set(range(self.count))  # "started" is announced once every worker is bound
        self.announced = False
        self.worker_info: dict[int, dict[str, Any]] = {}
        self.reloads_pending: dict[int, dict[str, Any]] = {}
        self.reloads = 0
        self.logs = make_log_monitor(config)
        self._log_counts: dict[str, int] = {}
        self.state_writer = make_state_writer(
            self.store, lambda: save_bans(self.store, self.clock(), None, self.logs, self.events),
            lambda message: notify_disk(self.config, self.events, message))
        for index in range(self.count):
            self._spawn(index)
        from .service import start_metrics

        self._metrics = start_metrics(config, lambda: self._control({"cmd": "status"}))

    def _spawn(self, index: int) -> None:
        parent, child = self.ctx.Pipe()
        now = self.clock()
        bans = [(r.network, r.expires, r.reason) for r in self.store.active(now)]
        # the worker must not hold the supervisor's ends of any pipe (its own or its siblings'):
        # otherwise a worker never sees EOF when the supervisor dies
        close = [self._wake_r, self._wake_w, parent.fileno()] + [c.fileno() for _, c in self.workers.values()]
        if self.control is not None:
            close.append(self.control.fileno())
        if self._log_file is not None:
            close.append(self._log_file.fileno())
        proc = self.ctx.Process(target=_worker_main, name=f"inspector-worker-{index}", daemon=False,
                                args=(self.config_path, self.rules_path, self.overrides, index, self.base + index,
                                      child, bans, close))
        proc.start()
        child.close()
        self.workers[index] = (proc, parent)

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self.reload = True

    def _broadcast(self, message: tuple[str, Any], skip: int | None = None) -> None:
        for index, (_, conn) in self.workers.items():
            if index != skip:
                try:
                    conn.send(message)
                except OSError:
                    pass

    def _log_ban(self, network: str, seconds: int, reason: str, rule: str | None, now: float) -> bool:
        if not issue_ban(self.store, self.firewall, self.events, network, seconds, reason, rule, None, now):
            return False
        if "/" in network or ":" not in network:  # a narrowed IPv6 single-address ban stays narrow
            self._broadcast(("add_ban", (network, now + seconds, reason)))
        return True

    def _reload_logs(self) -> None:
        from .config import load_config

        try:
            config = apply_overrides(load_config(self.config_path, self.rules_path), self.overrides)
        except ConfigError:
            return  # the workers report the error; the running logs stay
        config = merge_kernel_whitelist(config, self.firewall, self.events)
        self.logs = make_log_monitor(config, previous=self.logs)
        self.config = replace(config, service=self.config.service)

    def run(self) -> int:
        next_log = next_minute = 0.0
        dirty = False
        while not self.stopping:
            watch: list[Any] = [self._wake_r] + [conn for _, conn in self.workers.values()]
            if self.control is not None:
                watch.append(self.control)
            wait = min(1.0, self.config.logs.poll_interval) if self.logs else 1.0
            try:
                ready, _, _ = select.select(watch, [], [], wait)
            except InterruptedError:
                ready = []
            if self._wake_r in ready:
                os.read(self._wake_r, 512)
            for index, (proc, conn) in list(self.workers.items()):
                if conn in ready:
                    dirty |= self._drain(index, conn)
            if self.control is not None and self.control in ready:
                self._serve_control()
            if self.reload:
                self.reload = False
                self._broadcast(("reload", None))
                self._reload_logs()
            self._reap()
            now = self.clock()
            if self.logs is not None and now >= next_log:
                next_log = now + self.config.logs.poll_interval
                dirty |= apply_log_bans(self.logs.poll(now), now, self._log_ban, self.events, self.config.alert)
                if now >= next_minute:
                    next_minute = now + 60
                    self._log_counts = report_log_failures(self.logs, self._log_counts, now, self.events)
            if dirty and self.state_writer is not None:
                self.state_writer.poke()  # it saves from its own thread, and retries while the disk fails
                dirty = False
        return self.stop()

    def _drain(self, index: int, conn: Connection) -> bool:
        dirty = False
        try:
            while conn.poll():
                message = conn.recv()
                for kind, body in (message[1] if message[0] == "batch" else (message,)):
                    dirty |= self._message(index, kind, body)
        except (EOFError, OSError):
            pass
        return dirty

    def _message(self, index: int, kind: str, body: Any) -> bool:
        """One message from worker ``index``; True if the ban store changed."""
        dirty = False
        if kind == "event":
            self._worker_event(index, body)
        elif kind == "ban":
            record = BanRecord(**body)
            self.store.add(record)
            self._broadcast(("add_ban", (record.network, record.expires, record.reason)), skip=index)
            dirty = True
        elif kind == "stats":
            self.stats[index] = body
        elif kind == "fatal":
            self.events.emit({"event": "error", "what": "worker", "worker": index, "error": body})
        return dirty

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
        self.started = self.clock()
        first = self.worker_info.get(0, {})
        self.events.emit({"event": "started", "time": round(self.started, 3), "at": now_iso(self.started),
                          "pid": os.getpid(), "queue": self.base, "workers": self.count, "mode": self.config.mode,
                          "bans_restored": self.restored, "domains": first.get("domains"),
                          "rules": first.get("rules"), "fail_open": all(i.get("fail_open") for i in
                                                                         self.worker_info.values())})

    def _reap(self) -> None:
        for index, (proc, conn) in list(self.workers.items()):
            if proc.is_alive() or self.stopping:
                continue
            conn.close()
            del self.workers[index]
            now = self.clock()
            self.events.emit({"event": "error", "what": "worker-exit", "worker": index, "code": proc.exitcode})
            self.restarts = [t for t in self.restarts if now - t < 60] + [now]
            if len(self.restarts) > RESTARTS_PER_MINUTE:
                self.events.emit({"event": "error", "what": "worker-restarts",
                                  "error": f"more than {RESTARTS_PER_MINUTE} worker restarts in a minute: stopping "
                                           "(traffic flows through --queue-bypass)"})
                self.stopping = True
                return
            self._spawn(index)

    def _save_unban(self) -> None:
        """After an unban: the file itself loses the ban before the reply (rare, so a full rewrite)."""
        if self.state_writer is not None:
            self.state_writer.save_now(lambda: save_bans(self.store, self.clock(), True, self.logs, self.events))

    def _save(self, now: float, compact: bool | None = None) -> None:
        save_bans(self.store, now, compact, self.logs, self.events)

    def stop(self) -> int:
        self._broadcast(("stop", None))
        deadline = time.monotonic() + 10
        for proc, conn in self.workers.values():
            proc.join(max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                proc.join(2)
        for index, (_, conn) in self.workers.items():
            self._drain(index, conn)
        now = self.clock()
        if self.state_writer is not None:
            self.state_writer.close()
        self._save(now, compact=True)
        close_control(self.control, self.config.service.control_socket)
        self.events.emit({"event": "stopped", "time": round(now, 3), "at": now_iso(now),
                          "workers": {i: s.get("counts", {}) for i, s in sorted(self.stats.items())}})
        close_shared(self.firewall, self.logs, self._log_file)
        return 0

    # -- control socket: the same requests as the single-process service --------------

    def _serve_control(self) -> None:
        assert self.control is not None
        serve_control(self.control, self._control)

    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        from .sources.nfqueue import queue_stats
        from .telemetry import merge

        now = self.clock()
        cmd = request.get("cmd")
        if cmd == "bans":
            return {"ok": True, "bans": [_record_json(r, now) for r in self.store.active(now)]}
        if cmd == "unban":
            return lift_ban(str(request.get("network")), self.config, self.store, self.firewall, self.logs,
                            self.events, now, lambda network: self._broadcast(("remove_ban", network)),
                            self._save_unban)
        if cmd == "status":
            total: Counter[str] = Counter()
            for s in self.stats.values():
                total.update(s.get("counts", {}))
            first = self.stats.get(0, {})
            return {"ok": True, "pid": os.getpid(), "mode": self.config.mode, "queue": self.base,
                    "workers": len(self.workers), "uptime": round(now - self.started, 1),
                    "packets": sum(s.get("packets", 0) for s in self.stats.values()),
                    **ban_summary(self.store, now), "counts": dict(total), "rules": first.get("rules"),
                    "reloads": self.reloads, "logs": self.logs.stats() if self.logs is not None else None,
                    "live": merge([s.get("live", {}) for s in self.stats.values()]),
                    "queues": [q.__dict__ for q in queue_stats()], "per_worker": self.stats,
                    "storage": storage_health(self.store, self.state_writer, self._log_file, self.events)}
        return {"ok": False, "error": f"unknown command {cmd!r}"}
