"""Following the systemd journal: :class:`JournalFollower` returns new entries as syslog-like lines.

The counterpart of :class:`inspector.logs.follow.FileFollower` for hosts that log to journald
only (stock Debian 12 without rsyslog).  It needs the systemd project's Python binding
(``systemd-python``), which is optional: :func:`journal_available` says whether it is there.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write
from .follow import MAX_LINE

__all__ = ["JournalFollower", "journal_available", "parse_matches", "JOURNAL_MISSING"]


def journal_available() -> bool:
    """Whether the systemd project's Python binding (PyPI ``systemd-python``) can be imported."""
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        return False
    return True


JOURNAL_MISSING = ("the systemd Python binding is not installed (scripts/bootstrap.sh installs it: "
                   "pip install 'inspector[journal]', which builds against libsystemd-dev and pkg-config)")


def parse_matches(matches: tuple[str, ...] | list[str]) -> list[list[str]]:
    """``["F=v", "G=w", "+", "H=x"]`` -> ``[["F=v", "G=w"], ["H=x"]]``: journalctl's syntax.

    Within a group, matches on one field are alternatives and different
    fields must all hold; ``"+"`` separates groups, any of which may hold
    (``sd_journal_add_match(3)``, ``sd_journal_add_disjunction``).
    """
    groups: list[list[str]] = [[]]
    for m in matches:
        if m == "+":
            groups.append([])
        else:
            groups[-1].append(m)
    return [g for g in groups if g]


class JournalFollower:
    """New journal entries as syslog-like lines (``<RFC 3339 UTC time> <host> <ident>[<pid>]: <message>``).

    Reads with the systemd project's binding (``sd-journal``): the local
    system journal, or the journal files in ``directory``.  ``matches`` are
    journal field matches such as ``_SYSTEMD_UNIT=ssh.service`` (see
    :func:`parse_matches`).  Built-in filters match the trusted
    ``_SYSTEMD_UNIT`` field, which journald sets itself: a local user's
    ``logger -t sshd ...`` cannot forge an sshd failure.

    Where to start: after the entry named in ``cursor_file`` when there is
    one (so a restart reads every entry written meanwhile, none twice); else
    the journal's start with ``from_start``, or its end.  Each ``poll()``
    that read entries stores the cursor of the last one (atomically).
    ``poll()`` reads at most ``read_max`` entries; the rest come next time.
    Raises :class:`ImportError` when the binding is missing, :class:`OSError`
    when the journal cannot be opened.
    """

    def __init__(self, matches: tuple[str, ...] | list[str], from_start: bool = False,
                 directory: str | None = None, cursor_file: str | Path | None = None,
                 max_line: int = MAX_LINE, read_max: int = 20000) -> None:
        from systemd import journal

        self.matches = tuple(matches)
        self.directory = directory
        self.path = "journal:" + (f"{directory}:" if directory else "") + ",".join(matches)
        self.cursor_file = Path(cursor_file) if cursor_file is not None else None
        self.max_line = max_line
        self.read_max = read_max
        self.counts: Counter[str] = Counter()
        self.error: str | None = None
        self.too_long = 0
        self.cursor: str | None = None  # the last entry read
        self._saved: str | None = None  # the cursor in cursor_file
        self._stamps: dict[int, str] = {}
        self._check_cursor = False  # the first entry after a seek to the cursor may be that entry
        self._reader = journal.Reader(path=directory) if directory else journal.Reader()
        # sd_journal_get_fd() starts the inotify watch that lets process() see new and rotated
        # journal files (sd_journal_get_fd(3)); without it a file created later is never read
        self._reader.fileno()
        for i, group in enumerate(parse_matches(self.matches)):
            if i:
                self._reader.add_disjunction()
            for m in group:
                self._reader.add_match(m)
        if not self._resume():
            if from_start:
                self._reader.seek_head()
            else:
                # at the last matching entry, so the next _next() is the first new one; with no match
                # yet, the head (a bare seek_tail would skip the first entry written after it: measured)
                self._reader.seek_tail()
                if not self._reader._previous():
                    self._reader.seek_head()

    def _resume(self) -> bool:
        """Position after the stored cursor; False when there is none (or it is unusable)."""
        if self.cursor_file is None:
            return False
        try:
            saved = self.cursor_file.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return False
        except (OSError, UnicodeDecodeError) as e:
            self.error = f"{self.cursor_file}: cannot read the journal cursor: {e}"
            self.counts["cursor-errors"] += 1
            return False
        if not saved:
            return False
        try:
            self._reader.seek_cursor(saved)
        except (OSError, ValueError):
            self.counts["cursor-errors"] += 1
            return False
        self._saved = self.cursor = saved
        self._check_cursor = True
        return True

    @property
    def state(self) -> str:
        """``error``, ``waiting`` (no journal files yet: journald not running) or ``reading``."""
        if self.error:
            return "error"
        return "reading" if self.cursor is not None or self._has_files() else "waiting"

    def _has_files(self) -> bool:
        if self.directory is not None:
            try:
                return any(name.endswith((".journal", ".journal~")) for name in os.listdir(self.directory))
            except OSError:
                return False
        try:
            return bool(self._reader.has_runtime_files() or self._reader.has_persistent_files())
        except OSError:
            return False

    def _stamp(self, usec: int) -> str:
        sec = usec // 1_000_000
        base = self._stamps.get(sec)
        if base is None:
            if len(self._stamps) > 4096:
                self._stamps.clear()
            base = self._stamps[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return f"{base}.{usec % 1_000_000:06d}Z"

    def poll(self) -> list[str]:
        """The entries written since the last poll, as lines, in order."""
        r = self._reader
        out: list[str] = []
        r.process()  # notices new and rotated journal files
        get = r._get
        limit = self.max_line
        moved = False
        for _ in range(self.read_max):
            if not r._next():
                break
            moved = True
            if self._check_cursor:
                self._check_cursor = False
                if self.cursor is not None and r.test_cursor(self.cursor):
                    continue  # the entry the cursor names was read before the restart
                self.counts["cursor-gone"] += 1  # vacuumed: read on from the next one there is
            try:
                msg = get("MESSAGE")
            except KeyError:
                continue
            text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else str(msg)
            if "\n" in text or "\r" in text:  # one entry, one line: inner ones written as rsyslog escapes them
                text = text.rstrip("\r\n").replace("\r", "#015").replace("\n", "#012")
            if len(text) > limit:
                self.too_long += 1
                continue
            ident = _field(get, "SYSLOG_IDENTIFIER") or _field(get, "_COMM") or "-"
            pid = _field(get, "_PID") or _field(get, "SYSLOG_PID")
            out.append(f"{self._stamp(r._get_realtime())} {_field(get, '_HOSTNAME') or '-'} "
                       f"{ident}{f'[{pid}]' if pid else ''}: {text}")
        else:
            self.counts["read-max"] += 1
        if moved:
            with contextlib.suppress(OSError):
                self.cursor = r._get_cursor()
        self.counts["lines"] += len(out)
        self.save_cursor()
        return out

    def save_cursor(self) -> None:
        """Store the last entry's cursor in ``cursor_file`` (if it changed); errors are kept in ``error``."""
        if self.cursor_file is None or self.cursor is None or self.cursor == self._saved:
            return
        try:
            atomic_write(self.cursor_file, self.cursor + "\n", mode=0o600, encoding="ascii")
        except OSError as e:
            self.error = f"{self.cursor_file}: cannot store the journal cursor: {e.strerror or e}"
            self.counts["cursor-errors"] += 1
            return
        self._saved = self.cursor
        if self.error and "journal cursor" in self.error:
            self.error = None

    def stats(self) -> dict[str, Any]:
        """Matches, state, error and counters, for ``status``."""
        return {"path": self.path, "state": self.state, "too_long": self.too_long, "error": self.error,
                "cursor_file": str(self.cursor_file) if self.cursor_file else None, **dict(self.counts)}

    def close(self) -> None:
        """Save the cursor and close the journal."""
        self.save_cursor()
        self._reader.close()


def _field(get: Any, name: str) -> str:
    try:
        v = get(name)
    except KeyError:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
