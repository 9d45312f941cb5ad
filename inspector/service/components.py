"""The admin's side components, built from the config and added to a :class:`~.host.Host`.

* ``notify`` (``[notify]``): :class:`inspector.notify.Notifier`, a ban-pipeline listener;
* ``whitelist`` (``[whitelist] files``/``hosts``): :class:`WhitelistComponent`, which keeps the
  one whitelist current: the ban pipeline's, the engines' (through ``to_packets``) and the
  kernel's whitelist sets;
* ``connlimit`` (``[connlimit]``): :class:`inspector.connlimit.ConnLimiter`, bans through the pipeline.

:func:`add_components` is called once by each service form, before :meth:`Host.start`.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import Config
from ..nets import Network, Whitelist
from ..notify import Notifier, NotifyError, channels_for, events_report
from ..whitelist_sources import KernelWhitelist, WhitelistSourceError, WhitelistSources, system_resolver
from . import ServiceError
from .host import Host

__all__ = ["add_components", "WhitelistComponent"]

ToPackets = Callable[[tuple[Network, ...]], None]
RESOLVE_WAIT = 3.0  # seconds the start waits for the first lookups of [whitelist] hosts


class WhitelistComponent:
    """``[whitelist] cidrs`` plus the networks of ``files`` and ``hosts``, as one whitelist.

    On every change (a file edited, a host re-resolved, a reload) the whole list goes to the ban
    pipeline (which refuses to ban it), to the packet engines (``to_packets``), and the file/host
    part to the kernel's whitelist sets (which let it pass before any queueing).
    """

    def __init__(self, host: Host, sources: WhitelistSources, to_packets: ToPackets,
                 kernel: KernelWhitelist | None) -> None:
        self.host = host
        self.sources = sources
        self.to_packets = to_packets
        self.kernel = kernel
        self.base: tuple[Network, ...] = host.config.whitelist
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
            self.host.events.emit({"event": "error", "what": "whitelist", "error": str(e)})
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
            self.host.bans.whitelist = Whitelist(whole)
            self.to_packets(whole)
            if self.kernel is not None and kernel:
                self.kernel_errors = self.kernel.sync(extra)
                for error in self.kernel_errors:
                    self.host.events.emit({"event": "error", "what": "whitelist-set", "error": error})
            self.changes += 1
        self.host.events.emit({"event": "whitelist", "time": round(self.host.clock(), 3), "networks": len(whole),
                               "from_sources": len(extra)})

    def reload(self, config: Config) -> None:
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


def _kernel_whitelist(config: Config) -> KernelWhitelist | None:
    try:
        from ..ipset_netlink import IpsetNetlink

        editor = IpsetNetlink()
    except OSError:
        return None  # no netlink here (tests without root): the pipeline and the engines still follow
    state = Path(config.service.state_file).with_name("whitelist-kernel.json")
    return KernelWhitelist(editor, state)


def add_components(host: Host, to_packets: ToPackets, kernel: bool = True) -> None:
    """Add the components ``host.config`` asks for; ServiceError when one cannot be built.

    ``to_packets(networks)`` hands the whole whitelist to the packet engines (the single
    process's engine, or a message to every worker); ``kernel`` False leaves the kernel sets
    alone (tests with fakes)."""
    config = host.config
    hostname = socket.gethostname()
    if config.notify is not None:
        try:
            channels = channels_for(config.notify)
        except NotifyError as e:
            raise ServiceError(str(e)) from None
        events = config.service.events
        report = events_report(events) if events and events != "-" else (
            lambda since, until: "(no event log file: set [service] events to a path)\n")
        notifier = Notifier(config.notify, channels, report, host.clock, hostname, emit=host.events.emit)
        host.bans.add_listener(notifier.on_ban)
        host.add_component("notify", notifier)
    if config.whitelist_files or config.whitelist_hosts:
        sources = WhitelistSources(config.whitelist_files, config.whitelist_hosts, system_resolver, host.clock,
                                   config.whitelist_resolve, emit=host.events.emit)
        host.add_component("whitelist", WhitelistComponent(host, sources, to_packets,
                                                           _kernel_whitelist(config) if kernel else None))
    if config.connlimit is not None:
        from ..connlimit import make_connlimiter

        limiter = make_connlimiter(config, host.bans, host.clock, host.events.emit)
        host.bans.add_listener(limiter.on_ban)  # a manual unban lets the limiter ban that source again
        host.add_component("connlimit", limiter)
