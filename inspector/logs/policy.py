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
import json
import socket
import struct
import subprocess
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache

from ..fsutil import atomic_write

__all__ = ["Limits", "LogBan", "LogPolicy", "Whitelist", "ban_network", "hosts_deny_lines",
           "local_addresses", "write_hosts_deny", "MAX_BAN", "MATCH_MAX"]

MAX_BAN = 2_147_483  # ipset's largest timeout, seconds
MATCH_MAX = 512  # characters of the log line kept with a ban
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


@dataclass(frozen=True)
class Limits:
    """``maxretry`` failures within ``findtime`` seconds → ban for ``bantime`` (0: report only)."""

    maxretry: int = 5
    findtime: float = 600.0
    bantime: int = 86400


@dataclass(frozen=True, slots=True)
class LogBan:
    """A ban the policy decided; the service hands it to ``Runner.ban``."""

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
        return {"network": self.network, "seconds": self.seconds, "reason": self.reason, "rule": self.rule,
                "host": self.host, "time": round(self.time, 6), "failures": self.failures,
                "offense": self.offense, "source": self.source, "match": self.match}


def ban_network(host: str, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """The ban network of an address, written like the packet engine's (``a.b.c.d`` or ``x::/64``)."""
    addr = ipaddress.ip_address(host)
    prefix = ipv4_prefix if addr.version == 4 else ipv6_prefix
    if prefix == addr.max_prefixlen:
        return str(addr)
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


class Whitelist:
    """Loopback, always; plus the given networks and addresses."""

    def __init__(self, networks: Iterable[Network | str] = ()) -> None:
        nets: list[Network] = list(LOOPBACK)
        for n in networks:
            net = n if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else \
                ipaddress.ip_network(str(n), strict=False)
            if net not in nets:
                nets.append(net)
        self.networks = tuple(nets)
        self._v4 = tuple(n for n in nets if n.version == 4)
        self._v6 = tuple(n for n in nets if n.version == 6)
        self._known: dict[str, bool] = {}  # a cache, emptied when full

    def overlaps(self, network: str) -> bool:
        net = ipaddress.ip_network(network, strict=False)
        return any(net.overlaps(n) for n in (self._v4 if net.version == 4 else self._v6))  # type: ignore[arg-type]

    def __contains__(self, host: str) -> bool:
        known = self._known.get(host)
        if known is None:
            addr = ipaddress.ip_address(host)
            nets = self._v4 if addr.version == 4 else self._v6
            known = any(addr in n for n in nets)
            if len(self._known) >= 65536:
                self._known.clear()
            self._known[host] = known
        return known


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
            net = ban_network(host, self.ipv4_prefix, self.ipv6_prefix)
            if "/" in net and self.whitelist.overlaps(net):
                net = host
            if len(self._networks) >= 65536:
                self._networks.clear()
            self._networks[host] = net
        return net

    def is_whitelisted(self, host: str) -> bool:
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


# -- the server's own addresses -------------------------------------------------------

def local_addresses() -> list[str]:
    """The addresses of this host's interfaces (best effort, never raises).

    ``ip -j addr`` when iproute2 is there; else IPv4 per interface with
    SIOCGIFADDR and IPv6 from /proc/net/if_inet6; plus, in any case, the
    source address the kernel would use towards the Internet (a UDP
    ``connect()``, which sends nothing).
    """
    found: list[str] = []
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5, check=True)
        for link in json.loads(out.stdout):
            for info in link.get("addr_info", []):
                if info.get("local"):
                    found.append(info["local"])
    except (OSError, ValueError, subprocess.SubprocessError):
        found.extend(_ioctl_v4())
        found.extend(_proc_v6())
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                found.append(s.getsockname()[0])
        except OSError:
            pass
    out_list: list[str] = []
    for a in found:
        try:
            text = str(ipaddress.ip_address(a.split("%", 1)[0]))
        except ValueError:
            continue
        if text not in out_list:
            out_list.append(text)
    return out_list


def _ioctl_v4() -> list[str]:
    import fcntl

    out = []
    try:
        names = socket.if_nameindex()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in names:
                try:
                    req = struct.pack("256s", name.encode()[:15])
                    res = fcntl.ioctl(s.fileno(), 0x8915, req)  # SIOCGIFADDR
                    out.append(socket.inet_ntoa(res[20:24]))
                except OSError:
                    continue
    except OSError:
        pass
    return out


def _proc_v6() -> list[str]:
    out = []
    try:
        with open("/proc/net/if_inet6") as f:
            for row in f:
                h = row.split()[0]
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(h))))
    except (OSError, ValueError, IndexError):
        pass
    return out


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
