"""The loop of every service process, and the packet loop on top of it.

:class:`Loop` waits in ``select()`` on its readers (the NFQUEUE socket, the control socket,
the pipes to workers or to the supervisor, the signal wakeup pipe), calls each ready reader's
callback, then the per-turn callbacks, then the timers that are due; ``SIGTERM``/``SIGINT``
stop it, ``SIGHUP`` calls ``on_hup``.  It never waits longer than the next timer.

:class:`PacketLoop` binds a queue to a :class:`~inspector.runner.Runner` on a loop: every
packet the queue hands over goes through ``Runner.handle``; an exception there (a bug) is
counted and reported, and the packet is accepted, never stranded in the kernel.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ..events import EventSink
from ..runner import QueuedPacket, Runner

__all__ = ["Loop", "PacketLoop", "PacketQueue"]

Clock = Callable[[], float]


class PacketQueue(Protocol):
    """A packet source with verdicts: :class:`inspector.sources.nfqueue.NfQueue`, or
    :class:`inspector.testing.FakeQueue`."""

    number: int

    def bind(self, handler: Callable[[Any], None]) -> None:
        """Bind the queue; ``handler(packet)`` is called for every packet :meth:`read` takes."""
    def fileno(self) -> int:
        """The descriptor that becomes readable when packets wait."""
    def read(self) -> None:
        """Hand the waiting packets (one burst) to the handler; never blocks."""
    def close(self) -> None:
        """Unbind."""


class _Timer:
    __slots__ = ("interval", "callback", "due")

    def __init__(self, interval: Callable[[], float], callback: Callable[[float], None], due: float) -> None:
        self.interval = interval
        self.callback = callback
        self.due = due


class Loop:
    """``select()`` over readers, with per-turn callbacks and timers; see the module docstring.

    ``clock`` gives the time (seconds) the timers run on; ``max_wait`` bounds one wait (seconds).
    """

    def __init__(self, clock: Clock, max_wait: float = 1.0) -> None:
        self.clock = clock
        self.max_wait = max_wait
        self.stopping = False
        self.on_hup: Callable[[], None] = lambda: None
        self._readers: dict[int, Callable[[], None]] = {}
        self._each: list[Callable[[float], None]] = []
        self._timers: list[_Timer] = []
        self._wake: tuple[int, int] | None = None

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (in the order readers were added)."""
        self._readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``."""
        self._readers.pop(fd, None)

    def each_turn(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(now)`` after the readers, on every turn of the loop."""
        self._each.append(callback)

    def every(self, interval: float | Callable[[], float], callback: Callable[[float], None],
              first: float | None = None) -> None:
        """Call ``callback(now)`` every ``interval`` seconds (a number, or a callable read at each
        run), the first time at ``first`` (default: one interval from now)."""
        if callable(interval):
            get = interval
        else:
            seconds = float(interval)

            def get() -> float:
                return seconds
        self._timers.append(_Timer(get, callback, self.clock() + get() if first is None else first))

    def catch_signals(self) -> None:
        """SIGTERM/SIGINT stop the loop, SIGHUP calls ``on_hup``; a signal wakes ``select()``."""
        r, w = os.pipe()
        os.set_blocking(w, False)
        self._wake = (r, w)
        signal.set_wakeup_fd(w)
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self.add_reader(r, lambda: self._drain_wake(r))

    @staticmethod
    def _drain_wake(fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(fd, 512)

    def wake_fds(self) -> list[int]:
        """The signal wakeup pipe's descriptors (a forked child closes them)."""
        return list(self._wake) if self._wake else []

    def _on_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _on_hup(self, signum: int, frame: object) -> None:
        self._hup = True  # acted on in the loop, never inside the signal handler

    _hup = False

    def stop(self) -> None:
        """End :meth:`run` after the current turn."""
        self.stopping = True

    def turn(self) -> None:
        """One turn: wait for a reader (or the next timer), then run what is ready and due."""
        now = self.clock()
        wait = self.max_wait
        for t in self._timers:
            wait = min(wait, max(0.0, t.due - now))
        try:
            ready, _, _ = select.select(list(self._readers), [], [], wait)
        except InterruptedError:
            ready = []
        for fd in ready:
            callback = self._readers.get(fd)
            if callback is not None:
                callback()
        if self._hup:
            self._hup = False
            self.on_hup()
        now = self.clock()
        for each in self._each:
            each(now)
        for t in self._timers:
            if now >= t.due:
                t.due = now + t.interval()
                t.callback(now)

    def run(self) -> None:
        """Turn until stopped."""
        while not self.stopping:
            self.turn()

    def close(self) -> None:
        """Close the signal wakeup pipe."""
        if self._wake is not None:
            signal.set_wakeup_fd(-1)
            for fd in self._wake:
                os.close(fd)
            self._wake = None


@dataclass(eq=False)
class PacketLoop:
    """A queue's packets through a runner, on ``loop`` (see the module docstring).

    ``hold``/``flush`` are called around every burst the queue hands over (a worker batches its
    messages to the supervisor per burst); ``counts`` are the runner's (``queue-wakeups``:
    bursts read, ``errors:handle``: packets whose handling raised).
    """

    loop: Loop
    queue: PacketQueue
    runner: Runner
    events: EventSink
    hold: Callable[[], None] | None = None
    flush: Callable[[], None] | None = None

    def bind(self) -> None:
        """Bind the queue and start reading it (errors are the queue's, e.g. QueueError)."""
        self.queue.bind(self.handle)
        self.loop.add_reader(self.queue.fileno(), self.read)

    def read(self) -> None:
        """Handle the burst of packets waiting in the queue."""
        self.runner.counts["queue-wakeups"] += 1  # packets / wakeups: how many packets one wakeup handles
        if self.hold is not None:
            self.hold()
        try:
            self.queue.read()
        finally:
            if self.flush is not None:
                self.flush()

    def handle(self, packet: QueuedPacket) -> None:
        """One packet: the runner's verdict, or accept if the runner raised."""
        try:
            self.runner.handle(packet)
        except Exception as e:  # noqa: BLE001 - an exception here would strand the packet in the kernel
            self.runner.counts["errors:handle"] += 1
            with contextlib.suppress(Exception):  # it may already have had its verdict
                packet.accept()
            self.events.emit({"event": "error", "what": "handle", "error": f"{type(e).__name__}: {e}"})

    def close(self) -> None:
        """Stop reading and unbind the queue."""
        with contextlib.suppress(Exception):  # an unbound queue has no descriptor
            self.loop.remove_reader(self.queue.fileno())
        self.queue.close()
