"""Events: a JSON-lines log of what the service did, and one syslog line per ban.

The syslog line has a fixed prefix and the address first after it, so that
fail2ban or a grep picks it up::

    inspector-ban: 198.51.100.7 banned for 86400s reason=domain rule=blocked.test dport=25
"""

from __future__ import annotations

import json
import time
from typing import IO, Any, Protocol

__all__ = ["EventSink", "JsonLinesSink", "MemorySink", "SyslogBans", "BAN_PREFIX", "ban_line"]

BAN_PREFIX = "inspector-ban:"


class EventSink(Protocol):
    """Where events go: one ``emit(event)`` per event, a JSON-ready dict with at least ``event`` (its kind)."""

    def emit(self, event: dict[str, Any]) -> None:
        """Write one event; a sink may raise OSError (the service's fan-out counts and skips it)."""


class JsonLinesSink:
    """One JSON object per line, flushed per event (a file or stdout)."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def emit(self, event: dict[str, Any]) -> None:
        """Write ``event`` as one compact JSON line and flush."""
        self.stream.write(json.dumps(event, separators=(",", ":")) + "\n")
        self.stream.flush()


class MemorySink:
    """Keeps events in a list (tests, replay)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        """Keep ``event``."""
        self.events.append(event)


def ban_line(network: str, seconds: int, reason: str, rule: str | None = None, dport: int | None = None) -> str:
    """The syslog line of a ban (see the module docstring): the prefix, the network, the duration in seconds, the
    reason, and the rule and port when known.
    """
    parts = [BAN_PREFIX, network, f"banned for {seconds}s", f"reason={reason}"]
    if rule:
        parts.append(f"rule={rule}")
    if dport:
        parts.append(f"dport={dport}")
    return " ".join(parts)


class SyslogBans:
    """Writes :func:`ban_line` to syslog (facility auth, level warning)."""

    def __init__(self, ident: str = "inspector") -> None:
        import syslog

        self._syslog = syslog
        syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_AUTH)

    def emit(self, event: dict[str, Any]) -> None:
        """Write a :func:`ban_line` to syslog for a ``ban`` event; other events are ignored."""
        if event.get("event") == "ban":
            self._syslog.syslog(self._syslog.LOG_WARNING, ban_line(
                str(event["network"]), int(event["seconds"]), str(event["reason"]),
                event.get("rule"), event.get("dport")))


def now_iso(ts: float | None = None) -> str:
    """``ts`` (Unix seconds; default: now) as an ISO 8601 UTC time to the second, e.g. ``2026-11-21T13:00:00Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))
