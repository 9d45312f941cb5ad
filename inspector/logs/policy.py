"""Log policy: failures in, ban decisions out (fail2ban's maxretry / findtime / bantime).

More than ``maxretry - 1`` failures from one network within ``findtime``
seconds, i.e. the ``maxretry``-th, bans it for ``bantime``.  A network banned
again gets twice the previous ban, up to ``bantime_max`` (never above ipset's
2,147,483 s); it is forgotten once it has stayed quiet for ``bantime_max``
after its last ban ended.  Failures from a network while its ban runs are
counted, not re-banned.

The network is what the packet engine bans: the IPv4 address (/32 by
default) or the IPv6 /64, written as :meth:`inspector.engine.Engine.ban_network`
writes it, so a log ban and a packet ban of the same source are one entry --
except that a prefix holding a whitelisted address narrows to the address.

The whitelist always holds loopback (a webmail's IMAP attempts come from
127.0.0.1) and the server's own addresses; configured CIDRs (crawlers) add to
it.  Memory is bounded by LRU caches.  Time is passed in.

:func:`write_hosts_deny` exports bans for daemons that only read TCP wrappers.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache

from ..fsutil import atomic_write
from ..nets import Whitelist, ban_network, local_addresses

__all__ = ["Limits", "LogBan", "LogPolicy", "Whitelist", "ban_network", "hosts_deny_lines",
           "local_addresses", "write_hosts_deny", "MAX_BAN", "MATCH_MAX"]

MAX_BAN = 2_147_483  # ipset's largest timeout, seconds
MATCH_MAX = 512  # characters of the log line kept with a ban


@dataclass(frozen=True)
class Limits:
    """``maxretry`` failures within ``findtime`` seconds → ban for ``bantime`` (0: report only)."""

    maxretry: int = 5
    findtime: float = 600.0
    bantime: int = 86400


@dataclass(frozen=True, slots=True)
class LogBan:
    """A ban the policy decided; the service issues it through ``BanPipeline.issue``."""

    network: str
    seconds: int
    reason: str  # "log:<filter>"
    rule: str  # the filter name
    match: str  # the log line that completed the count (truncated)
    host: str
    time: float
    failures: int  # failures in the window that led to it
    offense: int  # 1 for a first ban, 2 for the next (twice as long) ...
    source: str = ""

    def as_dict(self) -> dict[str, object]:
        """The ban as JSON-ready data (``inspector scan`` output, events)."""
        return {"network": self.network, "seconds": self.seconds, "reason": self.reason, "rule": self.rule,
                "host": self.host, "time": round(self.time, 6), "failures": self.failures,
                "offense": self.offense, "source": self.source, "match": self.match}


class LogPolicy:
    """Counts failures per (source, network); returns a :class:`LogBan` when one is due."""

    def __init__(self, whitelist: Whitelist, bantime_max: int = 604800, ipv4_prefix: int = 32,
                 ipv6_prefix: int = 64, capacity: int = 100_000) -> None:
        self.whitelist = whitelist
        self.bantime_max = min(int(bantime_max), MAX_BAN)
        self.ipv4_prefix = ipv4_prefix
        self.ipv6_prefix = ipv6_prefix
        # (source, network) -> times of the recent failures (at most maxretry of them)
        self._windows: LRUCache[tuple[str, str], tuple[float, ...]] = LRUCache(maxsize=capacity)
        # network -> (bans so far, when the last one ends)
        self._history: LRUCache[str, tuple[int, float]] = LRUCache(maxsize=capacity)
        self._networks: dict[str, str] = {}  # a cache, emptied when full
        self.counts: Counter[str] = Counter()

    def network(self, host: str) -> str:
        """What a ban of ``host`` covers: its prefix, or the address alone when that
        prefix holds a whitelisted address (a shared hosting /64, say)."""
        net = self._networks.get(host)
        if net is None:
            net = ban_network(host, ipv6_prefix=self.ipv6_prefix, ipv4_prefix=self.ipv4_prefix)
            if "/" in net and self.whitelist.overlaps(net):
                net = host
            if len(self._networks) >= 65536:
                self._networks.clear()
            self._networks[host] = net
        return net

    def is_whitelisted(self, host: str) -> bool:
        """Is ``host`` (an address, text) in the policy's whitelist?"""
        return host in self.whitelist

    def failure(self, source: str, rule: str, limits: Limits, host: str, now: float, line: str = "",
                count: int = 1) -> LogBan | None:
        """Record ``count`` failures of ``host`` seen at ``now`` in ``source``; a ban if one is due."""
        self.counts["failures"] += count
        if host in self.whitelist:
            self.counts["whitelisted"] += count
            return None
        net = self.network(host)
        history = self._history.get(net)
        if history is not None:
            offenses, until = history
            if now < until:
                self.counts["while-banned"] += count
                return None
            if now >= until + self.bantime_max:
                history = None  # quiet long enough: a fresh start
        key = (source, net)
        horizon = now - limits.findtime
        recent = tuple(t for t in self._windows.get(key, ()) if t > horizon) + (now,) * min(count, limits.maxretry)
        if len(recent) < limits.maxretry or limits.bantime <= 0:
            self._windows[key] = recent[-limits.maxretry:]
            if limits.bantime <= 0 and len(recent) >= limits.maxretry:
                self.counts["over-limit-no-ban"] += 1
            return None
        self._windows.pop(key, None)
        offense = (history[0] if history else 0) + 1
        seconds = limits.bantime * 2 ** min(offense - 1, 32)
        seconds = int(min(seconds, max(self.bantime_max, limits.bantime), MAX_BAN))
        self._history[net] = (offense, now + seconds)
        self.counts["bans"] += 1
        return LogBan(net, seconds, f"log:{rule}", rule, line[:MATCH_MAX], host, now, len(recent), offense, source)

    def adopt(self, other: LogPolicy) -> None:
        """Take over ``other``'s counts and repeat offenders (a config reload keeps them)."""
        if (other.ipv4_prefix, other.ipv6_prefix) != (self.ipv4_prefix, self.ipv6_prefix):
            return  # counted per other networks: start afresh
        for key, times in other._windows.items():
            self._windows[key] = times
        for net, history in other._history.items():
            self._history[net] = history

    def forget(self, network: str) -> None:
        """Drop what is known about ``network`` (after ``inspector unban``)."""
        self._history.pop(network, None)
        for key in [k for k in self._windows if k[1] == network]:
            self._windows.pop(key, None)

    def __len__(self) -> int:
        return len(self._windows) + len(self._history)


# -- hosts.deny export ------------------------------------------------------------------

def hosts_deny_lines(networks: Iterable[str], daemon: str = "ALL") -> list[str]:
    """hosts_access(5) lines: ``ALL: 203.0.113.5``, ``ALL: [2001:db8:1::]/64``.

    With ``daemon=""`` the bare patterns, for a file named from hosts.deny as
    ``sshd: /etc/hosts.deny.inspector`` (the seed's ``SSHD: /root/badip.txt``).
    """
    lines = []
    for n in networks:
        net = ipaddress.ip_network(n, strict=False)
        if net.version == 4:
            pattern = str(net.network_address) if net.prefixlen == 32 else f"{net.network_address}/{net.netmask}"
        else:
            pattern = f"[{net.network_address}]" + ("" if net.prefixlen == 128 else f"/{net.prefixlen}")
        lines.append(f"{daemon}: {pattern}" if daemon else pattern)
    return lines


def write_hosts_deny(path: str | Path, networks: Iterable[str], daemon: str = "ALL") -> int:
    """Replace ``path`` atomically with one line per banned network; return how many."""
    p = Path(path)
    nets = sorted({ipaddress.ip_network(n, strict=False) for n in networks},
                  key=lambda n: (n.version, n.network_address, n.prefixlen))
    lines = hosts_deny_lines((str(n) for n in nets), daemon)
    text = "# written by inspector: active bans, replaced on every change\n" + "".join(x + "\n" for x in lines)
    atomic_write(p, text, mode=0o644, encoding="ascii")
    return len(lines)
