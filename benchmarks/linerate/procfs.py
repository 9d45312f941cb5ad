"""Readers for the figures the benchmark reports, all from /proc.

* process CPU: ``utime + stime`` of ``/proc/PID/stat`` (every thread of the process, in clock
  ticks), and the peak resident set ``VmHWM`` of ``/proc/PID/status``;
* machine CPU: the first line of ``/proc/stat`` (busy = everything but idle and iowait);
* queue counters: ``/proc/PID/net/netfilter/nfnetlink_queue`` of any process inside the
  server namespace shows *that* namespace's queues (``/proc/PID/net`` follows the process's
  network namespace), so no subprocess is needed to read them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    fields = raw[raw.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # fields 14 and 15 of proc(5)


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out += [int(x) for x in f.read().split()]
            except OSError:
                pass
    except OSError:
        pass
    return out


def status_kb(pid: int, key: str) -> int | None:
    """A ``kB`` field of /proc/PID/status (VmHWM, VmRSS), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def machine_cpu() -> tuple[float, float]:
    """(busy seconds, total seconds) summed over every CPU, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    busy = total - fields[3] - fields[4]
    return busy / TICK, total / TICK


@dataclass(frozen=True)
class Queue:
    queue: int
    portid: int
    waiting: int
    queue_dropped: int
    user_dropped: int
    id_sequence: int


def queues(ns_pid: int) -> dict[int, Queue]:
    """The NFQUEUE instances of the namespace ``ns_pid`` lives in (empty if none is bound)."""
    try:
        with open(f"/proc/{ns_pid}/net/netfilter/nfnetlink_queue") as f:
            text = f.read()
    except FileNotFoundError:
        return {}
    out = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 8:
            q = Queue(int(f[0]), int(f[1]), int(f[2]), int(f[5]), int(f[6]), int(f[7]))
            out[q.queue] = q
    return out


def queue_totals(ns_pid: int) -> dict[str, int]:
    """Counters summed over the namespace's queues."""
    qs = queues(ns_pid).values()
    return {"id_sequence": sum(q.id_sequence for q in qs), "waiting": sum(q.waiting for q in qs),
            "queue_dropped": sum(q.queue_dropped for q in qs), "user_dropped": sum(q.user_dropped for q in qs),
            "bound": sum(1 for q in qs if q.portid)}


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after}
