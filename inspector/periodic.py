"""A daemon thread that calls one function every ``interval`` seconds: the life cycle the side
components share (the connlimit poller, the notifier).  Threading only, so that modules the
config imports may use it."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Periodic"]


@dataclass(eq=False)
class Periodic:
    """Calls ``tick()`` every ``interval`` seconds (the first call one interval after :meth:`start`)
    in a daemon thread called ``name``, until :meth:`stop`.

    ``tick`` must not raise: an exception ends the thread (catch and count inside it).
    """

    name: str
    interval: float
    tick: Callable[[], None]
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.tick()

    def start(self) -> None:
        """Start the thread (nothing if it runs already)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop the thread; waits up to ``timeout`` seconds for a ``tick`` under way to end."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
