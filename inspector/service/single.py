"""The single-process service: one queue, one engine, and the ban store in the same process.

:class:`Service` composes a :class:`~.host.Host` (bans, control socket, logs, metrics, side
components) and a :class:`~.packets.PacketSide` (engine, runner, queue) on one
:class:`~.loop.Loop`.  Bans the log sources or a component issue reach the engine through a
ban-pipeline listener; ``unban`` lifts them from the engine the same way.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from ..events import EventSink, now_iso
from ..firewall import Firewall
from ..kernel_whitelist import merge_kernel_whitelist
from ..nets import Address, Network, Whitelist
from ..respond.bans import Ban
from ..runner import ResetSender
from ..sources.nfqueue import NfQueue
from . import Inputs, ServiceError
from .host import Host
from .loop import Loop, PacketQueue
from .packets import PacketSide

__all__ = ["Service"]


class Service:
    """``inspector run`` in one process.  :meth:`start` raises ServiceError; :meth:`run` returns
    the exit code after SIGTERM/SIGINT (or :meth:`stop`).

    The adapters may be given (the unit tests pass fakes, and then no root is needed):
    ``queue`` (default: the NFQUEUE of ``[service] queue``), ``firewall``, ``resets``, ``events``,
    ``own`` (this host's addresses); ``signals`` False leaves the signal handlers alone.
    """

    def __init__(self, config_path: str | None, rules_path: str | None, overrides: dict[str, Any],
                 clock: Callable[[], float] = time.time, queue: PacketQueue | None = None,
                 firewall: Firewall | None = None, resets: ResetSender | None = None,
                 events: EventSink | None = None, own: Iterable[Address] | None = None,
                 signals: bool = True) -> None:
        self.inputs = Inputs(config_path, rules_path, overrides)
        self.clock = clock
        self.loop = Loop(clock)
        self._adapters = (queue, firewall, resets, events, own)
        self.signals = signals

    def start(self) -> None:
        """Load, restore the bans, bind the queue; emit ``started``."""
        queue, firewall, resets, events, own = self._adapters
        config, rules = self.inputs.load()
        if queue is None and os.geteuid() != 0:
            raise ServiceError("inspector run needs root (CAP_NET_ADMIN) to bind an NFQUEUE and manage ipsets")
        self.config = config
        self.host = host = Host(config, self.clock, self.loop, firewall, events, own)
        config = self.config = host.config  # with the kernel's whitelist sets
        self.side = side = PacketSide(self.inputs, config, rules, self.clock)
        side.adjust = lambda config: merge_kernel_whitelist(config, host.firewall, host.events)
        host.packet_status = self._packet_status
        host.bans.add_listener(self._to_engine)
        host.to_packets = self._whitelist_to_engine
        side.on_reloaded = lambda config, rules: host.reload_logs(config, rules)
        host.rules = rules  # the policy path shares them
        host.start()
        now = self.clock()
        for network, expires, reason in host.bans.snapshot(now):
            side.engine.add_ban(network, expires, reason)
        if queue is None:
            svc = config.service
            queue = NfQueue(svc.queue, svc.queue_maxlen, svc.fail_open)
        side.start(self.loop, queue, host.events, host.bans, resets)
        self.loop.on_hup = side.request_reload
        if self.signals:
            self.loop.catch_signals()
        self.started = host.started = self.clock()
        host.events.emit(side.started_event(self.started, host.restored))

    @property
    def events(self) -> EventSink:
        """The event sink of this service."""
        return self.host.events

    def _to_engine(self, kind: str, what: Ban | str) -> None:
        engine = self.side.engine
        if kind == "unban":
            engine.remove_ban(str(what))
        elif isinstance(what, Ban) and what.path != "packet" and self.host.bans.is_engine_form(what.network):
            # a narrowed IPv6 single-address ban (log policy) stays narrow: the kernel set holds it
            engine.add_ban(what.network, self.host.bans.now + what.seconds, what.reason)

    def _whitelist_to_engine(self, networks: tuple[Network, ...]) -> None:
        self.side.engine.whitelist = Whitelist(networks, loopback=False)

    def _packet_status(self, now: float) -> dict[str, Any]:
        side = self.side
        stats = side.stats(now)
        return {"queue": self.config.service.queue, "workers": 1, "packets": stats["packets"],
                "counts": stats["counts"], "engine": stats["engine"], "rules": stats["rules"],
                "live": stats["live"], "reloads": side.reloads}

    def run(self) -> int:
        """Handle packets until stopped; then :meth:`stop`."""
        self.loop.run()
        return self.stop()

    def stop(self) -> int:
        """Unbind, save, close; emit ``stopped``.  Returns 0."""
        host, side = self.host, self.side
        now = self.clock()
        host.close_components()
        side.close()
        host.save_final(now)
        host.events.emit({"event": "stopped", "time": round(now, 3), "at": now_iso(now),
                          "packets": side.engine.packets, "counts": dict(side.runner.counts if side.runner else {})})
        host.close()
        self.loop.close()
        return 0
