"""A cap on concurrent connections per source (``[connlimit]``), read from conntrack.

The seeds' "No More DDoS" / DDoS Deflate recipe counts ``netstat`` lines per
address every few seconds and bans above 150.  Here, every ``interval``
seconds, the conntrack table is read over netlink
(:mod:`inspector.conntrack_netlink`) for each protected port; ESTABLISHED
connections are counted per source network (the ban network: the address for
IPv4, the /64 for IPv6) and port, only inbound ones (to one of this host's
addresses, or DNAT'ed to a published container port).  A source above the
port's ``limit`` is banned for ``ban`` seconds through the one ban pipeline
(``reason="connlimit"``, ``path="connlimit"``), which refuses whitelisted and
own addresses; whitelisted sources are not even counted against a limit.  A
source banned here is not banned again while its ban runs, even though its
old connections stay in the table.  In alert mode the would-be bans are
reported as ``verdict`` events with ``alert: true``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .conntrack_netlink import IPS_DST_NAT, TCP_ESTABLISHED, Connection, ConntrackDump, ConntrackError
from .packet import format_addr
from .periodic import Periodic

__all__ = ["ConnLimitRule", "ConnLimitSettings", "ConnLimiter", "parse_connlimit", "make_connlimiter",
           "CONNLIMIT_KEYS"]

CONNLIMIT_KEYS: dict[str, type | tuple[type, ...]] = {
    "limit": int, "ban": int, "interval": (int, float), "ports": list, "rules": list,
}


@dataclass(frozen=True)
class ConnLimitRule:
    """More than ``limit`` established connections from one source network to one of ``ports``
    (None: every port the section covers) -> ban for ``ban`` seconds."""

    ports: tuple[int, ...] | None = None
    limit: int = 150
    ban: int = 600


@dataclass(frozen=True)
class ConnLimitSettings:
    """The ``[connlimit]`` section: ``rules`` (most specific first, the section's own last),
    ``ports`` (None: the protected ports), ``interval`` seconds between two reads of conntrack."""

    rules: tuple[ConnLimitRule, ...] = (ConnLimitRule(),)
    ports: tuple[int, ...] | None = None
    interval: float = 10.0

    def rule_for(self, port: int) -> ConnLimitRule:
        """The rule that applies to ``port``."""
        for r in self.rules:
            if r.ports is None or port in r.ports:
                return r
        return self.rules[-1]


def parse_connlimit(table: dict[str, Any], fail: Callable[[str, str | None, str], Exception],
                    port_list: Callable[[Any, Callable[[str], Exception]], list[int]]) -> ConnLimitSettings:
    """Build :class:`ConnLimitSettings` from ``[connlimit]`` (key types already checked;
    ``fail(table, key, message)`` makes the ``file:line`` error; ``port_list`` checks ports)."""

    def bounded(key: str, value: Any, low: float, high: float) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise fail("connlimit", key, f"must be between {low:g} and {high:g}, not {value!r}")
        return value

    base = ConnLimitRule(None, bounded("limit", table.get("limit", 150), 1, 1_000_000),
                         int(bounded("ban", table.get("ban", 600), 1, 2_147_483)))
    rules = []
    for i, extra in enumerate(table.get("rules", [])):
        if not isinstance(extra, dict):
            raise fail("connlimit", "rules", f"entry {i + 1} must be a table like {{ports = [22], limit = 20}}")
        unknown = set(extra) - {"ports", "limit", "ban"}
        if unknown:
            raise fail("connlimit", "rules", f"entry {i + 1}: unknown key {sorted(unknown)[0]!r}")
        if "ports" not in extra:
            raise fail("connlimit", "rules", f"entry {i + 1}: 'ports' is required")

        def entry_fail(message: str, i: int = i) -> Exception:
            return fail("connlimit", "rules", f"entry {i + 1}: {message}")

        rules.append(ConnLimitRule(
            tuple(port_list(extra["ports"], entry_fail)),
            bounded("rules", extra.get("limit", base.limit), 1, 1_000_000),
            int(bounded("rules", extra.get("ban", base.ban), 1, 2_147_483))))
    ports = None
    if "ports" in table:
        ports = tuple(port_list(table["ports"], lambda m: fail("connlimit", "ports", m)))
    interval = float(bounded("interval", table.get("interval", 10), 1, 3600))
    return ConnLimitSettings((*rules, base), ports, interval)


class Pipeline(Protocol):
    """What the limiter needs of :class:`inspector.respond.bans.BanPipeline`."""

    def network(self, address: str) -> str: ...
    def protected(self, network: str) -> str | None: ...
    def issue(self, ban: Any, now: float) -> bool: ...


Dump = Callable[[Collection[int]], list[Connection]]  # ports -> TCP connections to them (both families)


class ConnLimiter:
    """Side component: reads conntrack every ``interval`` seconds, bans sources over the limit.

    ``dump(ports)`` reads the table (:meth:`ConntrackDump.tcp`, a fake in tests);
    ``own`` are this host's addresses (raw bytes; connections to others count only when
    DNAT'ed); ``alert`` reports instead of banning.
    """

    def __init__(self, settings: ConnLimitSettings, ports: Iterable[int], dump: Dump, bans: Pipeline,
                 clock: Callable[[], float], emit: Callable[[dict[str, Any]], None], own: Iterable[bytes] = (),
                 alert: bool = False, ipv6: bool = True, closer: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.closer = closer
        self.ports = tuple(settings.ports or ports)
        self.dump = dump
        self.bans = bans
        self.clock = clock
        self.emit = emit
        self.own = frozenset(own)
        self.alert = alert
        self.ipv6 = ipv6
        self._banned: dict[str, float] = {}  # network -> until when this component's ban runs
        self.polls = 0
        self.errors = 0
        self.last_error: str | None = None
        self.issued = 0
        self.top: list[tuple[str, int, int]] = []  # (network, port, connections): the largest counts, last poll
        self._thread = Periodic("connlimit", settings.interval, self._tick)

    def count(self) -> Counter[tuple[str, int]]:
        """Established inbound connections per (source network, port), over all families and ports."""
        counts: Counter[tuple[str, int]] = Counter()
        network = self.bans.network
        names: dict[bytes, str] = {}
        for c in self.dump(self.ports):
            if c.state != TCP_ESTABLISHED or not (c.dst in self.own or c.status & IPS_DST_NAT):
                continue
            if len(c.src) == 16 and not self.ipv6:
                continue
            name = names.get(c.src)
            if name is None:
                name = names[c.src] = network(format_addr(c.src))
            counts[name, c.dport] += 1
        return counts

    def poll(self, now: float) -> list[str]:
        """One read of the table; returns the networks banned (or reported, in alert mode)."""
        self.polls += 1
        try:
            counts = self.count()
        except (ConntrackError, OSError) as e:
            self.errors += 1
            if str(e) != self.last_error:
                self.emit({"event": "error", "what": "connlimit", "error": str(e)})
            self.last_error = str(e)
            return []
        self.last_error = None
        for net, until in list(self._banned.items()):  # a copy: on_ban may pop from another thread
            if until <= now:
                self._banned.pop(net, None)
        self.top = [(n, p, k) for (n, p), k in counts.most_common(5)]
        acted = []
        for (net, port), n in counts.items():
            rule = self.settings.rule_for(port)
            if n <= rule.limit or net in self._banned:
                continue
            if self.bans.protected(net) is not None:
                continue  # whitelisted or our own: never counted against a limit
            self._banned[net] = now + rule.ban
            text = f"{n} connections to port {port} (limit {rule.limit})"
            if self.alert:
                self.emit({"event": "verdict", "time": round(now, 3), "verdict": "drop", "reason": "connlimit",
                           "src": net, "rule": text, "ban": rule.ban, "dport": port, "alert": True})
            else:
                from .respond.bans import Ban

                if not self.bans.issue(Ban(net, rule.ban, "connlimit", text, "connlimit", dport=port), now):
                    continue
                self.issued += 1
            acted.append(net)
        return acted

    def on_ban(self, kind: str, what: object) -> None:
        """Ban-pipeline listener: a lifted network may be banned here again at the next read."""
        if kind == "unban" and isinstance(what, str):
            self._banned.pop(what, None)

    def _tick(self) -> None:
        try:
            self.poll(self.clock())
        except Exception as e:  # noqa: BLE001 - the poller must outlive a bug; the service goes on
            self.errors += 1
            self.emit({"event": "error", "what": "connlimit", "error": f"{type(e).__name__}: {e}"})

    def start(self) -> None:
        """Poll in a daemon thread every ``interval`` seconds."""
        self._thread.start()

    def close(self) -> None:
        """Stop polling."""
        self._thread.stop(timeout=10)
        if self.closer is not None:
            self.closer()
            self.closer = None

    def status(self) -> dict[str, Any]:
        """The ``connlimit`` section of ``inspector status``."""
        return {"ports": list(self.ports), "interval": self.settings.interval, "polls": self.polls,
                "bans": self.issued, "errors": self.errors, "last_error": self.last_error,
                "limits": {str(p): self.settings.rule_for(p).limit for p in self.ports},
                "top": [{"network": n, "port": p, "connections": k} for n, p, k in self.top]}


def make_connlimiter(config: Any, bans: Any, clock: Callable[[], float],
                     emit: Callable[[dict[str, Any]], None]) -> ConnLimiter:
    """The limiter for a loaded :class:`inspector.config.Config` (its ``connlimit`` set), reading the
    real conntrack table; a table that cannot be read is reported by every poll, never raised."""
    settings: ConnLimitSettings = config.connlimit
    dumper: ConntrackDump | None
    try:
        dumper = ConntrackDump()
    except ConntrackError:
        dumper = None

    def dump(ports: Collection[int]) -> list[Connection]:
        if dumper is None:
            raise ConntrackError(1, "cannot open a ctnetlink socket (needs CAP_NET_ADMIN)")
        return dumper.tcp(ports)

    own = [a.packed for a in getattr(bans, "own", ())]
    return ConnLimiter(settings, config.ports, dump, bans, clock, emit, own, alert=config.alert,
                       closer=dumper.close if dumper is not None else None)
