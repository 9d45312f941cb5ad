"""The ban store: every ban the service issues, persisted so a restart loses none.

One JSON file, rewritten atomically (temp file, fsync, rename), so a crash
mid-write leaves the previous state intact.  Loading skips expired bans.  A
file that cannot be parsed is moved aside (never overwritten) and reported,
and the service starts with what it can trust.  Time is passed in.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from .fsutil import atomic_write
from .perms import FilePolicy

__all__ = ["BanRecord", "BanStore", "StateError"]

VERSION = 1
SYNC_EVERY = 1.0  # seconds: journal appends are written at once, fsynced at most this often


class StateError(Exception):
    """The state file was unusable; the message says where it was moved."""


@dataclass(frozen=True)
class BanRecord:
    """One stored ban: ``network`` (as the ipset holds it), ``expires`` and ``added`` (Unix seconds), ``reason`` and
    the ``rule`` that matched.
    """
    network: str
    expires: float
    reason: str
    rule: str | None = None
    added: float = 0.0
    origin: str | None = None  # the fleet host that issued it (None: this host)


class BanStore:
    """Bans by network, with their expiry; ``save()`` persists them.

    The state is a JSON file plus a journal beside it (``<file>.journal``,
    one JSON line per ban or removal since the file was written).  ``save()``
    appends what changed to the journal (one write and one fsync per call);
    the file is rewritten atomically and the journal emptied only when the
    journal has grown as long as the store (so the work per ban stays
    constant however many bans there are), or when asked to (``compact``).
    Loading reads the file, then replays the journal; a torn last line (a
    crash mid-append) is skipped.

    A write that fails (a full disk, an I/O error) loses nothing: what it
    should have written stays pending and the next ``save()`` writes it
    (a partly written journal append is cut back first, so no line is torn);
    :attr:`write_errors` counts the failures and :meth:`health` reports them.
    Thread-safe: the packet path adds while a writer thread saves.
    Files get the mode and group of ``policy`` (:mod:`inspector.perms`).
    """

    def __init__(self, path: Path | None, policy: FilePolicy | None = None) -> None:
        self.path = path
        self.policy = policy or FilePolicy()
        self.records: dict[str, BanRecord] = {}
        self._pending: list[str] = []  # journal lines not yet written
        self._journaled = 0  # lines in the journal file
        self._lock = threading.RLock()
        self.write_errors = 0  # failed saves (each retried by the next one)
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.saved_at: float | None = None
        self.on_change: Callable[[], None] | None = None  # called after a change (the state writer wakes)
        self.sync_every = SYNC_EVERY
        self._synced_at = 0.0
        self._unsynced = False
        self._save_lock = threading.Lock()  # one save at a time: a rewrite must not drop a parallel append

    @property
    def journal(self) -> Path | None:
        """The journal file beside the state file (None for an in-memory store)."""
        return None if self.path is None else self.path.with_name(self.path.name + ".journal")

    def add(self, record: BanRecord) -> None:
        """Record ``record`` unless a later-expiring ban of the same network is already there; it goes
        to the journal at the next :meth:`save` (``on_change`` is called)."""
        with self._lock:
            current = self.records.get(record.network)
            if current is None or record.expires > current.expires:
                self.records[record.network] = record
                self._pending.append(json.dumps(asdict(record), separators=(",", ":")))
            else:
                return
        if self.on_change is not None:
            self.on_change()

    def remove(self, network: str) -> bool:
        """Forget the ban of ``network``; True if there was one."""
        with self._lock:
            found = self.records.pop(network, None) is not None
            if found:
                self._pending.append(json.dumps({"remove": network}))
        if found and self.on_change is not None:
            self.on_change()
        return found

    def active(self, now: float) -> list[BanRecord]:
        """The unexpired bans at ``now``, soonest expiry first."""
        with self._lock:
            records = list(self.records.values())
        return sorted((r for r in records if r.expires > now), key=lambda r: r.expires)

    def get(self, network: str) -> BanRecord | None:
        """The ban of ``network``, if any."""
        with self._lock:
            return self.records.get(network)

    def prune(self, now: float) -> int:
        """Drop the bans expired at ``now``; how many were dropped."""
        with self._lock:
            expired = [n for n, r in self.records.items() if r.expires <= now]
            for n in expired:
                del self.records[n]
            return len(expired)

    @property
    def pending(self) -> int:
        """Changes not yet on disk."""
        return len(self._pending)

    def health(self) -> dict[str, object]:
        """For ``status``: failed writes so far, the last error, changes waiting to be written."""
        return {"path": str(self.path) if self.path else None, "write_errors": self.write_errors,
                "last_error": self.last_error, "last_error_at": self.last_error_at, "pending": self.pending,
                "saved_at": self.saved_at}

    def load(self, now: float) -> int:
        """Read the state file and its journal; return how many unexpired bans were restored.

        Raises :class:`StateError` (after moving the file aside) if it is corrupt; the journal's
        bans are still loaded (it is read line by line and its good lines are kept).
        """
        if self.path is None:
            return 0
        records: list[BanRecord] = []
        error: StateError | None = None
        if self.path.exists():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(data, dict) or data.get("version") != VERSION:
                    raise ValueError(f"unknown state format (version "
                                     f"{data.get('version') if isinstance(data, dict) else '?'})")
                records = [BanRecord(**r) for r in data["bans"]]
            except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
                aside = self.path.with_name(f"{self.path.name}.corrupt-{int(now)}")
                os.replace(self.path, aside)
                error = StateError(f"{self.path}: unreadable ban state ({e}); moved to {aside}; "
                                   "the journal's bans are kept")
        with self._lock:
            for r in records:
                self.records[r.network] = r
            self._journaled = self._replay()
            self.prune(now)
            self._pending = []
            if error is not None:
                # nothing on disk holds these any more but the journal: write them whole at the next save
                self._pending = [json.dumps(asdict(r), separators=(",", ":")) for r in self.records.values()]
        if error is not None:
            raise error
        return len(self.records)

    def _replay(self) -> int:
        journal = self.journal
        if journal is None or not journal.exists():
            return 0
        lines = 0
        with journal.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                lines += 1
                try:
                    entry = json.loads(line)
                    if "remove" in entry:
                        self.records.pop(entry["remove"], None)
                    else:
                        r = BanRecord(**entry)
                        current = self.records.get(r.network)
                        if current is None or r.expires > current.expires:
                            self.records[r.network] = r
                except (ValueError, TypeError):
                    continue  # a torn last line after a crash
        return lines

    def save(self, now: float, compact: bool | None = None, sync: bool | None = None) -> None:
        """Persist what changed: append to the journal, or rewrite the file (see the class).

        Raises OSError if the write fails; nothing is lost (it is retried by the next call).
        ``sync``: fsync the journal append (True), or not (False: safe against a crash of the
        process, not yet of the machine), or (None) when the last fsync is ``sync_every`` seconds
        old; :meth:`sync` syncs what is left."""
        if self.path is None:
            return
        with self._save_lock:
            self._save(now, compact, sync)

    def sync(self, now: float) -> None:
        """fsync the journal if an append was not synced yet (raises OSError)."""
        journal = self.journal
        with self._save_lock:
            if not self._unsynced or journal is None or not journal.exists():
                return
            fd = os.open(journal, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._unsynced, self._synced_at = False, now

    @property
    def unsynced(self) -> bool:
        return self._unsynced

    def _save(self, now: float, compact: bool | None, sync: bool | None) -> None:
        if sync is None:
            sync = now - self._synced_at >= self.sync_every
        journal = self.journal
        assert journal is not None and self.path is not None
        with self._lock:
            pending, self._pending = self._pending, []
            if compact is None:
                compact = not self.path.exists() or self._journaled + len(pending) >= max(64, len(self.records))
            if compact:
                self.prune(now)
                payload = {"version": VERSION, "saved": now, "bans": [asdict(r) for r in self.active(now)]}
        try:
            if compact:
                atomic_write(self.path, json.dumps(payload, separators=(",", ":")), mode=self.policy.mode,
                             gid=self.policy.gid)
                with self._lock:
                    if journal.exists():
                        journal.unlink()
                    self._journaled = 0
                self._unsynced = False
            elif pending:
                self._append(journal, ("\n".join(pending) + "\n").encode("utf-8"), sync)
                self._journaled += len(pending)
                if sync:
                    self._unsynced, self._synced_at = False, now
                else:
                    self._unsynced = True
        except OSError as e:
            with self._lock:
                self._pending[:0] = pending  # written by the next save
            self.write_errors += 1
            self.last_error = f"{journal if not compact else self.path}: {e.strerror or e}"
            self.last_error_at = now
            raise
        self.saved_at = now

    def _append(self, journal: Path, data: bytes, sync: bool) -> None:
        fd = self.policy.open_append(journal)
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if sync:
                    os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)  # no torn line for the retry to append to
                raise
        finally:
            os.close(fd)
