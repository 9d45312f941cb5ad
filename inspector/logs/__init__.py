"""Log evidence: failed logins read from daemons' logs, turned into bans.

The stages, like the packet path's::

    follow (FileFollower | JournalFollower)  ->  lines
    filters (LineMatcher: literal, regex, address, time)  ->  Failure
    policy (LogPolicy: maxretry / findtime / bantime, whitelist)  ->  LogBan
    the service: BanPipeline.issue(Ban(network, seconds, reason, rule, "log"), now)

:class:`LogMonitor` puts the first three together for the configured
sources; the service creates one and calls :meth:`LogMonitor.poll` every
tick.  ``inspector scan`` (:mod:`inspector.logs.scan`) runs the same filters
and policy over a whole file, offline.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..nets import Network
from .filters import BUILTIN, NOT_ADDRESS, Failure, Filter, LineMatcher, get_filter, user_filter
from .follow import FileFollower
from .journal import JOURNAL_MISSING, JournalFollower, journal_available
from .policy import Limits, LogBan, LogPolicy, Whitelist, local_addresses, write_hosts_deny
from .settings import LogSettings
from .sources import Place, cursor_path, probe_all, resolve
from .timestamps import TimeParser

__all__ = ["LogMonitor", "LogBan", "Failure", "Limits", "LogPolicy", "Whitelist", "user_filters",
           "local_addresses", "write_hosts_deny", "BUILTIN", "probe_all", "check_lines", "status_lines"]


class MonitorConfig(Protocol):
    """What :class:`LogMonitor` reads of the service's :class:`inspector.config.Config` (a protocol,
    so that this package does not import the config module, which parses its ``[logs]`` section)."""

    @property
    def logs(self) -> LogSettings: ...
    @property
    def whitelist(self) -> tuple[Network, ...]: ...
    @property
    def ipv4_prefix(self) -> int: ...
    @property
    def ipv6_prefix(self) -> int: ...
    @property
    def service(self) -> Any: ...  # ``state_file``: the journal cursors are kept beside it


class Follower(Protocol):
    """A file or journal reader: new lines per poll; ``state`` is "reading", "waiting" or "error"."""

    path: str
    error: str | None

    @property
    def state(self) -> str: ...
    def poll(self) -> list[str]:
        """The lines written since the last poll (without their newlines); never raises for an unreadable log."""
    def stats(self) -> dict[str, Any]:
        """Its part of ``status``: path, state, error and counters."""
    def close(self) -> None:
        """Release the file or journal handle."""


class Unreadable:
    """A source that cannot be read at all (no journal binding, the journal will not open): state "error"."""

    def __init__(self, path: str, error: str) -> None:
        self.path = path
        self.error: str | None = error

    @property
    def state(self) -> str:
        """Always "error"."""
        return "error"

    def poll(self) -> list[str]:
        """Nothing to read: an empty list."""
        return []

    def stats(self) -> dict[str, Any]:
        """Path, state and the error, for ``status``."""
        return {"path": self.path, "state": "error", "error": self.error}

    def close(self) -> None:
        """Nothing to release."""
        pass


@dataclass
class _Source:
    name: str
    matcher: LineMatcher
    limits: Limits


@dataclass
class _Feed:
    """One followed file (or journal query) and the sources that read it (mail.log: postfix and courier)."""

    follower: Follower
    sources: list[_Source]
    place: Place


def user_filters(settings: LogSettings) -> list[Filter]:
    """The ``[[logs.filter]]`` entries as filters."""
    return [user_filter(f.name, f.regex, f.literal) for f in settings.filters]


class LogMonitor:
    """Every configured log source, polled together.

    ``poll(now)`` reads what each source wrote since the last call and
    returns the bans due, in order.  Failures are timed by their log line
    (never later than ``now``), so a backlog read with ``from_start`` counts
    as it happened.  ``local`` are the server's own addresses (default: the
    interfaces'), whitelisted with loopback, the config's ``[whitelist]`` and
    ``[logs] whitelist``.  ``previous``: the monitor this one replaces on a
    reload; its open files (same path) and its counts carry over, so no line
    is lost or read twice across the reload.
    """

    def __init__(self, config: MonitorConfig, local: Iterable[str] | None = None, utc: bool = False,
                 previous: LogMonitor | None = None, cursor_dir: str | Path | None = None) -> None:
        settings = config.logs
        self.settings = settings
        users = user_filters(settings)
        whitelist = Whitelist([*config.whitelist, *settings.whitelist,
                               *(local_addresses() if local is None else local)])
        self.policy = LogPolicy(whitelist, settings.bantime_max, config.ipv4_prefix, config.ipv6_prefix,
                                settings.capacity)
        self.counts: Counter[str] = Counter()
        self.feeds: dict[str, _Feed] = {}
        # journal cursors live beside the ban store (default /var/lib/inspector)
        self.cursor_dir = Path(cursor_dir) if cursor_dir is not None else Path(config.service.state_file).parent
        # a reload keeps the files open where they were, and what the policy counted so far
        kept: dict[str, Follower] = {}
        if previous is not None:
            self.policy.adopt(previous.policy)
            kept = {key: feed.follower for key, feed in previous.feeds.items()
                    if not isinstance(feed.follower, Unreadable)}
            for old in previous.feeds.values():
                if isinstance(old.follower, Unreadable):
                    old.follower.close()
            previous.feeds = {}
        for src in settings.sources:
            place = resolve(src, settings)
            key = place.key
            if key not in self.feeds:
                follower = kept.pop(key, None) or self._open(place, settings.from_start)
                self.feeds[key] = _Feed(follower, [], place)
            feed = self.feeds[key]
            matcher = LineMatcher(get_filter(src.filter, users), TimeParser(utc=utc))
            feed.sources.append(_Source(src.name, matcher, Limits(src.maxretry, src.findtime, src.bantime)))
        for gone in kept.values():
            gone.close()

    def _open(self, place: Place, from_start: bool) -> Follower:
        if place.kind == "file":
            assert place.path is not None
            return FileFollower(place.path, from_start)
        if not journal_available():
            self.counts["journal-unavailable"] += 1
            return Unreadable(place.key, JOURNAL_MISSING)
        try:
            return JournalFollower(place.matches, from_start, place.directory, cursor_path(self.cursor_dir, place))
        except OSError as e:
            self.counts["journal-unavailable"] += 1
            return Unreadable(place.key, f"cannot open the journal: {e.strerror or e}")

    @property
    def sources(self) -> list[_Source]:
        """Every configured source (a file read by two filters counts twice)."""
        return [s for feed in self.feeds.values() for s in feed.sources]

    def poll(self, now: float) -> list[LogBan]:
        """Read every source; return the bans due (an unreadable log is counted, never raised)."""
        bans: list[LogBan] = []
        policy = self.policy
        counts = self.counts
        for feed in self.feeds.values():
            try:
                lines = feed.follower.poll()
            except OSError as e:
                counts["read-errors"] += 1
                counts["read-errors:" + type(e).__name__] += 1
                continue
            if not lines:
                continue
            counts["lines"] += len(lines)
            for src in feed.sources:
                match = src.matcher.match
                for line in lines:
                    hit = match(line, now)
                    if hit is None:
                        continue
                    if hit is NOT_ADDRESS:
                        counts["not-address"] += 1
                        continue
                    assert isinstance(hit, Failure)
                    counts["failures"] += hit.count
                    counts["failures:" + src.name] += hit.count
                    ban = policy.failure(src.name, hit.filter, src.limits, hit.host, min(hit.time, now), line,
                                         hit.count)
                    if ban is not None:
                        bans.append(ban)
        return bans

    def forget(self, network: str) -> None:
        """After an unban: the network starts afresh (no pending count, no repeat-offender doubling)."""
        self.policy.forget(network)

    def export_hosts_deny(self, networks: Iterable[str]) -> int | None:
        """Write the configured hosts.deny export (``[logs] hosts_deny``); None when there is none."""
        if not self.settings.hosts_deny:
            return None
        return write_hosts_deny(self.settings.hosts_deny, networks, self.settings.hosts_deny_daemon)

    def states(self) -> list[dict[str, Any]]:
        """Each followed place: its sources, backend, state ("reading", "waiting", "error") and why."""
        return [{"sources": [s.name for s in feed.sources], "backend": feed.place.kind, "path": feed.follower.path,
                 "state": feed.follower.state, "error": feed.follower.error} for feed in self.feeds.values()]

    def stats(self) -> dict[str, Any]:
        """The ``logs`` part of ``status``: counts, the policy's counts, how many networks are tracked, and each
        followed log with its sources.
        """
        return {"counts": dict(self.counts), "policy": dict(self.policy.counts), "tracked": len(self.policy),
                "logs": [{"sources": [s.name for s in feed.sources], "backend": feed.place.kind,
                          **feed.follower.stats(), "state": feed.follower.state}
                         for feed in self.feeds.values()]}

    def close(self) -> None:
        """Close every followed file and journal."""
        for feed in self.feeds.values():
            feed.follower.close()
        self.feeds = {}


def check_lines(settings: LogSettings) -> list[str]:
    """``inspector check``'s [logs] lines: each source, where it reads, and every one that cannot be read now."""
    lines = []
    problems = {p.source: p for p in probe_all(settings)}
    for src in settings.sources:
        place = resolve(src, settings)
        where = place.path if place.kind == "file" else (
            "journal " + (f"in {place.directory} " if place.directory else "") + " ".join(place.matches))
        lines.append(f"log source {src.name}: filter {src.filter}, backend {src.backend} -> {where}; "
                     f"{src.maxretry} in {src.findtime:g}s -> ban {src.bantime}s")
        p = problems.get(src.name)
        if p is not None:
            lines.append(f"  WARNING: cannot be read now: {p.reason}")
    if problems:
        lines.append(f"log sources that cannot be read now: {len(problems)} of {len(settings.sources)}")
    return lines


def status_lines(stats: dict[str, Any] | None) -> list[str]:
    """``inspector status``'s lines for the log monitor's stats (one per followed file or journal query)."""
    if not stats:
        return []
    out = []
    for feed in stats.get("logs", []):
        err = f": {feed['error']}" if feed.get("error") else ""
        out.append(f"log {feed.get('state', '?'):<8} {feed.get('backend', 'file'):<7} {feed.get('path')} "
                   f"({', '.join(feed.get('sources', []))}){err}")
    return out
