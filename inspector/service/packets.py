"""What a packet process holds: config and rules, the engine, the runner, the queue, reloads.

The single-process service and every worker build one :class:`PacketSide`.  A reload
(``SIGHUP``, or the supervisor's message) builds config and rules aside in a thread while
verdicts go on, then swaps them in at the next turn of the loop: the rules alone when nothing
else the engine uses changed, else a new engine that keeps the bans (flows are picked up
midstream).  A broken file keeps the old ones and says why (a ``reload`` event with ``ok``
false).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..config import Config
from ..engine import Engine
from ..events import EventSink, now_iso
from ..nets import own_addresses, protects
from ..respond.bans import BanPipeline
from ..rules import RuleSet
from ..runner import RawResetSender, ResetSender, Runner
from ..sources.nfqueue import QueueError
from . import Inputs, ServiceError, rules_info
from .loop import Loop, PacketLoop, PacketQueue

__all__ = ["PacketSide"]

Reloaded = Callable[[Config, RuleSet], None]


class PacketSide:
    """Engine, runner and queue of one packet process; see the module docstring.

    ``on_reloaded(config, rules)`` is called after a successful reload (the single-process
    service then reloads its log sources).
    """

    def __init__(self, inputs: Inputs, config: Config, rules: RuleSet, clock: Callable[[], float]) -> None:
        self.inputs = inputs
        self.config = config
        self.rules = rules
        self.clock = clock
        self.on_reloaded: Reloaded | None = None
        self.adjust: Callable[[Config], Config] | None = None  # applied to a reloaded config (the kernel whitelist)
        self.reloads = 0
        self.loaded = clock()
        self.rules_info = rules_info(rules, self.loaded)
        own = own_addresses()  # the engine never bans this host's addresses or their /64 (issue 11)
        self._protects: Callable[[str], str | None] = lambda network: protects(network, own=own)
        self.engine = self._engine(config, rules)
        self._reload_requested = False
        self._loop: Loop | None = None
        self._watching = False  # _check_reload runs on every turn of the loop (only while a reload is pending)
        self._reload_thread: threading.Thread | None = None
        self._reload_result: tuple[Config, RuleSet] | Exception | None = None
        self.events: EventSink | None = None
        self.runner: Runner | None = None
        self.resets: ResetSender | None = None
        self.packets: PacketLoop | None = None

    def start(self, loop: Loop, queue: PacketQueue, events: EventSink, bans: BanPipeline,
              resets: ResetSender | None = None) -> None:
        """Open the reset sockets (unless ``resets`` is given), build the runner and bind ``queue``
        on ``loop``.  Raises ServiceError (no raw sockets, the queue cannot be bound)."""
        self.events = events
        if resets is None:
            try:
                resets = RawResetSender()
            except OSError as e:
                raise ServiceError(f"cannot open raw sockets for resets: {e}") from None
        self.resets = resets
        self.runner = Runner(self.engine, resets, events, bans, self.clock, mark=self.config.service.mark,
                             body_mark=self.config.service.body_mark, reply_mark=self.config.service.reply_mark)
        self.packets = PacketLoop(loop, queue, self.runner, events)
        try:
            self.packets.bind()
        except QueueError as e:
            raise ServiceError(str(e)) from None
        queue_copy = getattr(queue, "copy_range", 0)
        if queue_copy != 0:
            events.emit({"event": "error", "what": "copy-range",
                         "error": f"the kernel did not confirm whole-packet copies (errno {queue_copy});"
                                  " packets over 4016 bytes are inspected only that far"})
        fail_open = getattr(queue, "fail_open_errno", 0)
        if self.config.service.fail_open and fail_open != 0:
            events.emit({"event": "error", "what": "fail-open",
                         "error": f"the kernel did not confirm the fail-open flag (errno {fail_open})"})
        self._loop = loop
        if self._reload_requested and not self._watching:  # asked for before the start
            self._watching = True
            loop.each_turn(self._check_reload)

    def _engine(self, config: Config, rules: RuleSet) -> Engine:
        """A new engine for ``config``: it reads SMTP replies where the kernel queues them (a reply
        mark and a decided mark in the running ``[service]``, which a reload does not change:
        setup-nfqueue.sh's reply chain)."""
        engine = Engine(config, rules, protects=self._protects)
        service = self.config.service
        if service.reply_mark and service.mark:
            engine.watch_replies()
        return engine

    @property
    def fail_open(self) -> bool:
        """Did the kernel confirm the queue's fail-open flag?"""
        queue = self.packets.queue if self.packets is not None else None
        return bool(self.config.service.fail_open) and getattr(queue, "fail_open_errno", 0) == 0

    def started_event(self, now: float, restored: int, **identity: Any) -> dict[str, Any]:
        """The ``started`` event of this packet process."""
        queue = self.packets.queue.number if self.packets is not None else self.config.service.queue
        return {"event": "started", "time": round(now, 3), "at": now_iso(now), "pid": os.getpid(), "queue": queue,
                "mode": self.config.mode, **identity, "fail_open": self.fail_open, "bans_restored": restored,
                "domains": len(self.rules.domains), "rules": [str(f.path) for f in self.rules.files]}

    def stats(self, now: float) -> dict[str, Any]:
        """This process's part of ``status``: packets, the runner's counts, engine, live, rules."""
        assert self.runner is not None
        counts = dict(self.runner.counts)
        if self.packets is not None:
            counts["queue-wakeups"] = self.packets.wakeups
        return {"packets": self.engine.packets, "counts": counts, "engine": self.engine.stats(),
                "live": self.runner.telemetry.snapshot(now), "rules": self.rules_info}

    # -- reload -------------------------------------------------------------------

    def request_reload(self) -> None:
        """Reload config and rules at the next turn of the loop (one at a time); the loop checks
        on it every turn until it is done (and not at all otherwise)."""
        self._reload_requested = True
        if not self._watching and self._loop is not None:
            self._watching = True
            self._loop.each_turn(self._check_reload)

    def _check_reload(self, now: float) -> None:
        if self._reload_requested:
            self._start_reload()
        if self._reload_thread is not None and not self._reload_thread.is_alive():
            self._finish_reload()
        if self._reload_thread is None and not self._reload_requested and self._loop is not None:
            self._watching = False
            self._loop.remove_each(self._check_reload)

    def _start_reload(self) -> None:
        self._reload_requested = False
        if self._reload_thread is not None:
            self._reload_requested = True  # one at a time: run again when this one is done
            return

        def build() -> None:
            try:
                self._reload_result = self.inputs.load()
            except Exception as e:  # noqa: BLE001 - any failure keeps the running rules
                self._reload_result = e
        self._reload_thread = threading.Thread(target=build, name="inspector-reload", daemon=True)
        self._reload_thread.start()

    def _finish_reload(self) -> None:
        result, self._reload_result, self._reload_thread = self._reload_result, None, None
        now = self.clock()
        events = self.events
        assert events is not None and self.runner is not None
        if isinstance(result, Exception) or result is None:
            events.emit({"event": "reload", "ok": False, "time": round(now, 3),
                         "error": str(result), "kept": "the rules and config in use"})
            return
        config, rules = result
        if self.adjust is not None:
            config = self.adjust(config)
        same_engine = replace(config, rules=(), service=self.config.service) == \
            replace(self.config, rules=(), service=self.config.service)
        if same_engine:
            self.engine.swap_rules(rules)
        else:
            engine = self._engine(config, rules)
            engine.bans = self.engine.bans  # bans carry over; flows are picked up midstream
            self.engine = self.runner.engine = engine
        if config.service != self.config.service:
            events.emit({"event": "reload-note", "note": "[service] changes take effect on restart"})
        self.config = replace(config, service=self.config.service)
        self.rules = rules
        self.rules_info = rules_info(rules, now)
        self.reloads += 1
        if self.on_reloaded is not None:
            self.on_reloaded(self.config, rules)
        events.emit({"event": "reload", "ok": True, "time": round(now, 3), "domains": len(rules.domains),
                     "engine": "kept" if same_engine else "rebuilt"})

    def close(self) -> None:
        """Unbind the queue and close the reset sockets."""
        if self.packets is not None:
            self.packets.close()
        close = getattr(self.resets, "close", None)
        if close is not None:
            close()
