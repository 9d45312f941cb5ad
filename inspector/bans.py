"""The ban store: every ban the service issues, persisted so a restart loses none.

One JSON file, rewritten atomically (temp file, fsync, rename), so a crash
mid-write leaves the previous state intact.  Loading skips expired bans.  A
file that cannot be parsed is moved aside (never overwritten) and reported,
and the service starts with what it can trust.  Time is passed in.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from .fsutil import atomic_write

__all__ = ["BanRecord", "BanStore", "StateError"]

VERSION = 1


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
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: dict[str, BanRecord] = {}
        self._pending: list[str] = []  # journal lines not yet written
        self._journaled = 0  # lines in the journal file

    @property
    def journal(self) -> Path | None:
        """The journal file beside the state file (None for an in-memory store)."""
        return None if self.path is None else self.path.with_name(self.path.name + ".journal")

    def add(self, record: BanRecord) -> None:
        """Record ``record`` unless a later-expiring ban of the same network is already there; it goes to the journal
        at the next :meth:`save`.
        """
        current = self.records.get(record.network)
        if current is None or record.expires > current.expires:
            self.records[record.network] = record
            self._pending.append(json.dumps(asdict(record), separators=(",", ":")))

    def remove(self, network: str) -> bool:
        """Forget the ban of ``network``; True if there was one."""
        found = self.records.pop(network, None) is not None
        if found:
            self._pending.append(json.dumps({"remove": network}))
        return found

    def active(self, now: float) -> list[BanRecord]:
        """The unexpired bans at ``now``, soonest expiry first."""
        return sorted((r for r in self.records.values() if r.expires > now), key=lambda r: r.expires)

    def prune(self, now: float) -> int:
        """Drop the bans expired at ``now``; how many were dropped."""
        expired = [n for n, r in self.records.items() if r.expires <= now]
        for n in expired:
            del self.records[n]
        return len(expired)

    def load(self, now: float) -> int:
        """Read the state file and its journal; return how many unexpired bans were restored.

        Raises :class:`StateError` (after moving the file aside) if it is corrupt.
        """
        if self.path is None:
            return 0
        records: list[BanRecord] = []
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
                raise StateError(f"{self.path}: unreadable ban state ({e}); moved to {aside}") from None
        for r in records:
            self.records[r.network] = r
        self._journaled = self._replay()
        self.prune(now)
        self._pending = []
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

    def save(self, now: float, compact: bool | None = None) -> None:
        """Persist what changed: append to the journal, or rewrite the file (see the class)."""
        if self.path is None:
            return
        journal = self.journal
        assert journal is not None
        if compact is None:
            compact = not self.path.exists() or self._journaled + len(self._pending) >= max(64, len(self.records))
        if not compact:
            if self._pending:
                with journal.open("a", encoding="utf-8") as f:
                    f.write("\n".join(self._pending) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                self._journaled += len(self._pending)
                self._pending = []
            return
        self.prune(now)
        payload = {"version": VERSION, "saved": now, "bans": [asdict(r) for r in self.active(now)]}
        atomic_write(self.path, json.dumps(payload, separators=(",", ":")))
        if journal.exists():
            journal.unlink()
        self._journaled = 0
        self._pending = []
