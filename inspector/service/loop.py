"""The loop of every service process, and the packet loop on top of it.

:class:`Loop` waits in ``epoll`` on its readers (the NFQUEUE socket, the control socket,
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
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
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
        """Hand the waiting packets (one burst) to the handler; never blocks.  A queue may count
        these calls in an attribute ``wakeups``."""
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
    The wait is an ``epoll`` (about 1 us cheaper per wakeup than ``select`` over a few
    descriptors, measured here); a forked child that goes on using the loop gets its own epoll
    (the parent's would be shared with it).
    """

    def __init__(self, clock: Clock, max_wait: float = 1.0) -> None:
        self.clock = clock
        self.max_wait = max_wait
        self.stopping = False
        self.on_hup: Callable[[], None] = lambda: None
        self._readers: dict[int, Callable[[], None]] = {}
        self._epoll: select.epoll | None = None
        os.register_at_fork(after_in_child=partial(_forget_epoll, weakref.ref(self)))
        self._each: list[Callable[[float], None]] = []
        self._timers: list[_Timer] = []
        self._next_due = float("inf")  # the earliest timer's due time
        self._wake: tuple[int, int] | None = None

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        """Call ``callback()`` whenever ``fd`` is readable."""
        self._readers[fd] = callback
        if self._epoll is not None:
            self._watch(self._epoll, fd)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``."""
        self._readers.pop(fd, None)
        if self._epoll is not None:
            with contextlib.suppress(OSError, ValueError):  # closed already: the kernel dropped it
                self._epoll.unregister(fd)

    @staticmethod
    def _watch(ep: select.epoll, fd: int) -> None:
        try:
            ep.register(fd, select.EPOLLIN)
        except FileExistsError:  # a descriptor number closed and reused
            ep.modify(fd, select.EPOLLIN)

    def _poller(self) -> select.epoll:
        """This process's epoll over the readers (made on first use, and anew after a fork)."""
        ep = self._epoll
        if ep is None:
            ep = self._epoll = select.epoll()
            for fd in self._readers:
                self._watch(ep, fd)
        return ep

    def each_turn(self, callback: Callable[[float], None]) -> None:
        """Call ``callback(now)`` after the readers, on every turn of the loop (from the next turn on)."""
        self._each = [*self._each, callback]  # a new list: a callback may add or remove one

    def remove_each(self, callback: Callable[[float], None]) -> None:
        """Stop calling ``callback`` on every turn (from the next turn on)."""
        self._each = [c for c in self._each if c != callback]  # equal: the same bound method

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
        timer = _Timer(get, callback, self.clock() + get() if first is None else first)
        self._timers.append(timer)
        self._next_due = min(self._next_due, timer.due)

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

    def forget_epoll(self) -> None:
        """In a forked child: close this process's copy of the parent's epoll (the parent keeps
        its own); the next wait makes a new one."""
        if self._epoll is not None:
            with contextlib.suppress(OSError):
                self._epoll.close()
            self._epoll = None

    def turn(self) -> None:
        """One turn: wait for a reader (or the next timer), then run what is ready and due."""
        wait = self._next_due - self.clock()
        if wait > self.max_wait:
            wait = self.max_wait
        elif wait < 0.0:
            wait = 0.0
        try:
            ready = (self._epoll or self._poller()).poll(wait)
        except InterruptedError:
            ready = []
        readers = self._readers
        for fd, _events in ready:
            callback = readers.get(fd)
            if callback is not None:
                callback()
        if self._hup:
            self._hup = False
            self.on_hup()
        now = self.clock()
        for each in self._each:
            each(now)
        if now >= self._next_due:
            for t in self._timers:
                if now >= t.due:
                    t.due = now + t.interval()
                    t.callback(now)
            self._next_due = min((t.due for t in self._timers), default=float("inf"))

    def run(self) -> None:
        """Turn until stopped."""
        while not self.stopping:
            self.turn()

    def close(self) -> None:
        """Close the signal wakeup pipe and the epoll."""
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
        if self._wake is not None:
            signal.set_wakeup_fd(-1)
            for fd in self._wake:
                os.close(fd)
            self._wake = None


def _forget_epoll(ref: weakref.ref[Loop]) -> None:
    loop = ref()
    if loop is not None:
        loop.forget_epoll()


@dataclass(eq=False)
class PacketLoop:
    """A queue's packets through a runner, on ``loop`` (see the module docstring).

    ``hold``/``flush`` are called around every burst the queue hands over (a worker batches its
    messages to the supervisor per burst; set them with :meth:`batch`); without them the loop
    calls the queue's ``read`` itself, no frame of ours around it.  ``wakeups``: the bursts the
    queue read (its own count; ``queue-wakeups`` in the counts of ``status``); the runner's
    ``errors:handle`` counts the packets whose handling raised (accepted then).
    """

    loop: Loop
    queue: PacketQueue
    runner: Runner
    events: EventSink
    hold: Callable[[], None] | None = None
    flush: Callable[[], None] | None = None
    _bound: bool = field(default=False, init=False)

    def bind(self) -> None:
        """Bind the queue and start reading it (errors are the queue's, e.g. QueueError); the
        runner gives its accepts through the queue's batch (``accept_later``) if it has one."""
        self.queue.bind(self.handle)
        later, noted = getattr(self.queue, "accept_later", None), getattr(self.queue, "accept_noted", None)
        if later is not None and noted is not None:
            self.runner.accept_later, self.runner.accept_noted = later, noted
        self.loop.add_reader(self.queue.fileno(), self._reader())
        self._bound = True

    def _reader(self) -> Callable[[], None]:
        return self.queue.read if self.hold is None and self.flush is None else self.read

    def batch(self, hold: Callable[[], None] | None, flush: Callable[[], None] | None) -> None:
        """Call ``hold()`` before and ``flush()`` after every burst (None, None: neither)."""
        self.hold, self.flush = hold, flush
        if self._bound:  # else bind() registers the reader
            self.loop.add_reader(self.queue.fileno(), self._reader())

    @property
    def wakeups(self) -> int:
        """Bursts read from the queue (packets / wakeups: how many packets one wakeup handles)."""
        return int(getattr(self.queue, "wakeups", 0))

    def read(self) -> None:
        """Handle the burst of packets waiting in the queue, between ``hold()`` and ``flush()``."""
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
