#!/usr/bin/env python3
"""Journal readers side by side: the systemd Python binding vs ``journalctl --output=json``.

    python benchmarks/journal_read.py [--entries 200000]

Writes a journal file with systemd's own ``systemd-journal-remote`` (export
format on its standard input) in a temporary directory, then reads every
entry and formats it as the log monitor does (``<time> <host> <ident>[<pid>]:
<message>``), once with each reader: entries/s and CPU seconds (ours plus
journalctl's, from ``getrusage``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REMOTE = "/usr/lib/systemd/systemd-journal-remote"


def write_journal(directory: Path, entries: int) -> None:
    start = int(time.time() * 1e6) - entries
    proc = subprocess.Popen([REMOTE, "-o", str(directory / "bench.journal"), "-"], stdin=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    assert proc.stdin is not None
    buf = []
    for i in range(entries):
        buf.append(f"__REALTIME_TIMESTAMP={start + i}\n__MONOTONIC_TIMESTAMP={i + 1}\n"
                   f"_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=host\n_SYSTEMD_UNIT=ssh.service\n"
                   f"SYSLOG_IDENTIFIER=sshd\n_PID={1000 + i % 30000}\n"
                   f"MESSAGE=Failed password for invalid user u{i % 97} from 203.0.{i >> 8 & 255}.{i & 255} "
                   f"port {40000 + i % 20000} ssh2\n\n")
        if len(buf) >= 5000:
            proc.stdin.write("".join(buf).encode())
            buf = []
    proc.stdin.write("".join(buf).encode())
    proc.stdin.close()
    proc.wait()


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def read_binding(directory: Path) -> tuple[int, float, float]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from inspector.logs.journal import JournalFollower

    t0, c0 = time.perf_counter(), time.process_time()
    f = JournalFollower(("_SYSTEMD_UNIT=ssh.service",), from_start=True, directory=str(directory))
    n = 0
    while True:
        lines = f.poll()
        if not lines:
            break
        n += len(lines)
    f.close()
    return n, time.perf_counter() - t0, time.process_time() - c0


def read_journalctl(directory: Path) -> tuple[int, float, float]:
    t0, c0, k0 = time.perf_counter(), time.process_time(), children_cpu()
    proc = subprocess.Popen(["journalctl", "--directory", str(directory), "--output=json", "--no-pager",
                             "_SYSTEMD_UNIT=ssh.service"], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    n = 0
    loads = json.loads
    for raw in proc.stdout:
        e = loads(raw)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(int(e["__REALTIME_TIMESTAMP"]) / 1e6))
        ident = f"{e.get('SYSLOG_IDENTIFIER', '')}[{e.get('_PID', '')}]"
        line = f"{stamp} {e.get('_HOSTNAME', '-')} {ident}: {e['MESSAGE']}"
        n += bool(line)
    proc.wait()
    return n, time.perf_counter() - t0, time.process_time() - c0 + children_cpu() - k0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=200_000)
    args = ap.parse_args()
    if not os.path.exists(REMOTE):
        print(f"needs {REMOTE} (Debian package systemd-journal-remote)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        write_journal(d, args.entries)
        print(f"journal: {args.entries:,} entries written by systemd-journal-remote in {time.perf_counter() - t0:.1f}s")
        print(f"{'reader':24} {'entries':>9} {'entries/s':>10} {'wall s':>7} {'CPU s':>6}")
        for name, fn in (("systemd binding", read_binding), ("journalctl -o json", read_journalctl)):
            n, wall, cpu = fn(d)
            print(f"{name:24} {n:>9,} {round(n / cpu):>10,} {wall:>7.2f} {cpu:>6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
