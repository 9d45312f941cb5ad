"""A progress line on stderr for long offline runs (``replay``, ``scan``).

Silent unless stderr is a terminal, and silent for the first second: short
runs and pipelines print nothing extra.  ``update()`` is cheap enough to call
per chunk; it looks at the clock only every ``every`` calls.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO


class Progress:
    """A one-line progress bar on stderr, drawn only on a terminal (or with ``force``) and only after ``delay``
    seconds; :meth:`update` is cheap enough to call per record.
    """

    def __init__(self, label: str, total: int, stream: IO[str] | None = None, every: int = 8192,
                 delay: float = 1.0, force: bool = False) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = force or (hasattr(self.stream, "isatty") and self.stream.isatty())
        self.label = label
        self.total = max(1, total)
        self.every = every
        self.calls = 0
        self.started = time.monotonic()
        self.delay = delay
        self.shown = False
        self._next = self.started + delay

    @classmethod
    def for_file(cls, label: str, path: str, **kw: object) -> Progress:
        """A bar whose total is the size of the file at ``path`` (0 if it cannot be read)."""
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        return cls(label, size, **kw)  # type: ignore[arg-type]

    def update(self, done: int, items: int) -> None:
        """``done`` of the total (bytes read) and ``items`` handled so far; redraws at most 5 times a second."""
        if not self.enabled:
            return
        self.calls += 1
        if self.calls % self.every:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + 0.2
        share = min(1.0, done / self.total)
        rate = items / max(1e-9, now - self.started)
        bar = "#" * int(share * 30)
        self.stream.write(f"\r{self.label} [{bar:<30}] {share:6.1%}  {items:,} at {rate:,.0f}/s ")
        self.stream.flush()
        self.shown = True

    def done(self) -> None:
        """Erase the bar, if it was drawn."""
        if self.shown:
            self.stream.write("\r" + " " * 90 + "\r")
            self.stream.flush()
