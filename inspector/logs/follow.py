"""Following log files like ``tail -F``, without threads: ``poll()`` returns the new lines.

* Starts at the end of an existing file by default (``from_start`` reads it
  whole); a file that appears later, or the new file after a rotation, is
  read from its start.  A missing file is waited for.
* Rotation by rename (the path's inode changes): the old file is read to its
  end first, then kept open and drained for ``linger`` more polls (a daemon
  writes to it until it reopens its log); the new file is read once the old
  one is at its end.  No line is lost or read twice -- unless a file is
  created and rotated away again between two polls, which the path never
  shows (``tail -F`` has the same limit).
* ``copytruncate`` (the file shrinks below what was read): read again from 0.
  Lines the daemon wrote between the copy and the truncation, and a file
  that regrew past the old offset before the next poll, are beyond any
  reader's reach: prefer rename rotation.
* A partial last line waits for its newline; a line longer than ``max_line``
  bytes is counted (``too-long``) and skipped; bytes that are not UTF-8 are
  replaced (U+FFFD), never fatal.
* One poll reads at most ``read_max`` bytes, so a burst never stalls the
  caller's loop; the rest comes with the next poll.

The service's select loop calls ``poll()`` every tick (0.2-0.5 s).
:class:`inspector.logs.journal.JournalFollower` does the same for the systemd
journal.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["LineSplitter", "FileFollower", "MAX_LINE", "TOO_LONG"]

MAX_LINE = 16384
_CHUNK = 1 << 20
TOO_LONG = "\x00<line too long>"  # in place of a skipped line, with ``LineSplitter(mark=True)``


class LineSplitter:
    """Bytes in, complete decoded lines out (``\\n`` or ``\\r\\n``), with the long-line cap."""

    __slots__ = ("max_line", "too_long", "mark", "_buf", "_skip")

    def __init__(self, max_line: int = MAX_LINE, mark: bool = False) -> None:
        self.max_line = max_line
        self.too_long = 0
        self.mark = mark  # put TOO_LONG where a line was skipped (keeps line numbers right)
        self._buf = b""
        self._skip = False  # discarding up to the next newline

    @property
    def pending(self) -> int:
        """Bytes of an unfinished line held back."""
        return len(self._buf)

    def skip_partial(self) -> None:
        """Drop everything up to the next newline (we start in the middle of a line)."""
        self._buf = b""
        self._skip = True

    def reset(self) -> None:
        """Forget the partial line and stop skipping (a new file starts at a line)."""
        self._buf = b""
        self._skip = False

    def feed(self, data: bytes) -> list[str]:
        """The complete lines in ``data`` plus what was buffered before it, decoded as UTF-8 (bad bytes replaced); a
        partial last line waits for the next call, a line over ``max_line`` bytes is skipped and counted.
        """
        if self._skip:
            i = data.find(b"\n")
            if i < 0:
                return []
            data = data[i + 1:]
            self._skip = False
        if self._buf:
            data = self._buf + data
        end = data.rfind(b"\n")
        if end < 0:
            self._buf = data
            if len(data) > self.max_line:
                self.too_long += 1
                self.skip_partial()
                return [TOO_LONG] if self.mark else []
            return []
        rest = data[end + 1:]
        overflow = len(rest) > self.max_line
        if overflow:
            self.too_long += 1
            self._buf = b""
            self._skip = True
        else:
            self._buf = rest
        # a newline byte never occurs inside a UTF-8 sequence: decode the whole run at once
        text = data[:end].decode("utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n")
            if text.endswith("\r"):
                text = text[:-1]
        lines = text.split("\n")
        if max(map(len, lines)) > self.max_line:
            limit = self.max_line
            if self.mark:
                lines = [line if len(line) <= limit else TOO_LONG for line in lines]
                self.too_long += lines.count(TOO_LONG)
            else:
                kept = [line for line in lines if len(line) <= limit]
                self.too_long += len(lines) - len(kept)
                lines = kept
        if overflow and self.mark:
            lines.append(TOO_LONG)
        return lines

    def flush(self) -> list[str]:
        """The unfinished line, as a line (the file will not grow any more)."""
        buf, self._buf = self._buf, b""
        self._skip = False
        return [buf.decode("utf-8", "replace").rstrip("\r")] if buf else []


class _Open:
    __slots__ = ("fd", "dev", "ino", "pos", "lines", "idle")

    def __init__(self, fd: int, st: os.stat_result, max_line: int) -> None:
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.pos = 0
        self.lines = LineSplitter(max_line)
        self.idle = 0


class FileFollower:
    """Follows one path across rotations; see the module docstring."""

    def __init__(self, path: str | Path, from_start: bool = False, max_line: int = MAX_LINE,
                 read_max: int = 4 << 20, linger: int = 20) -> None:
        self.path = str(path)
        self.max_line = max_line
        self.read_max = read_max
        self.linger = linger
        self.counts: Counter[str] = Counter()
        self.error: str | None = None  # why the path cannot be read right now
        self._cur: _Open | None = None
        self._old: list[_Open] = []
        self._open(at_end=not from_start)

    # -- public -------------------------------------------------------------------

    def poll(self) -> list[str]:
        """The complete lines written since the last poll, in order."""
        out: list[str] = []
        budget = [self.read_max]
        behind = False  # a rotated file still has unread data: the current one must wait
        for old in list(self._old):  # rotated files first: their lines are older
            n, eof = self._drain(old, out, budget)
            if not eof:
                behind = True
                old.idle = 0
            elif n:
                old.idle = 0
            else:
                old.idle += 1
                if old.idle >= self.linger:
                    out.extend(old.lines.flush())
                    self._close(old)
                    self._old.remove(old)
        if self._cur is None:
            self._open(at_end=False)
        cur = self._cur
        if cur is not None:
            eof = False
            if not behind:
                eof = self._drain(cur, out, budget)[1]
            self._check_path(cur, eof and not behind, out, budget)
        self.counts["lines"] += len(out)
        return out

    def _check_path(self, cur: _Open, at_eof: bool, out: list[str], budget: list[int]) -> None:
        """Rotation (another file at the path) or truncation (the file shrank)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return  # renamed away, the new one not created yet: keep reading the old
        except OSError as e:
            self.error = f"{self.path}: {e.strerror or e}"
            return
        if (st.st_ino, st.st_dev) != (cur.ino, cur.dev):
            self.counts["rotations"] += 1
            eof = at_eof and self._drain(cur, out, budget)[1]  # written between our read and the rename
            self._old.append(cur)
            self._cur = None
            if self._open(at_end=False) and eof:
                self._drain(self._cur, out, budget)  # type: ignore[arg-type]
            return
        try:
            size = os.fstat(cur.fd).st_size
        except OSError:
            return
        if size < cur.pos:  # copytruncate
            self.counts["truncations"] += 1
            os.lseek(cur.fd, 0, os.SEEK_SET)
            cur.pos = 0
            cur.lines.reset()
            if at_eof:
                self._drain(cur, out, budget)

    @property
    def state(self) -> str:
        """``error`` (cannot open or read the path), ``reading`` (open) or ``waiting`` (no file yet)."""
        if self.error:
            return "error"
        return "reading" if self._cur is not None else "waiting"

    @property
    def too_long(self) -> int:
        """Lines skipped for being over ``max_line`` bytes, in every file read so far."""
        return sum(o.lines.too_long for o in self._files()) + self.counts["too-long-closed"]

    def stats(self) -> dict[str, Any]:
        """Path, state, open files and counters, for ``status``."""
        return {"path": self.path, "state": self.state, "open": self._cur is not None, "rotated_open": len(self._old),
                "too_long": self.too_long, "error": self.error, **dict(self.counts)}

    def close(self) -> None:
        """Close every open file (the current one and rotated ones still drained)."""
        for o in self._files():
            self._close(o)
        self._cur = None
        self._old = []

    # -- internals --------------------------------------------------------------------

    def _files(self) -> list[_Open]:
        return self._old + ([self._cur] if self._cur is not None else [])

    def _open(self, at_end: bool) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            self.error = None
            return False
        except OSError as e:
            self.error = f"{self.path}: {e.strerror or e}"
            self.counts["open-errors"] += 1
            return False
        st = os.fstat(fd)
        cur = _Open(fd, st, self.max_line)
        if at_end and st.st_size:
            cur.pos = os.lseek(fd, 0, os.SEEK_END)
            if os.pread(fd, 1, cur.pos - 1) != b"\n":
                cur.lines.skip_partial()  # start with the next whole line
        self._cur = cur
        self.error = None
        self.counts["opens"] += 1
        return True

    def _drain(self, f: _Open, out: list[str], budget: list[int]) -> tuple[int, bool]:
        """Read ``f`` to its end or the budget; return the bytes read and whether the end was reached."""
        total = 0
        while budget[0] > 0:
            try:
                data = os.read(f.fd, min(_CHUNK, budget[0]))
            except BlockingIOError:
                return total, True
            except OSError as e:
                self.error = f"{self.path}: {e.strerror or e}"
                return total, True
            if not data:
                return total, True
            f.pos += len(data)
            total += len(data)
            budget[0] -= len(data)
            out.extend(f.lines.feed(data))
        return total, False

    def _close(self, f: _Open) -> None:
        self.counts["too-long-closed"] += f.lines.too_long
        f.lines.too_long = 0
        with contextlib.suppress(OSError):
            os.close(f.fd)
