"""The side components the config asks for, built for the process that owns the ban store.

:func:`configured` is the one place where a component is wired in: one ``if`` per component,
reading its own config section and taking what it needs: the ban pipeline (``bans.issue``
from any thread, ``bans.add_listener``), the event sink, the control server (to register its
own requests) and the clock.  Each component follows :class:`inspector.service.Component`:
``start()``, ``close()``, ``status() -> dict``; one with ``reload(config)`` follows config
reloads (SIGHUP).

* ``notify`` (``[notify]``): :class:`inspector.notify.Notifier`, a ban-pipeline listener;
* ``whitelist`` (``[whitelist] files``/``hosts``): :class:`WhitelistComponent`, which keeps the
  one whitelist current: the ban pipeline's, the engines' (through ``to_packets``) and the
  kernel's whitelist sets;
* ``connlimit`` (``[connlimit]``): :class:`inspector.connlimit.ConnLimiter`, bans through the pipeline.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config
from ..control import ControlServer
from ..events import EventSink
from ..firewall import IpsetFirewall
from ..kernel_whitelist import SOURCES_STATE
from ..nets import Network, Whitelist
from ..notify import Notifier, NotifyError, channels_for, events_report
from ..respond.bans import BanPipeline
from ..rules import RuleSet
from ..whitelist_sources import KernelWhitelist, WhitelistSourceError, WhitelistSources, system_resolver
from . import Component, ServiceError

__all__ = ["configured", "WhitelistComponent", "ToPackets", "RESOLVE_WAIT"]

ToPackets = Callable[[tuple[Network, ...]], None]
RESOLVE_WAIT = 3.0  # seconds the start waits for the first lookups of [whitelist] hosts


@dataclass(eq=False)
class WhitelistComponent:
    """``[whitelist] cidrs`` plus the networks of ``files`` and ``hosts``, as one whitelist.

    On every change (a file edited, a host re-resolved, a reload) the whole list goes to the ban
    pipeline (which refuses to ban it), to the packet engines (``to_packets``), and the file/host
    part to the kernel's whitelist sets (which let it pass before any queueing).
    """

    base: tuple[Network, ...]
    bans: BanPipeline
    events: EventSink
    clock: Callable[[], float]
    sources: WhitelistSources
    to_packets: ToPackets
    kernel: KernelWhitelist | None

    def __post_init__(self) -> None:
        self.kernel_errors: list[str] = []
        self.changes = 0
        self._lock = threading.Lock()  # the refresh thread and a reload on the loop may apply at once

    def start(self) -> None:
        """The files at once (a broken one is reported and contributes nothing); the host names in the
        refresh thread, waited for up to ``RESOLVE_WAIT`` seconds so that a dead resolver cannot hold
        up the start (the kernel sets keep the previous run's entries meanwhile)."""
        try:
            nets = self.sources.load(resolve_hosts=False)
        except WhitelistSourceError as e:
            self.events.emit({"event": "error", "what": "whitelist", "error": str(e)})
            nets = self.sources.networks
        self.apply(nets, kernel=not self.sources.has_hosts)
        self.sources.on_change = self.apply
        self.sources.start()
        self.sources.first_refresh.wait(RESOLVE_WAIT)
        self.apply(self.sources.networks)

    def apply(self, dynamic: frozenset[Network], kernel: bool = True) -> None:
        """Put ``base`` + ``dynamic`` in place everywhere (any thread); ``kernel`` False: not in the sets."""
        extra = tuple(sorted(dynamic, key=lambda n: (n.version, n.network_address.packed, n.prefixlen)))
        with self._lock:
            whole = tuple(dict.fromkeys((*self.base, *extra)))
            self.bans.whitelist = Whitelist(whole)
            self.to_packets(whole)
            if self.kernel is not None and kernel:
                self.kernel_errors = self.kernel.sync(extra)
                for error in self.kernel_errors:
                    self.events.emit({"event": "error", "what": "whitelist-set", "error": error})
            self.changes += 1
        self.events.emit({"event": "whitelist", "time": round(self.clock(), 3), "networks": len(whole),
                          "from_sources": len(extra)})

    def reload(self, config: Config, rules: RuleSet | None = None) -> None:
        """Config reloaded (SIGHUP): take its cidrs, re-read the files, re-resolve the hosts, apply."""
        self.base = config.whitelist
        self.sources.reload()  # the refresh thread re-reads and re-resolves now, and applies a change
        self.apply(self.sources.networks)  # the engines may have been rebuilt by the reload

    def close(self) -> None:
        """Stop the refresh thread (the kernel entries stay: the next start takes them over)."""
        self.sources.close()

    def status(self) -> dict[str, Any]:
        """Files, hosts, errors and the kernel sync."""
        return {**self.sources.status(), "kernel_errors": self.kernel_errors, "changes": self.changes}


def _kernel_whitelist(config: Config, bans: BanPipeline) -> KernelWhitelist | None:
    if not isinstance(bans.firewall, IpsetFirewall):
        return None  # a fake firewall (tests): leave the kernel alone
    try:
        from ..ipset_netlink import IpsetNetlink

        editor = IpsetNetlink()
    except OSError:
        return None
    state = Path(config.service.state_file).with_name(SOURCES_STATE)
    return KernelWhitelist(editor, state)


def configured(config: Config, bans: BanPipeline, events: EventSink, control: ControlServer,
               clock: Callable[[], float], rules: RuleSet | None = None,
               to_packets: ToPackets | None = None) -> dict[str, Component]:
    """The components ``config`` enables, by the name of their ``status`` section (the fleet
    client, the connection-limit poller and the notifier add themselves here too).  ``rules``:
    the packet side's rules when it runs in this process (shared, not loaded twice).
    ``to_packets(networks)`` hands the whole whitelist to the packet engines (the single
    process's engine, or a message to every worker).  Raises ServiceError when a component
    cannot be built (a [notify] channel)."""
    found: dict[str, Component] = {}
    if config.policy.listen is not None:
        found["policy"] = _policy(config, bans, events, clock, rules)
    if config.notify is not None:
        try:
            channels = channels_for(config.notify)
        except NotifyError as e:
            raise ServiceError(str(e)) from None
        log = config.service.events
        report = events_report(log) if log and log != "-" else (
            lambda since, until: "(no event log file: set [service] events to a path)\n")
        notifier = Notifier(config.notify, channels, report, clock, socket.gethostname(), emit=events.emit)
        bans.add_listener(notifier.on_ban)
        found["notify"] = notifier
    if config.whitelist_files or config.whitelist_hosts:
        sources = WhitelistSources(config.whitelist_files, config.whitelist_hosts, system_resolver, clock,
                                   config.whitelist_resolve, emit=events.emit)
        found["whitelist"] = WhitelistComponent(config.whitelist, bans, events, clock, sources,
                                                to_packets or (lambda networks: None),
                                                _kernel_whitelist(config, bans))
    if config.connlimit is not None:
        from ..connlimit import make_connlimiter

        limiter = make_connlimiter(config, bans, clock, events.emit)
        bans.add_listener(limiter.on_ban)  # a manual unban lets the limiter ban that source again
        found["connlimit"] = limiter
    return found


def _policy(config: Config, bans: BanPipeline, events: EventSink, clock: Callable[[], float],
            rules: RuleSet | None) -> Component:
    """``[policy] listen``: the MTA's policy hook, on the same rules and whitelist, banning through
    ``bans`` with ``path`` ``policy`` (inspector/policy/)."""
    from ..nets import Whitelist
    from ..policy.service import PolicyService
    from ..respond.bans import Ban
    from ..rules import RuleError, load_rules

    if rules is None:
        try:
            rules = load_rules(config.rules)
        except RuleError as e:
            raise ServiceError(str(e)) from None
    fallback = Whitelist(config.whitelist)  # with loopback, as the packet path (it never sees lo)
    own = {str(a) for a in bans.own}

    def whitelisted(address: str) -> bool:
        # the one whitelist, read at each request: the pipeline's, which the host and the
        # [whitelist] files/hosts component keep current (config, kernel sets, files, host names).
        # This host's own addresses reach the MTA over lo, which the packet path never inspects;
        # other hosts in an own /64 are rejected like anyone else (and not banned: the pipeline refuses)
        whitelist = bans.whitelist or fallback
        return address in whitelist or address in own

    def ban(network: str, seconds: int, rule: str, now: float) -> bool:
        return bans.issue(Ban(network, seconds, "domain", rule, path="policy"), now)

    return _PolicyComponent(PolicyService(config.policy, rules.domains, whitelisted, bans.network, ban,
                                          config.ban_domain, events, clock, alert=config.alert))


class _PolicyComponent:
    """The policy service as a component: a bind failure is a ServiceError; reloads take the rules."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def start(self) -> None:
        try:
            self.service.start()
        except OSError as e:
            raise ServiceError(f"[policy] listen: {e}") from None

    def close(self) -> None:
        self.service.close()

    def status(self) -> dict[str, Any]:
        return dict(self.service.status())

    def reload(self, config: Config, rules: RuleSet | None = None) -> None:
        self.service.reload(config.rules, rules)
