"""The one ban pipeline: packets, logs, the MTA policy hook, the fleet and manual bans all go through it.

:meth:`BanPipeline.issue` refuses what must never be banned (:func:`inspector.nets.protects`:
loopback, the whitelist, this host's own addresses and /64: a ``ban-refused`` event and a
count), else records the ban in the store first (so a failed kernel add is retried at the next
start), then adds it to the kernel set, then writes the ``ban`` event (and so the syslog line),
then tells the listeners (the engines, the workers, the fleet).  :meth:`BanPipeline.lift` does
the reverse; :meth:`BanPipeline.restore` brings the bans back at start; :meth:`BanPipeline.save`
persists them.  Thread-safe: side components (the policy server, the fleet client) call it from
their own threads.  Time is passed in.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ..bans import BanRecord, BanStore, StateError
from ..events import EventSink
from ..firewall import Firewall, FirewallError
from ..nets import Address, Whitelist, ban_network, protects

__all__ = ["Ban", "BanPipeline", "Listener"]


@dataclass(frozen=True)
class Ban:
    """One ban to issue.  ``network``: ``"203.0.113.7"``, ``"2001:db8:1:2::/64"``, ``"198.51.100.0/28"``;
    ``seconds``: its duration from the ``now`` it is issued at; ``reason``: ``"domain"``,
    ``"payload"``, ``"rate"``, ``"tcp-flags"``, ``"log:<filter>"``, ``"manual"`` ...; ``rule``: what
    matched (a domain, a filter name); ``path``: who acted (``"packet"``, ``"policy"``, ``"log"``,
    ``"manual"``, ``"fleet"``, ``"connlimit"``); ``origin``: the host that issued it (fleet; None:
    this host); ``dport``: the protected port, when a packet decided it."""

    network: str
    seconds: int
    reason: str
    rule: str | None = None
    path: str = "packet"
    origin: str | None = None
    dport: int | None = None


# called after a local issue ("ban", Ban) or lift ("unban", network)
Listener = Callable[[str, "Ban | str"], None]


@dataclass(eq=False)
class BanPipeline:
    """The ban store, the kernel set and the events, kept in step (see the module docstring).

    ``store`` None: this process does not own the store (a worker: the supervisor records the
    bans it reports through a listener).  ``whitelist`` and ``own`` (this host's addresses) feed
    :func:`~inspector.nets.protects`; the prefixes make ban networks (:meth:`network`).
    ``export`` is called with the active networks after every save (the hosts.deny export of the
    log sources).  ``now``: the time of the issue or lift in progress, for listeners that need an
    expiry.  ``dirty``: the store changed since the last save.
    """

    store: BanStore | None
    firewall: Firewall
    events: EventSink
    whitelist: Whitelist | None = None
    own: Iterable[Address] = ()
    ipv4_prefix: int = 32
    ipv6_prefix: int = 64
    counts: Counter[str] = field(default_factory=Counter, init=False)
    dirty: bool = field(default=False, init=False)
    now: float = field(default=0.0, init=False)
    export: Callable[[list[str]], object] | None = field(default=None, init=False)
    _listeners: list[Listener] = field(default_factory=list, init=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, init=False)

    def __post_init__(self) -> None:
        self.own = frozenset(self.own)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener("ban", Ban)`` after every ban issued or recorded here, and
        ``listener("unban", network)`` after every lift.  A listener that raises is reported as
        an ``error`` event; the ban stands."""
        self._listeners.append(listener)

    def network(self, address: str) -> str:
        """The ban network of ``address`` under the configured prefixes (ValueError if not an address)."""
        return ban_network(address, ipv6_prefix=self.ipv6_prefix, ipv4_prefix=self.ipv4_prefix)

    def is_engine_form(self, network: str) -> bool:
        """Is ``network`` what the packet engine bans for its addresses (not a narrowed IPv6
        address, not a manual wider network)?  Only those go into the engines' ban tables."""
        try:
            return self.network(network) == network
        except ValueError:
            return False

    def protected(self, network: str) -> str | None:
        """Why ``network`` must not be banned here, or None (see :func:`inspector.nets.protects`)."""
        return protects(network, self.whitelist, self.own)

    def issue(self, ban: Ban, now: float) -> bool:
        """Ban ``ban.network`` for ``ban.seconds`` from ``now``.  False if refused (protected) or if
        the kernel add failed (the ban stays in the store, to be retried at the next start);
        every outcome is an event.  Never raises."""
        try:
            why = self.protected(ban.network)
        except ValueError:
            why = "not a network"
        if why is not None:
            with self._lock:
                self.counts["ban-refused"] += 1
                self.counts["ban-refused:" + why] += 1
            self.events.emit({"event": "ban-refused", "time": round(now, 3), "network": ban.network,
                              "reason": ban.reason, "rule": ban.rule, "path": ban.path, "protected": why})
            return False
        with self._lock:
            if self.store is not None:
                self.store.add(BanRecord(ban.network, now + ban.seconds, ban.reason, ban.rule, now, ban.origin))
                self.dirty = True
            try:
                self.firewall.ban(ban.network, ban.seconds)
            except Exception as e:  # noqa: BLE001 - a firewall failure is reported, never raised into the loop
                self.counts["errors:ban"] += 1
                self.events.emit({"event": "error", "what": "ban", "error": f"{type(e).__name__}: {e}",
                                  "network": ban.network})
                return False
            self.counts["bans"] += 1
            self.events.emit({"event": "ban", "time": round(now, 3), "network": ban.network, "seconds": ban.seconds,
                              "reason": ban.reason, "rule": ban.rule, "dport": ban.dport, "path": ban.path,
                              **({"origin": ban.origin} if ban.origin else {})})
            self._tell("ban", ban, now)
        return True

    def record(self, ban: Ban, now: float) -> None:
        """A ban a worker already issued (kernel set, event): store it and tell the listeners."""
        with self._lock:
            if self.store is not None:
                self.store.add(BanRecord(ban.network, now + ban.seconds, ban.reason, ban.rule, now, ban.origin))
                self.dirty = True
            self._tell("ban", ban, now)

    def lift(self, network: str, now: float, path: str = "manual") -> bool:
        """Lift the ban of ``network`` (a ban network, see :meth:`network`): the store, the
        listeners (engines, log policy), the kernel set, then an ``unban`` event and a compacting
        save.  True if it was banned anywhere.  Raises FirewallError if the kernel set cannot be
        changed (the store and the engines are already lifted then)."""
        with self._lock:
            found = self.store.remove(network) if self.store is not None else False
            self.dirty = True
            self._tell("unban", network, now)
            in_kernel = self.firewall.unban(network)
        self.save(now, compact=True)  # outside the lock: bans go on while the file is rewritten
        self.events.emit({"event": "unban", "time": round(now, 3), "network": network, "path": path})
        return found or in_kernel

    def _tell(self, kind: str, what: Ban | str, now: float) -> None:
        self.now = now
        for listener in self._listeners:
            try:
                listener(kind, what)
            except Exception as e:  # noqa: BLE001 - a listener's failure must not undo the ban
                self.counts["errors:listener"] += 1
                self.events.emit({"event": "error", "what": "ban-listener", "error": f"{type(e).__name__}: {e}"})

    def restore(self, now: float) -> int:
        """Bans at start: the state file, plus what the kernel set still holds (it outlives the
        process, and a crash between two saves); every unexpired one back into the kernel set.
        Returns how many were restored; errors are events, never raised."""
        store = self.store
        if store is None:
            return 0
        with self._lock:
            try:
                store.load(now)
            except StateError as e:
                self.events.emit({"event": "error", "what": "state", "error": str(e)})
            try:
                for network, left in self.firewall.bans():
                    if network not in store.records and left > 0:
                        store.add(BanRecord(network, now + left, "kernel", None, now))
            except FirewallError as e:
                self.events.emit({"event": "error", "what": "ipset-list", "error": str(e)})
            restored = 0
            for record in store.active(now):
                left = int(record.expires - now)
                if left <= 0:
                    continue
                try:
                    self.firewall.ban(record.network, left)
                    restored += 1
                except FirewallError as e:
                    self.events.emit({"event": "error", "what": "restore", "network": record.network,
                                      "error": str(e)})
            self.save(now, compact=True)
        return restored

    def snapshot(self, now: float) -> list[tuple[str, float, str]]:
        """The active bans as ``(network, expires, reason)`` for an engine's ban table
        (engine-form networks only, see :meth:`is_engine_form`)."""
        if self.store is None:
            return []
        with self._lock:
            active = self.store.active(now)
        return [(r.network, r.expires, r.reason) for r in active if self.is_engine_form(r.network)]

    def active(self, now: float) -> list[BanRecord]:
        """The unexpired bans of the store, soonest expiry first."""
        if self.store is None:
            return []
        with self._lock:
            return self.store.active(now)

    def save(self, now: float, compact: bool | None = None) -> bool:
        """Persist the store (journal append, or a rewrite when ``compact``; see
        :class:`~inspector.bans.BanStore`) and run ``export``.  A failure is an ``error`` event,
        never raised.  True if saved."""
        if self.store is None:
            return True
        # not under the pipeline's lock: a save runs in the state writer's thread and may wait on
        # the disk, while issue() goes on (the store has its own locks and keeps what fails)
        self.dirty = False
        try:
            self.store.save(now, compact)
            if self.export is not None:
                self.export([r.network for r in self.store.active(now)])
        except OSError as e:
            self.dirty = True
            self.events.emit({"event": "error", "what": "state-save", "error": str(e)})
            return False
        return True
