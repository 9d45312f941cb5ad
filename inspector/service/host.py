"""What the process that owns the ban store holds (the single-process service, or the supervisor).

* the event sinks, the ipset firewall, and the :class:`~inspector.respond.bans.BanPipeline`
  over the ban store: bans restored at start (state file and kernel set), saved every second
  when something changed, and at the end;
* the control socket (``bans``, ``unban``, ``status``; more handlers can be registered);
* the log sources (``[logs]``), polled on the loop, their bans issued through the pipeline;
* the Prometheus endpoint (``[metrics] listen``);
* the side components (:class:`~inspector.service.Component`: the policy server, the fleet
  client, ...): those the config enables (:func:`.components.configured`) and any given with
  :meth:`Host.add_component` before :meth:`Host.start`; they are started after the bans are
  restored and closed before the last save, and ``status`` shows their sections.
"""

from __future__ import annotations

import ipaddress
import os
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..bans import BanStore
from ..config import Config
from ..control import ControlError, ControlServer
from ..events import EventSink
from ..firewall import Firewall, FirewallError, IpsetFirewall, SetNames
from ..fleet import attach_fleet
from ..kernel_whitelist import merge_kernel_whitelist
from ..manual import ban_form, manual_ban_handler
from ..nets import Address, Network, Whitelist, own_addresses
from ..persist import EventLog, StateWriter, syslog_notifier
from ..respond.bans import Ban, BanPipeline
from ..rules import RuleSet
from ..sources.nfqueue import queue_stats
from . import Component, Fanout, ServiceError, ban_summary, open_sinks, record_json
from .components import configured
from .loop import Loop

__all__ = ["Host", "open_firewall", "make_log_monitor", "WHITELIST_REFRESH"]

WHITELIST_REFRESH = 30.0  # seconds between two reads of the kernel's whitelist sets

PacketStatus = Callable[[float], dict[str, Any]]


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


def make_log_monitor(config: Config, previous: Any = None) -> Any:
    """The log sources of ``[logs]`` (None when there are none; ``previous`` is closed then)."""
    if not config.logs.sources:
        if previous is not None:
            previous.close()
        return None
    from ..logs import LogMonitor

    return LogMonitor(config, previous=previous)


def _covers(wide: ipaddress.IPv4Network | ipaddress.IPv6Network,
            narrow: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    return wide.version == narrow.version and wide.prefixlen <= narrow.prefixlen and \
        narrow.network_address in wide


class Host:
    """The ban-store owner's parts; see the module docstring.

    ``firewall``, ``events`` and ``own`` (this host's addresses) may be given (tests pass fakes);
    by default they are opened from ``config``.  ``packet_status(now)`` gives the packet side of
    ``status`` (``queue``, ``workers``, ``packets``, ``counts``, ``live``, ``rules``, ``reloads``
    ...).
    """

    def __init__(self, config: Config, clock: Callable[[], float], loop: Loop,
                 firewall: Firewall | None = None, events: EventSink | None = None,
                 own: Iterable[Address] | None = None, store: BanStore | None = None) -> None:
        self.config = config
        self.clock = clock
        self.loop = loop
        self.log_file: Any = None  # the EventLog of [service] events (inspector.persist)
        if events is None:
            sinks, self.log_file = open_sinks(config)
            events = Fanout(sinks)
        self.events = events
        self.firewall: Firewall = firewall if firewall is not None else open_firewall(config)
        # the one whitelist: the config's and the kernel's whitelist sets (setup-nfqueue.sh)
        config = self.config = merge_kernel_whitelist(config, self.firewall, events)
        if store is None:
            store = BanStore(Path(config.service.state_file), config.files)
        self.store = store
        self.bans = BanPipeline(store, self.firewall, events, Whitelist(config.whitelist),
                                own_addresses() if own is None else own, config.ipv4_prefix, config.ipv6_prefix)
        self.bans.export = self._export
        self.bans.add_listener(self._forget_in_logs)
        self.control = ControlServer()
        self.control.register_stream("bans", self._bans)
        self.control.register("unban", self._unban)
        self.control.register("ban", manual_ban_handler(self.bans, clock))
        self.control.add_status("", self._status)
        self.control.add_status("storage", self._storage)
        self.state_writer: StateWriter | None = None
        self.components: dict[str, Component] = {}
        self.packet_status: PacketStatus = lambda now: {}
        # the whole whitelist to the packet engines, when [whitelist] files/hosts change it (set by the service form)
        self.to_packets: Callable[[tuple[Network, ...]], None] = lambda networks: None
        self.rules: RuleSet | None = None  # the packet side's rules, when in this process (shared, not loaded twice)
        self.logs: Any = None
        self.metrics: Any = None
        self.started = clock()
        self.restored = 0
        self._log_counts: dict[str, int] = {}
        attach_fleet(self)  # [fleet]: off by default, then nothing is imported or started

    def add_component(self, name: str, component: Component) -> None:
        """Run ``component`` beside the loop; its ``status()`` becomes the ``name`` section of ``status``."""
        self.components[name] = component
        self.control.add_status(name, component.status)

    def start(self) -> None:
        """Restore the bans, listen on the control socket, open the log sources, start the timers,
        the components and the metrics endpoint.  Raises ServiceError."""
        config = self.config
        for name, component in configured(config, self.bans, self.events, self.control, self.clock,
                                          self.rules, lambda networks: self.to_packets(networks)).items():
            self.add_component(name, component)
        self.restored = self.bans.restore(self.clock())
        try:
            self.control.listen(config.service.control_socket, config.files)
        except ControlError as e:
            raise ServiceError(str(e)) from None
        self.control.start()  # its own thread: a slow local client never holds the packet path
        self.logs = make_log_monitor(config)
        self.loop.every(self._log_interval, self._poll_logs, first=0.0)
        self.loop.every(WHITELIST_REFRESH, self._refresh_whitelist)
        if self.store.path is not None:  # saved from its own thread: the packet path never waits on disk
            self.state_writer = StateWriter(lambda: self.bans.save(self.clock()), self.store, self.notify_disk,
                                            self.clock)
        for component in self.components.values():
            component.start()
        self.metrics = self._start_metrics()

    # -- bans -------------------------------------------------------------------------

    def _export(self, networks: list[str]) -> None:
        if self.logs is not None:
            self.logs.export_hosts_deny(networks)

    def _forget_in_logs(self, kind: str, what: Ban | str) -> None:
        if kind == "unban" and self.logs is not None:
            self.logs.forget(what)

    def _refresh_whitelist(self, now: float) -> None:
        """Take entries added to the kernel's whitelist sets since (``ipset add inspector-white4 ...``)
        into the one whitelist: the ban pipeline and the log policy (the kernel already RETURNs them
        before any ban; the engine never sees them)."""
        merged = merge_kernel_whitelist(self.config, self.firewall, self.events)
        if set(merged.whitelist) != set(self.config.whitelist):
            self.reload_logs(merged)
            self.events.emit({"event": "whitelist", "time": round(now, 3),
                              "networks": [str(n) for n in merged.whitelist]})

    def notify_disk(self, message: str) -> None:
        """A write to disk failed (or works again): syslog (``[service] syslog``) and an ``error`` event."""
        syslog_notifier(self.config.service.syslog)(message)
        self.events.emit({"event": "error", "what": "disk", "error": message})

    def _storage(self) -> dict[str, Any]:
        """The ``storage`` section of ``status``: failed and waiting writes of the ban state and event log."""
        out: dict[str, Any] = {"state": {**self.store.health(), "failing": bool(
            self.state_writer is not None and self.state_writer.health()["failing"])}}
        if isinstance(self.log_file, EventLog):
            out["events"] = self.log_file.health()
        out["sink_errors"] = getattr(self.events, "errors", 0)
        return out

    def _log_interval(self) -> float:
        """Seconds between two polls of the log sources (1 s while there are none)."""
        return float(self.config.logs.poll_interval) if self.logs is not None else 1.0

    def _poll_logs(self, now: float) -> None:
        logs = self.logs
        if logs is None:
            return
        for b in logs.poll(now):
            if self.config.alert:
                self.events.emit({"event": "verdict", "path": "log", "time": round(now, 3), "verdict": "drop",
                                  "reason": b.reason, "src": b.network, "rule": b.rule, "match": b.match,
                                  "ban": b.seconds, "alert": True})
            else:
                self.bans.issue(Ban(b.network, b.seconds, b.reason, b.rule, "log"), now)
        if now >= self._next_minute:
            self._next_minute = now + 60
            self._report_log_failures(now)

    _next_minute = 0.0

    def _report_log_failures(self, now: float) -> None:
        """Once a minute: the failures each log filter found since the last report (for ``inspector report``)."""
        counts = {k.split(":", 1)[1]: v for k, v in self.logs.counts.items() if k.startswith("failures:")}
        last = self._log_counts
        delta = {k: v - last.get(k, 0) for k, v in counts.items() if v - last.get(k, 0) > 0}
        if delta:
            self.events.emit({"event": "log-failures", "time": round(now, 3), "counts": delta})
        self._log_counts = counts

    def reload_logs(self, config: Config, rules: RuleSet | None = None) -> None:
        """Take the new config's log sources (the open files and the counts carry over), and give the
        components that follow the rules the new ones (``rules``: already loaded, else they load them)."""
        config = merge_kernel_whitelist(config, self.firewall, self.events)
        self.bans.whitelist = Whitelist(config.whitelist)
        if self.logs is not None or config.logs.sources:
            self.logs = make_log_monitor(config, previous=self.logs)
        self.config = config
        for component in self.components.values():  # those that follow config and rules (policy, whitelist)
            reload = getattr(component, "reload", None)
            if reload is not None:
                reload(config, rules)

    # -- control ------------------------------------------------------------------------

    def _bans(self, request: dict[str, Any]) -> tuple[dict[str, Any], Iterable[dict[str, Any]]]:
        """Every active ban, streamed one line each (a million list fine)."""
        now = self.clock()
        active = self.bans.active(now)
        return {"ok": True, "count": len(active)}, (record_json(r, now) for r in active)

    def _unban(self, request: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        network = ban_form(str(request.get("network")), self.config.ipv4_prefix, self.config.ipv6_prefix)
        try:
            was = self.bans.lift(network, now)
        except FirewallError as e:
            return {"ok": False, "error": str(e)}
        reply: dict[str, Any] = {"ok": True, "network": network, "was_banned": was}
        if not was:  # a wider ban (a manual network or range) may still drop it
            target = ipaddress.ip_network(network, strict=False)
            reply["covered_by"] = [r.network for r in self.bans.active(now)
                                   if _covers(ipaddress.ip_network(r.network, strict=False), target)]
        return reply

    def _status(self) -> dict[str, Any]:
        now = self.clock()
        packets = self.packet_status(now)
        counts: Counter[str] = Counter(packets.pop("counts", {}))
        counts.update(self.bans.counts)
        return {"pid": os.getpid(), "mode": self.config.mode, "uptime": round(now - self.started, 1),
                **ban_summary(self.bans.active(now), now), "counts": dict(counts), **packets,
                "logs": self.logs.stats() if self.logs is not None else None,
                "queues": [q.__dict__ for q in queue_stats()]}

    def status(self) -> dict[str, Any]:
        """What ``inspector status`` gets."""
        return self.control.handle({"cmd": "status"})

    def _start_metrics(self) -> Any:
        """The Prometheus endpoint, if ``[metrics] listen`` asks for one (off by default)."""
        listen = self.config.metrics.listen
        if not listen:
            return None
        from ..metrics import serve

        def safe() -> dict[str, Any]:
            try:
                return self.status()
            except RuntimeError:  # a dict changed size under the scrape: report nothing this time
                return {}
        try:
            return serve(listen, safe)
        except (OSError, ValueError) as e:
            raise ServiceError(f"cannot serve metrics on {listen}: {e}") from None

    # -- the end ------------------------------------------------------------------------

    def close_components(self) -> None:
        """Close the side components (each failure is an event)."""
        for name, component in self.components.items():
            try:
                component.close()
            except Exception as e:  # noqa: BLE001 - one component must not keep the others open
                self.events.emit({"event": "error", "what": "component-close", "component": name,
                                  "error": f"{type(e).__name__}: {e}"})

    def save_final(self, now: float) -> None:
        """The last save (compacted) and the control socket closed."""
        if self.state_writer is not None:
            self.state_writer.close()
        self.bans.save(now, compact=True)
        self.control.close()

    def close(self) -> None:
        """Close what this process owns last: the firewall's netlink sockets, the log followers,
        the event log file."""
        close = getattr(self.firewall, "close", None)
        if close is not None:
            close()
        if self.logs is not None:
            self.logs.close()
        if self.log_file is not None:
            self.log_file.close()
