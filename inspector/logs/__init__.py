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
from typing import TYPE_CHECKING, Any, Protocol

from .filters import BUILTIN, NOT_ADDRESS, Failure, Filter, LineMatcher, TimeParser, get_filter, user_filter
from .follow import FileFollower, JournalFollower, journal_available
from .policy import Limits, LogBan, LogPolicy, Whitelist, local_addresses, write_hosts_deny

if TYPE_CHECKING:
    from ..config import Config, LogSettings

__all__ = ["LogMonitor", "LogBan", "Failure", "Limits", "LogPolicy", "Whitelist", "user_filters",
           "local_addresses", "write_hosts_deny", "BUILTIN"]


class Follower(Protocol):
    path: str

    def poll(self) -> list[str]: ...
    def stats(self) -> dict[str, Any]: ...
    def close(self) -> None: ...


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


def user_filters(settings: LogSettings) -> list[Filter]:
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

    def __init__(self, config: Config, local: Iterable[str] | None = None, utc: bool = False,
                 previous: LogMonitor | None = None) -> None:
        settings = config.logs
        self.settings = settings
        users = user_filters(settings)
        whitelist = Whitelist([*config.whitelist, *settings.whitelist,
                               *(local_addresses() if local is None else local)])
        self.policy = LogPolicy(whitelist, settings.bantime_max, config.ipv4_prefix, config.ipv6_prefix,
                                settings.capacity)
        self.counts: Counter[str] = Counter()
        self.feeds: dict[str, _Feed] = {}
        # a reload keeps the files open where they were, and what the policy counted so far
        kept: dict[str, Follower] = {}
        if previous is not None:
            self.policy.adopt(previous.policy)
            kept = {key: feed.follower for key, feed in previous.feeds.items()}
            previous.feeds = {}
        for src in settings.sources:
            key = src.path if src.path else "journal:" + ",".join(src.journal)
            feed = self.feeds.get(key)
            if feed is None:
                follower: Follower
                if key in kept:
                    follower = kept.pop(key)
                elif src.journal:
                    if not journal_available():
                        self.counts["journal-unavailable"] += 1
                        continue
                    follower = JournalFollower(src.journal, settings.from_start)
                else:
                    assert src.path is not None
                    follower = FileFollower(src.path, settings.from_start)
                feed = self.feeds[key] = _Feed(follower, [])
            matcher = LineMatcher(get_filter(src.filter, users), TimeParser(utc=utc))
            feed.sources.append(_Source(src.name, matcher, Limits(src.maxretry, src.findtime, src.bantime)))
        for gone in kept.values():
            gone.close()

    @property
    def sources(self) -> list[_Source]:
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

    def stats(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "policy": dict(self.policy.counts), "tracked": len(self.policy),
                "logs": [{"sources": [s.name for s in feed.sources], **feed.follower.stats()}
                         for feed in self.feeds.values()]}

    def close(self) -> None:
        for feed in self.feeds.values():
            feed.follower.close()
        self.feeds = {}
