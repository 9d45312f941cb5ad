"""Writing to disk off the packet path, and catching up after a full disk.

Two writers, each on its own thread, so that verdicts never wait on a disk:

* :class:`EventLog`: the JSON-lines event log.  ``emit()`` only appends the
  line to a bounded backlog; the thread writes the backlog out.
* :class:`StateWriter`: saves the ban store (journal appends, sometimes a
  rewrite) a moment after it changed.

A write that fails (``ENOSPC``, ``EDQUOT``, ``EIO``, a read-only remount) is
counted, reported once a minute to syslog (and as an ``error`` event), and
retried every second; what it should have written stays queued, so when space
returns the files catch up by themselves and a "recovered" line says how
much was written late.  Only the event backlog is bounded (``max_backlog``
lines): beyond it the oldest events are dropped and counted as ``dropped``,
the one real loss, also reported.  Ban state is never dropped: the store
keeps every pending change in memory until it is written.

Source of the failure modes: write(2) and fsync(2) (``ENOSPC``, ``EDQUOT``,
``EIO``); a failed append may have written part of its data.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .perms import FilePolicy

__all__ = ["EventLog", "StateWriter", "Notifier", "syslog_notifier", "NOTIFY_EVERY"]

Notifier = Callable[[str], None]
NOTIFY_EVERY = 60.0  # seconds between two syslog reports of the same failing writer
RETRY_EVERY = 1.0  # seconds between two attempts while writes fail
SYNC_EVERY = 1.0  # seconds: the longest an append of the ban journal waits for its fsync


def syslog_notifier(enabled: bool, ident: str = "inspector") -> Notifier:
    """A notifier that logs to syslog (facility daemon, level err); a no-op when disabled."""
    if not enabled:
        return lambda message: None
    import syslog

    def notify(message: str) -> None:
        syslog.openlog(ident, syslog.LOG_PID, syslog.LOG_DAEMON)
        syslog.syslog(syslog.LOG_ERR, message)
    return notify


class _Failures:
    """Counting and reporting the failures of one writer (not thread-safe: one writer thread)."""

    def __init__(self, what: str, notify: Notifier, clock: Callable[[], float]) -> None:
        self.what = what
        self.notify = notify
        self.clock = clock
        self.write_errors = 0
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.failing_since: float | None = None
        self._notified = -NOTIFY_EVERY

    def failed(self, error: str, waiting: int) -> bool:
        """Record a failure; True if it was reported now (the first, then once a minute)."""
        now = self.clock()
        self.write_errors += 1
        self.last_error, self.last_error_at = error, now
        if self.failing_since is None:
            self.failing_since = now
        if now - self._notified >= NOTIFY_EVERY:
            self._notified = now
            self.notify(f"cannot write the {self.what}: {error}; {waiting} waiting, retried every "
                        f"{RETRY_EVERY:g}s ({self.write_errors} failed writes so far)")
            return True
        return False

    def succeeded(self, written: int) -> None:
        if self.failing_since is not None:
            took = self.clock() - self.failing_since
            self.notify(f"the {self.what} is written again: {written} waiting entries written "
                        f"{took:.0f}s late ({self.write_errors} failed writes in all)")
            self.failing_since = None
            self._notified = -NOTIFY_EVERY


class EventLog:
    """The JSON-lines event log at ``path``, written by its own thread (see the module).

    ``emit()`` is thread-safe and never blocks on the disk.  ``health()`` is the ``status``
    section: events written, waiting, dropped (backlog full), failed writes, the last error.
    """

    def __init__(self, path: str | Path, policy: FilePolicy | None = None, notify: Notifier | None = None,
                 clock: Callable[[], float] = time.time, max_backlog: int = 200_000,
                 opener: Callable[[Path], int] | None = None,
                 writer: Callable[[int, memoryview], int] = os.write) -> None:
        self.path = Path(path)
        self.policy = policy or FilePolicy()
        self._open = opener or self.policy.open_append
        self._write = writer
        self.max_backlog = max_backlog
        self._backlog: deque[str] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._fd: int | None = None
        self._failures = _Failures(f"event log {self.path}", notify or (lambda m: None), clock)
        self.written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="inspector-events", daemon=True)
        self._thread.start()

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with self._cond:
            self._backlog.append(line)
            if len(self._backlog) > self.max_backlog:
                self._backlog.popleft()
                self.dropped += 1
            self._cond.notify()

    def health(self) -> dict[str, Any]:
        f = self._failures
        return {"path": str(self.path), "written": self.written, "pending": len(self._backlog),
                "dropped": self.dropped, "write_errors": f.write_errors, "last_error": f.last_error,
                "last_error_at": f.last_error_at, "failing": f.failing_since is not None}

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until the backlog is written (True) or ``timeout`` passed (False)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify()
            while self._backlog and time.monotonic() < deadline:
                self._cond.wait(0.05)
            return not self._backlog

    def close(self, timeout: float = 5.0) -> None:
        """Write what is waiting (up to ``timeout``), then stop the thread and close the file."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def fileno(self) -> int:
        """The open file (-1 if none), for a forked worker to close."""
        return -1 if self._fd is None else self._fd

    def _run(self) -> None:
        failing = False
        while True:
            with self._cond:
                while not self._backlog and not self._closing:
                    self._cond.wait()
                if self._closing and (not self._backlog or failing):
                    return
                lines = list(self._backlog)
            try:
                self._write_all("".join(lines).encode("utf-8", "replace"))
            except OSError as e:
                failing = True
                self._failures.failed(e.strerror or str(e), len(lines))
                with self._cond:
                    self._cond.wait(RETRY_EVERY)
                continue
            with self._cond:
                for _ in range(min(len(lines), len(self._backlog))):
                    self._backlog.popleft()
                self._cond.notify_all()
            self.written += len(lines)
            if failing:
                failing = False
                self._failures.succeeded(len(lines))

    def _write_all(self, data: bytes) -> None:
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = self._open(self.path)
        fd = self._fd
        start = os.lseek(fd, 0, os.SEEK_END)
        view = memoryview(data)
        try:
            while view:
                view = view[self._write(fd, view):]
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)  # the retry writes whole lines again: no torn line in between
            raise


class StateWriter:
    """Saves the ban store from its own thread as soon as it changed (see the module).

    The store's ``on_change`` wakes the thread: a ban reaches the journal (the page cache) within
    moments, so that a SIGKILL right after it keeps its reason; the fsync follows at most a
    second later (:attr:`inspector.bans.BanStore.sync_every`).

    ``save()`` is the service's save function (``save_bans``: the store, then the hosts.deny
    export); it returns False when the write failed, and is retried every second until it
    succeeds.  ``poke()`` asks for a save soon (an unban, a log ban).  ``close()`` stops the
    thread; the caller does the final save itself.
    """

    def __init__(self, save: Callable[[], bool], store: Any, notify: Notifier | None = None,
                 clock: Callable[[], float] = time.time, interval: float = 0.25, what: str = "ban state") -> None:
        # store: what save() writes; its ``pending`` (changes not on disk) and ``last_error`` are read
        self._save = save
        self._store = store
        self.interval = interval
        self._failures = _Failures(what, notify or (lambda m: None), clock)
        self._clock = clock
        self._wake = threading.Event()
        self._closing = False
        self._lock = threading.Lock()  # one save at a time (the thread's, or the caller's final one)
        self._thread = threading.Thread(target=self._run, name="inspector-state", daemon=True)
        self._thread.start()
        if hasattr(store, "on_change"):
            store.on_change = self.poke
            # appends are not fsynced inline (that would hold the next ban back from the journal):
            # this thread syncs them, at most SYNC_EVERY seconds after they were written
            store.sync_every = math.inf
        self._synced = clock()

    def poke(self) -> None:
        self._wake.set()

    def health(self) -> dict[str, Any]:
        f = self._failures
        return {"write_errors": f.write_errors, "last_error": f.last_error, "failing": f.failing_since is not None}

    def save_now(self, save: Callable[[], bool] | None = None) -> bool:
        """Save in the caller's thread (an unban, the final save at stop), never at the same time
        as the thread; ``save``: another save function than the usual one (a full rewrite)."""
        with self._lock:
            return (save or self._save)()

    def close(self, timeout: float = 5.0) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def _sync(self, force: bool) -> None:
        """fsync what was appended: when idle, or at least every SYNC_EVERY seconds."""
        now = self._clock()
        if not getattr(self._store, "unsynced", False) or (not force and now - self._synced < SYNC_EVERY):
            return
        with self._lock, contextlib.suppress(OSError):  # a failing sync is retried at the next one
            self._store.sync(now)
            self._synced = now

    def _run(self) -> None:
        failing = False
        while not self._closing:
            self._wake.wait(RETRY_EVERY if failing else self.interval)
            self._wake.clear()
            if self._closing:
                return
            if not (failing or self._store.pending):
                self._sync(force=True)
                continue
            written = self._store.pending
            with self._lock:
                ok = self._save()
            self._sync(force=False)
            if ok:
                if failing:
                    self._failures.succeeded(written)
                failing = False
            else:
                failing = True
                self._failures.failed(str(self._store.last_error), self._store.pending)
