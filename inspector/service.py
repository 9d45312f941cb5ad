"""``inspector run``: the inline service.

The composition root for live mode.  It binds an NFQUEUE with
``NetfilterQueue``, hands every packet to the :class:`~inspector.runner.Runner`
(engine → kernel verdict → resets, bans, events), and around that:

* restores bans at start: from the state file and from the kernel's own ipset
  (which outlives the process), into both the engine and the ipset, skipping
  expired ones;
* ``SIGHUP`` reloads config and rules: they are built aside in a thread while
  verdicts go on, then swapped in; a broken file keeps the old ones and says why;
* ``SIGTERM``/``SIGINT`` stop gracefully (state saved, queue unbound; with
  ``--queue-bypass`` the kernel then lets traffic through);
* a UNIX control socket answers ``bans``, ``unban`` and ``status``;
* the queue gets the kernel's fail-open flag, so an overloaded inspector lets
  packets through instead of dropping them.
"""

from __future__ import annotations

import errno
import json
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from .app import load
from .bans import BanRecord, BanStore, StateError
from .config import Config, ConfigError
from .engine import Engine, ban_network_for
from .events import EventSink, JsonLinesSink, SyslogBans, now_iso
from .firewall import FirewallError, IpsetFirewall, SetNames
from .kernel_whitelist import merge_kernel_whitelist
from .perms import FilePolicy, NeedsRoot, files_policy, needs_root_message
from .persist import EventLog, StateWriter, syslog_notifier
from .queue_check import installed_queues, refusal
from .rules import RuleError, RuleSet
from .runner import RawResetSender, Runner
from .sources.nfqueue import FAIL_OPEN, WholeMessages, queue_stats, set_copy_range, set_queue_flags

__all__ = ["ServiceError", "Service", "apply_overrides", "control_request"]

SAVE_EVERY = 1.0  # seconds between ban-state saves (when there is something new)


class ServiceError(Exception):
    """The service cannot start; the message says why and what to do."""


class _Fanout:
    def __init__(self, sinks: list[EventSink]) -> None:
        self.sinks = sinks
        self.errors = 0  # events a sink failed to take (counted, never raised)

    def emit(self, event: dict[str, Any]) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception:  # noqa: BLE001 - a full disk must not stop verdicts
                self.errors += 1


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Command-line flags win over the config file."""
    if overrides.get("alert"):
        config = replace(config, mode="alert")
    if overrides.get("queue") is not None:
        config = replace(config, service=replace(config.service, queue=overrides["queue"]))
    if overrides.get("ban_time") is not None:
        t = int(overrides["ban_time"])
        config = replace(config, ban_domain=t, ban_payload=t, rates=tuple(replace(r, ban=t) for r in config.rates))
    return config


class Service:
    def __init__(self, config_path: str | None, rules_path: str | None, overrides: dict[str, Any],
                 clock: Callable[[], float] = time.time) -> None:
        self.config_path = config_path
        self.rules_path = rules_path
        self.overrides = overrides
        self.clock = clock
        self.stopping = False
        self._reload_requested = False
        self._reload_thread: threading.Thread | None = None
        self._reload_result: tuple[Config, RuleSet] | Exception | None = None
        self._log_file: Any = None

    # -- start ------------------------------------------------------------------

    def _load(self) -> tuple[Config, RuleSet]:
        config, rules = load(self.config_path, self.rules_path)
        return apply_overrides(config, self.overrides), rules

    def start(self) -> None:
        try:
            config, rules = self._load()
        except (ConfigError, RuleError) as e:
            raise ServiceError(str(e)) from None
        if os.geteuid() != 0:
            raise ServiceError("inspector run needs root (CAP_NET_ADMIN) to bind an NFQUEUE and manage ipsets")
        try:
            from netfilterqueue import NetfilterQueue
        except ImportError:
            raise ServiceError("NetfilterQueue is not installed: pip install 'inspector[live]' "
                               "(needs Debian's libnetfilter-queue-dev)") from None
        self.config = config
        svc = config.service
        self.events = self._make_events(config)
        self.firewall = open_firewall(config)
        config = self.config = merge_kernel_whitelist(config, self.firewall, self.events)
        self.engine = Engine(config, rules)
        self.store = self._make_store(config)
        try:
            self.resets = RawResetSender()
        except OSError as e:
            raise ServiceError(f"cannot open raw sockets for resets: {e}") from None
        self.runner = Runner(self.engine, self.firewall, self.resets, self.events, self.store, self.clock,
                             mark=svc.mark)
        restored = self._restore_bans()
        self.logs = self._make_logs(config)
        self.state_writer = make_state_writer(self.store, lambda: self._save_now(), self._notify)
        self._log_counts: dict[str, int] = {}

        queue = self.queue if self.queue is not None else svc.queue
        self.nfq = NetfilterQueue()
        try:
            self.nfq.bind(queue, self._handle, max_len=svc.queue_maxlen)
        except OSError as e:
            raise ServiceError(f"cannot bind NFQUEUE {queue}: {e} "
                               "(is another inspector running on it? is nfnetlink_queue available?)") from None
        self._messages = WholeMessages(self.nfq.get_fd())
        copy_range = set_copy_range(self.nfq.get_fd(), queue)
        if copy_range != 0:
            self.events.emit({"event": "error", "what": "copy-range",
                              "error": f"the kernel did not confirm whole-packet copies (errno {copy_range});"
                                       " packets over 4016 bytes are inspected only that far"})
        fail_open = None
        if svc.fail_open:
            fail_open = set_queue_flags(self.nfq.get_fd(), queue, FAIL_OPEN)
            if fail_open != 0:
                self.events.emit({"event": "error", "what": "fail-open",
                                  "error": f"the kernel did not confirm the fail-open flag (errno {fail_open})"})
        self.control = self._make_control(config)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.started = self.clock()
        self.rules_info = _rules_info(rules, self.started)
        self.reloads = 0
        self._metrics = self._make_metrics(config)
        self.events.emit({"event": "started", "time": round(self.started, 3), "at": now_iso(self.started),
                          "pid": os.getpid(), "queue": queue, "mode": config.mode, **self._identity(),
                          "fail_open": fail_open == 0, "bans_restored": restored,
                          "domains": len(rules.domains), "rules": [str(f.path) for f in rules.files]})

    # -- what a worker replaces (inspector/workers.py) ------------------------------

    queue: int | None = None  # None: the config's queue

    def _identity(self) -> dict[str, Any]:
        return {}

    def _make_events(self, config: Config) -> EventSink:
        return _Fanout(self._sinks(config))

    def _make_store(self, config: Config) -> BanStore:
        return BanStore(Path(config.service.state_file), files_policy(config.extra))

    def _make_control(self, config: Config) -> socket.socket | None:
        return self._control_socket(config.service.control_socket)

    def _make_logs(self, config: Config) -> Any:
        return make_log_monitor(config)

    def _make_metrics(self, config: Config) -> Any:
        return start_metrics(config, lambda: self._control({"cmd": "status"}))

    def _extra_watch(self) -> list[Any]:
        return []

    def _before_packets(self) -> None:
        pass

    def _after_packets(self) -> None:
        pass

    def _on_ready(self, ready: list[Any]) -> None:
        pass

    def _tick(self, now: float) -> None:
        pass

    def _sinks(self, config: Config) -> list[EventSink]:
        sinks, self._log_file = open_sinks(config)
        return sinks

    def _notify(self, message: str) -> None:
        """A disk problem: syslog (if on) and an error event."""
        notify_disk(self.config, self.events, message)

    def _restore_bans(self) -> int:
        restored = restore_bans(self.store, self.firewall, self.events, self.clock(), self.engine)
        self._saved_bans = self.runner.counts["bans"]
        return restored

    def _control_socket(self, path: str) -> socket.socket | None:
        return open_control_socket(path, self.config.extra)

    # -- the loop -----------------------------------------------------------------

    def _handle(self, packet: Any) -> None:
        try:
            self.runner.handle(packet)
        except Exception as e:  # noqa: BLE001 - an exception here would strand the packet in the kernel
            self.runner.counts["errors:handle"] += 1
            try:
                packet.accept()
            except Exception:  # noqa: BLE001 - it already had its verdict
                pass
            self.events.emit({"event": "error", "what": "handle", "error": f"{type(e).__name__}: {e}"})

    def _log_ban(self, network: str, seconds: int, reason: str, rule: str | None, now: float) -> bool:
        if not self.runner.ban(network, seconds, reason, rule, None, now):
            return False
        if "/" in network or ":" not in network:  # a narrowed IPv6 single-address ban stays narrow
            self.engine.add_ban(network, now + seconds, reason)
        return True

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self._reload_requested = True

    def run(self) -> int:
        fd = self.nfq.get_fd()
        watch = [fd, self._wake_r] + ([self.control] if self.control else []) + self._extra_watch()
        next_save = self.clock() + SAVE_EVERY
        counts = self.runner.counts
        next_log = next_minute = 0.0
        while not self.stopping:
            wait = min(1.0, self.config.logs.poll_interval) if self.logs else 1.0
            try:
                ready, _, _ = select.select(watch, [], [], wait)
            except InterruptedError:
                ready = []
            if fd in ready:
                counts["queue-wakeups"] += 1  # packets / wakeups: how many packets one wakeup handles
                self._before_packets()
                try:
                    self.nfq.run_socket(self._messages)
                finally:
                    self._after_packets()
            if self._wake_r in ready:
                os.read(self._wake_r, 512)
            if self.control is not None and self.control in ready:
                self._serve_control()
            self._on_ready(ready)
            if self._reload_requested:
                self._start_reload()
            if self._reload_thread is not None and not self._reload_thread.is_alive():
                self._finish_reload()
            now = self.clock()
            if self.logs is not None and now >= next_log:
                next_log = now + self.config.logs.poll_interval
                self._store_dirty |= apply_log_bans(self.logs.poll(now), now, self._log_ban, self.events,
                                                    self.config.alert)
                if now >= next_minute:
                    next_minute = now + 60
                    self._log_counts = report_log_failures(self.logs, self._log_counts, now, self.events)
            if now >= next_save:
                next_save = now + SAVE_EVERY
                self._tick(now)
        return self.stop()

    def stop(self) -> int:
        now = self.clock()
        if self.state_writer is not None:
            self.state_writer.close()
        self._save(now, force=True)
        try:
            self.nfq.unbind()
        except Exception:  # noqa: BLE001
            pass
        self._messages.close()
        close_control(self.control, self.config.service.control_socket)
        self.events.emit({"event": "stopped", "time": round(now, 3), "at": now_iso(now),
                          "packets": self.engine.packets, "counts": dict(self.runner.counts)})
        self.resets.close()
        close_shared(self.firewall, self.logs, self._log_file)
        return 0

    def _save(self, now: float, force: bool = False) -> None:
        if save_bans(self.store, now, True if force else None, self.logs, self.events):
            self._store_dirty = False

    def _save_now(self) -> bool:
        """The state writer's save (its own thread): what changed, then the hosts.deny export."""
        return save_bans(self.store, self.clock(), None, self.logs, self.events)

    _store_dirty = False
    state_writer: StateWriter | None = None

    # -- reload -------------------------------------------------------------------

    def _start_reload(self) -> None:
        self._reload_requested = False
        if self._reload_thread is not None:
            self._reload_requested = True  # one at a time: run again when this one is done
            return

        def build() -> None:
            try:
                self._reload_result = self._load()
            except Exception as e:  # noqa: BLE001
                self._reload_result = e
        self._reload_thread = threading.Thread(target=build, name="inspector-reload", daemon=True)
        self._reload_thread.start()

    def _finish_reload(self) -> None:
        result, self._reload_result, self._reload_thread = self._reload_result, None, None
        now = self.clock()
        if isinstance(result, Exception) or result is None:
            self.events.emit({"event": "reload", "ok": False, "time": round(now, 3),
                              "error": str(result), "kept": "the rules and config in use"})
            return
        config, rules = result
        config = merge_kernel_whitelist(config, self.firewall, self.events)
        same_engine = replace(config, rules=(), service=self.config.service) == \
            replace(self.config, rules=(), service=self.config.service)
        if same_engine:
            self.engine.swap_rules(rules)
        else:
            engine = Engine(config, rules)
            engine.bans = self.engine.bans  # bans carry over; flows are picked up midstream
            self.engine = self.runner.engine = engine
        if config.service != self.config.service:
            self.events.emit({"event": "reload-note", "note": "[service] changes take effect on restart"})
        if self.logs is not None or config.logs.sources:
            self.logs = make_log_monitor(config, previous=self.logs)
        self.config = replace(config, service=self.config.service)
        self.rules_info = _rules_info(rules, now)
        self.reloads += 1
        self.events.emit({"event": "reload", "ok": True, "time": round(now, 3), "domains": len(rules.domains),
                          "engine": "kept" if same_engine else "rebuilt"})

    # -- control socket -------------------------------------------------------------

    def _serve_control(self) -> None:
        assert self.control is not None
        serve_control(self.control, self._control)

    def _control(self, request: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        cmd = request.get("cmd")
        if cmd == "bans":
            return {"ok": True, "bans": [_record_json(r, now) for r in self.store.active(now)]}
        if cmd == "unban":
            def save() -> None:  # the reply means "saved": the file itself loses the ban
                if self.state_writer is not None:
                    self.state_writer.save_now(lambda: save_bans(self.store, now, True, self.logs, self.events))
            return lift_ban(str(request.get("network")), self.config, self.store, self.firewall, self.logs,
                            self.events, now, self.engine.remove_ban, save)
        if cmd == "status":
            return {"ok": True, "pid": os.getpid(), "mode": self.config.mode, "queue": self.config.service.queue,
                    "workers": 1, "uptime": round(now - self.started, 1), "packets": self.engine.packets,
                    **ban_summary(self.store, now), "counts": dict(self.runner.counts), "engine": self.engine.stats(),
                    "rules": self.rules_info, "live": self.runner.telemetry.snapshot(now), "reloads": self.reloads,
                    "logs": self.logs.stats() if self.logs is not None else None,
                    "queues": [q.__dict__ for q in queue_stats()],
                    "storage": storage_health(self.store, self.state_writer, self._log_file, self.events)}
        return {"ok": False, "error": f"unknown command {cmd!r}"}



def open_firewall(config: Config) -> IpsetFirewall:
    """The ipset adapter with both ban sets in place (ServiceError if that cannot be)."""
    svc = config.service
    try:
        firewall = IpsetFirewall(SetNames(svc.ipset_v4, svc.ipset_v6), svc.maxelem,
                                 config.ipv4_prefix, config.ipv6_prefix)
        firewall.ensure_sets()
    except FirewallError as e:
        raise ServiceError(str(e)) from None
    return firewall


def restore_bans(store: BanStore, firewall: Any, events: EventSink, now: float, engine: Engine | None = None) -> int:
    """Bans at start: the state file, plus what the ipset itself still holds (it outlives the
    process, and a crash between two saves); every unexpired one back into the ipset (and the
    engine).  Returns how many were restored; errors are events, never fatal."""
    try:
        store.load(now)
    except StateError as e:
        events.emit({"event": "error", "what": "state", "error": str(e)})
    try:
        for network, left in firewall.bans():
            if network not in store.records and left > 0:
                store.add(BanRecord(network, now + left, "kernel", None, now))
    except FirewallError as e:
        events.emit({"event": "error", "what": "ipset-list", "error": str(e)})
    restored = 0
    for record in store.active(now):
        left = int(record.expires - now)
        if left <= 0:
            continue
        if engine is not None:
            engine.add_ban(record.network, record.expires, record.reason)
        try:
            firewall.ban(record.network, left)
            restored += 1
        except FirewallError as e:
            events.emit({"event": "error", "what": "restore", "network": record.network, "error": str(e)})
    try:
        store.save(now, compact=True)
    except OSError as e:  # a full disk: the bans are enforced; the state writer retries
        events.emit({"event": "error", "what": "state-save", "error": f"{e.strerror or e} (retried)"})
    return restored


def lift_ban(address: str, config: Config, store: BanStore, firewall: Any, logs: Any, events: EventSink,
             now: float, forget: Callable[[str], Any], save: Callable[[], None]) -> dict[str, Any]:
    """``unban`` in a running service: the state, the engines (``forget``), the log policy and
    the kernel set; ``save`` persists the state.  Returns the control socket's reply."""
    network = ban_network_for(address, config.ipv4_prefix, config.ipv6_prefix)
    found = store.remove(network)
    forget(network)
    if logs is not None:
        logs.forget(network)
    try:
        in_kernel = firewall.unban(network)
    except FirewallError as e:
        return {"ok": False, "error": str(e)}
    save()
    events.emit({"event": "unban", "time": round(now, 3), "network": network})
    return {"ok": True, "network": network, "was_banned": found or in_kernel}


def ban_summary(store: BanStore, now: float) -> dict[str, Any]:
    """The ban part of ``status``: how many, by reason, and the newest."""
    active = store.active(now)
    return {"bans_active": len(active), "bans_by_reason": dict(Counter(r.reason for r in active)),
            "recent_bans": recent_bans(active, now)}


def save_bans(store: BanStore, now: float, compact: bool | None, logs: Any, events: EventSink) -> bool:
    """Persist the ban store (and the hosts.deny export of the log sources); a failure is an
    event, never raised.  True if saved."""
    try:
        store.save(now, compact)
        if logs is not None:
            logs.export_hosts_deny(r.network for r in store.active(now))
    except OSError as e:
        events.emit({"event": "error", "what": "state-save", "error": str(e)})
        return False
    return True


def close_control(sock: socket.socket | None, path: str) -> None:
    """Close the control socket and remove its path."""
    if sock is None:
        return
    sock.close()
    try:
        os.unlink(path)
    except OSError:
        pass


def close_shared(firewall: Any, logs: Any, log_file: Any) -> None:
    """Close what both service forms own last: the firewall's netlink sockets, the log
    followers and the event log file."""
    firewall.close()
    if logs is not None:
        logs.close()
    if log_file:
        log_file.close()


def serve_control(sock: socket.socket, handle: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Answer one control-socket request (a JSON line in, a JSON line out)."""
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return
    with conn:
        conn.settimeout(1.0)
        try:
            reply = handle(json.loads(_read_line(conn)))
        except Exception as e:  # noqa: BLE001 - a bad request gets an error reply, never stops the loop
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        try:
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass


def open_sinks(config: Config) -> tuple[list[EventSink], Any]:
    """The event sinks ``[service]`` asks for, and the log file to close at the end."""
    svc = config.service
    sinks: list[EventSink] = []
    log_file = None
    if svc.events == "-":
        sinks.append(JsonLinesSink(sys.stdout))
    elif svc.events:
        path = Path(svc.events)
        policy = files_policy(config.extra)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(policy.open_append(path))
        except OSError as e:
            if e.errno not in DISK_ERRORS:  # a full disk is retried by the writer; a wrong path is not
                raise ServiceError(f"cannot open the event log {path}: {e.strerror or e}") from None
        log_file = EventLog(path, policy, syslog_notifier(svc.syslog))
        sinks.append(log_file)
    if svc.syslog:
        sinks.append(SyslogBans())
    return sinks, log_file


def open_control_socket(path: str, config_extra: dict[str, Any] | None = None) -> socket.socket | None:
    """Listen on the UNIX control socket (a stale one is replaced; a live one is an error)."""
    if not path:
        return None
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(p))
                raise ServiceError(f"another inspector answers on {p}")
            except (ConnectionRefusedError, FileNotFoundError):
                p.unlink()  # a stale socket from a previous run
            finally:
                probe.close()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(p))
        policy = files_policy(config_extra) if config_extra is not None else FilePolicy()
        policy.enforce_path(p, policy.socket_mode)
        sock.listen(8)
        sock.setblocking(False)
        return sock
    except OSError as e:
        raise ServiceError(f"cannot create the control socket {p}: {e}") from None

def make_log_monitor(config: Config, previous: Any = None) -> Any:
    """The log sources of ``[logs]`` (None when there are none)."""
    if not config.logs.sources:
        if previous is not None:
            previous.close()
        return None
    from .logs import LogMonitor

    return LogMonitor(config, previous=previous)


def apply_log_bans(bans: list[Any], now: float, ban: Callable[[str, int, str, str | None, float], bool],
                   events: EventSink, alert: bool) -> bool:
    """Send the log monitor's bans through the one ban pipeline (in alert mode: report them)."""
    for b in bans:
        if alert:
            events.emit({"event": "verdict", "time": round(now, 3), "verdict": "drop", "reason": b.reason,
                         "src": b.network, "rule": b.rule, "match": b.match, "ban": b.seconds, "alert": True})
        else:
            ban(b.network, b.seconds, b.reason, b.rule, now)
    return bool(bans) and not alert


def report_log_failures(logs: Any, last: dict[str, int], now: float, events: EventSink) -> dict[str, int]:
    """Once a minute: the failures each log filter found since the last report (for ``inspector report``)."""
    counts = {k.split(":", 1)[1]: v for k, v in logs.counts.items() if k.startswith("failures:")}
    delta = {k: v - last.get(k, 0) for k, v in counts.items() if v - last.get(k, 0) > 0}
    if delta:
        events.emit({"event": "log-failures", "time": round(now, 3), "counts": delta})
    return counts


def start_metrics(config: Config, status: Callable[[], dict[str, Any]]) -> Any:
    """The Prometheus endpoint, if ``[metrics] listen`` asks for one (off by default)."""
    listen = str(config.extra.get("metrics", {}).get("listen", "") or "")
    if not listen:
        return None
    from .metrics import serve

    def safe() -> dict[str, Any]:
        try:
            return status()
        except RuntimeError:  # a dict changed size under the scrape: report nothing this time
            return {}
    try:
        return serve(listen, safe)
    except (OSError, ValueError) as e:
        raise ServiceError(f"cannot serve metrics on {listen}: {e}") from None


def recent_bans(active: list[BanRecord], now: float, n: int = 5) -> list[dict[str, Any]]:
    """The newest bans, for ``inspector status``: who, why, and for how long still."""
    return [_record_json(r, now) for r in sorted(active, key=lambda r: r.added, reverse=True)[:n]]


def _rules_info(rules: RuleSet, loaded: float) -> dict[str, Any]:
    return {"domains": len(rules.domains), "payload": rules.counts.get("payload", 0),
            "files": [str(f.path) for f in rules.files], "loaded_at": now_iso(loaded), "loaded": loaded}


def _read_line(conn: socket.socket, limit: int = 65536) -> bytes:
    buf = b""
    while b"\n" not in buf and len(buf) < limit:
        chunk = conn.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0]


def _record_json(r: BanRecord, now: float) -> dict[str, Any]:
    return {"network": r.network, "reason": r.reason, "rule": r.rule, "seconds_left": int(r.expires - now),
            "expires_at": now_iso(r.expires)}


def control_request(path: str, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any] | None:
    """Ask a running service; None if none answers on ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        line = _read_line(sock)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    except PermissionError:
        raise NeedsRoot(needs_root_message("cannot ask the running service on", path)) from None
    finally:
        sock.close()
    return json.loads(line) if line else None


DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)


def make_state_writer(store: BanStore, save: Callable[[], bool], notify: Callable[[str], None]) -> StateWriter | None:
    """The thread that saves ``store`` off the packet path (None for a store without a file)."""
    if store.path is None:
        return None
    return StateWriter(save, store, notify)


def notify_disk(config: Config, events: EventSink, message: str) -> None:
    """Report a disk problem: syslog (when ``[service] syslog``) and an ``error`` event."""
    syslog_notifier(config.service.syslog)(message)
    events.emit({"event": "error", "what": "disk", "error": message})


def storage_health(store: BanStore, writer: StateWriter | None, log_file: Any, events: Any) -> dict[str, Any]:
    """The ``storage`` section of ``status``: failed and waiting writes of the ban state and the event log."""
    out: dict[str, Any] = {"state": {**store.health(), **({"failing": writer.health()["failing"]} if writer else {})}}
    if isinstance(log_file, EventLog):
        out["events"] = log_file.health()
    out["sink_errors"] = getattr(events, "errors", 0)
    return out


def run_service(config_path: str | None, rules_path: str | None, overrides: dict[str, Any]) -> int:
    from .workers import Supervisor, detect_queues

    try:
        config, _ = load(config_path, rules_path)
    except (ConfigError, RuleError) as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    workers = overrides.get("workers") or config.service.workers
    if not workers:  # auto: as many as the installed rules spread over (setup-nfqueue.sh --workers)
        found = detect_queues()
        if found is not None and overrides.get("queue") is None:
            overrides = {**overrides, "queue": found[0]}
        workers = found[1] if found is not None else 1
    first = overrides.get("queue") if overrides.get("queue") is not None else config.service.queue
    why = refusal(installed_queues(), first, workers)
    if why:
        print(f"inspector: error: {why}", file=sys.stderr)
        return 1
    service: Service | Supervisor
    service = Supervisor(config_path, rules_path, overrides, workers) if workers > 1 else \
        Service(config_path, rules_path, overrides)
    try:
        service.start()
    except ServiceError as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    queue = overrides.get("queue") if overrides.get("queue") is not None else config.service.queue
    print(f"inspector: running on queue {queue}" + (f"..{queue + workers - 1} ({workers} workers)" if workers > 1
          else "") + f" ({service.config.mode} mode)", file=sys.stderr)
    return service.run()
