"""``inspector run``: the inline service, in one process or as a supervisor with workers.

The parts, each a module:

* :mod:`.loop` -- the select loop of every service process, and :class:`~.loop.PacketLoop`:
  an NFQUEUE's packets through the :class:`~inspector.runner.Runner`;
* :mod:`.packets` -- what a packet process holds: config, rules, engine, runner, queue, reload;
* :mod:`.host` -- what the process that owns the ban store holds: events, firewall, the
  :class:`~inspector.respond.bans.BanPipeline`, the control socket, log sources, metrics, and
  the side components (policy server, fleet client ...) registered with it;
* :mod:`.components` -- the side components the config enables, wired in one place;
* :mod:`.single` -- one process: a host and a packet loop together;
* :mod:`.worker` and :mod:`.supervisor` -- one packet process per queue, one host.

The mode is chosen by :func:`inspector.cli.run_service`.
"""

from __future__ import annotations

import errno
import os
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from ..bans import BanRecord
from ..config import Config, ConfigError, load_config
from ..events import EventSink, JsonLinesSink, SyslogBans, now_iso
from ..persist import EventLog, syslog_notifier
from ..rules import RuleError, RuleSet, load_rules

__all__ = ["ServiceError", "Component", "Fanout", "Inputs", "apply_overrides", "open_sinks", "rules_info",
           "record_json", "ban_summary", "SAVE_EVERY"]

SAVE_EVERY = 1.0  # seconds between ban-state saves (when there is something new)


class ServiceError(Exception):
    """The service cannot start; the message says why and what to do."""


class Component(Protocol):
    """A side component of the process that owns the ban store (policy server, fleet client,
    connlimit poller, notifier): started after the bans are restored, closed before they are
    saved for the last time; ``status()`` is its section of ``inspector status``.  It may call
    :meth:`inspector.respond.bans.BanPipeline.issue` from its own thread."""

    def start(self) -> None:
        """Start (its own thread, socket ...); raise ServiceError if it cannot."""
    def close(self) -> None:
        """Stop and release what it holds; never raises."""
    def status(self) -> dict[str, Any]:
        """Its section of ``inspector status`` (JSON-ready)."""


class Fanout:
    """An event sink writing to several; a failing sink (a full disk) is skipped, never raised.
    Thread-safe: one event is written whole before the next."""

    def __init__(self, sinks: list[EventSink]) -> None:
        self.sinks = sinks
        self._lock = threading.Lock()
        self.errors = 0  # events a sink failed to take (counted, shown in status; never raised)

    def emit(self, event: dict[str, Any]) -> None:
        """Write ``event`` to every sink."""
        with self._lock:
            for sink in self.sinks:
                try:
                    sink.emit(event)
                except Exception:  # noqa: BLE001 - a full disk must not stop verdicts: counted
                    self.errors += 1


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Command-line flags (``alert``, ``queue``, ``ban_time``) win over the config file."""
    if overrides.get("alert"):
        config = replace(config, mode="alert")
    if overrides.get("queue") is not None:
        config = replace(config, service=replace(config.service, queue=overrides["queue"]))
    if overrides.get("ban_time") is not None:
        t = int(overrides["ban_time"])
        config = replace(config, ban_domain=t, ban_payload=t, rates=tuple(replace(r, ban=t) for r in config.rates))
    return config


@dataclass(frozen=True)
class Inputs:
    """Where a service process reads its config and rules: the files (None: the defaults) and the
    command-line ``overrides`` (``alert``, ``queue``, ``ban_time``).  Loaded at start and again
    on every reload."""

    config_path: str | None
    rules_path: str | None
    overrides: dict[str, Any] = field(default_factory=dict)

    def load_config(self) -> Config:
        """The config with the overrides applied; raises ConfigError naming ``file:line``."""
        return apply_overrides(load_config(self.config_path, self.rules_path), self.overrides)

    def load(self) -> tuple[Config, RuleSet]:
        """Config and rules; raises ServiceError naming the bad input."""
        try:
            config = self.load_config()
            return config, load_rules(config.rules)
        except (ConfigError, RuleError) as e:
            raise ServiceError(str(e)) from None


DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)  # retried, never fatal at start


def open_sinks(config: Config) -> tuple[list[EventSink], EventLog | None]:
    """The event sinks ``[service]`` asks for, and the event log to close at the end (an
    :class:`~inspector.persist.EventLog`: written from its own thread, a full disk retried).
    Raises ServiceError when the event log cannot be opened for another reason (a wrong path)."""
    svc = config.service
    sinks: list[EventSink] = []
    log_file = None
    if svc.events == "-":
        sinks.append(JsonLinesSink(sys.stdout))
    elif svc.events:
        path = Path(svc.events)
        policy = config.files
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.close(policy.open_append(path))
        except OSError as e:
            if e.errno not in DISK_ERRORS:
                raise ServiceError(f"cannot open the event log {path}: {e.strerror or e}") from None
        log_file = EventLog(path, policy, syslog_notifier(svc.syslog))
        sinks.append(log_file)
    if svc.syslog:
        sinks.append(SyslogBans())
    return sinks, log_file


def rules_info(rules: RuleSet, loaded: float) -> dict[str, Any]:
    """The rules part of ``status``: counts, files, when they were loaded (seconds and ISO)."""
    return {"domains": len(rules.domains), "payload": rules.counts.get("payload", 0),
            "files": [str(f.path) for f in rules.files], "loaded_at": now_iso(loaded), "loaded": loaded}


def record_json(r: BanRecord, now: float) -> dict[str, Any]:
    """One ban as ``inspector bans`` shows it."""
    return {"network": r.network, "reason": r.reason, "rule": r.rule, "seconds_left": int(r.expires - now),
            "expires_at": now_iso(r.expires), "origin": r.origin}


def ban_summary(active: list[BanRecord], now: float, newest: int = 5) -> dict[str, Any]:
    """The ban part of ``status``: how many, by reason, and the newest."""
    recent = sorted(active, key=lambda r: r.added, reverse=True)[:newest]
    return {"bans_active": len(active), "bans_by_reason": dict(Counter(r.reason for r in active)),
            "recent_bans": [record_json(r, now) for r in recent]}
