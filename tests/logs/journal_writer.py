"""Journal files for tests, written by systemd's own ``systemd-journal-remote`` (export format on stdin)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

REMOTE = "/usr/lib/systemd/systemd-journal-remote"


def why_no_journal() -> str | None:
    """Why journal tests cannot run here (None: they can)."""
    if not os.path.exists(REMOTE):
        return f"needs {REMOTE} (Debian package systemd-journal-remote; scripts/bootstrap.sh installs it)"
    try:
        import systemd.journal  # noqa: F401
    except ImportError:
        return "needs the systemd Python binding (pip install '.[journal]'; scripts/bootstrap.sh installs it)"
    if shutil.which("journalctl") is None:
        return "needs journalctl"
    return None


def export_entry(message: str, unit: str = "ssh.service", ident: str = "sshd", pid: int = 4242,
                 when: float | None = None) -> bytes:
    """One entry in the journal export format (systemd's JOURNAL_EXPORT_FORMATS)."""
    usec = int((time.time() if when is None else when) * 1e6)
    # one boot, one monotonic clock for every writer: entries of several files interleave as journald's do
    fields = {"__REALTIME_TIMESTAMP": str(usec), "__MONOTONIC_TIMESTAMP": str(time.monotonic_ns() // 1000),
              "_BOOT_ID": "0123456789abcdef0123456789abcdef", "_HOSTNAME": "testhost", "_SYSTEMD_UNIT": unit,
              "SYSLOG_IDENTIFIER": ident, "_PID": str(pid), "MESSAGE": message}
    out = b""
    for k, v in fields.items():
        data = v.encode()
        if b"\n" in data:  # the export format's binary form: name, newline, 64-bit LE length, data
            out += k.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += k.encode() + b"=" + data + b"\n"
    return out + b"\n"


class JournalWriter:
    """A running ``systemd-journal-remote -o DIR/remote.journal -``: entries appear as they are written."""

    def __init__(self, directory: Path, name: str = "remote.journal") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / name
        self.proc = subprocess.Popen([REMOTE, "-o", str(self.path), "-"], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def write(self, message: str, **kw: object) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(export_entry(message, **kw))  # type: ignore[arg-type]
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
