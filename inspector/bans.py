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
    network: str
    expires: float
    reason: str
    rule: str | None = None
    added: float = 0.0


class BanStore:
    """Bans by network, with their expiry; ``save()`` persists them."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.records: dict[str, BanRecord] = {}

    def add(self, record: BanRecord) -> None:
        current = self.records.get(record.network)
        if current is None or record.expires > current.expires:
            self.records[record.network] = record

    def remove(self, network: str) -> bool:
        return self.records.pop(network, None) is not None

    def active(self, now: float) -> list[BanRecord]:
        return sorted((r for r in self.records.values() if r.expires > now), key=lambda r: r.expires)

    def prune(self, now: float) -> int:
        expired = [n for n, r in self.records.items() if r.expires <= now]
        for n in expired:
            del self.records[n]
        return len(expired)

    def load(self, now: float) -> int:
        """Read the state file; return how many unexpired bans were restored.

        Raises :class:`StateError` (after moving the file aside) if it is corrupt.
        """
        if self.path is None or not self.path.exists():
            return 0
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or data.get("version") != VERSION:
                raise ValueError(f"unknown state format (version {data.get('version') if isinstance(data, dict) else '?'})")
            records = [BanRecord(**r) for r in data["bans"]]
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(now)}")
            os.replace(self.path, aside)
            raise StateError(f"{self.path}: unreadable ban state ({e}); moved to {aside}") from None
        restored = 0
        for r in records:
            if r.expires > now:
                self.add(r)
                restored += 1
        return restored

    def save(self, now: float) -> None:
        """Write the unexpired bans atomically."""
        if self.path is None:
            return
        self.prune(now)
        payload = {"version": VERSION, "saved": now, "bans": [asdict(r) for r in self.active(now)]}
        atomic_write(self.path, json.dumps(payload, separators=(",", ":")))
