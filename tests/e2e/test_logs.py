"""Log evidence end to end: a failure line in a followed log bans its source in the kernel."""

from __future__ import annotations

import statistics
import time

import pytest

from .bed import CLIENTS, Bed, wait_for

pytestmark = pytest.mark.e2e

LINE = "{ts} server sshd[{pid}]: Failed password for invalid user admin from {ip} port {port} ssh2\n"


def logs_config(bed: Bed, path: str) -> str:
    return f"""
[logs]
poll_interval = 0.1
[[logs.source]]
path = "{path}"
filter = "sshd"
maxretry = 2
findtime = 60
bantime = 3600
"""


def write_failures(log, ip: str, n: int) -> float:
    ts = time.strftime("%b %d %H:%M:%S")
    with log.open("a") as f:
        for i in range(n):
            f.write(LINE.format(ts=ts, pid=1000 + i, ip=ip, port=40000 + i))
    return time.monotonic()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_log_failures_ban_in_the_ipset(bed: Bed, workers: str) -> None:
    log = bed.dir / "auth.log"
    log.write_text("")
    bed.write_config(extra=logs_config(bed, str(log)))
    bed.setup("install", "--workers", workers, "--queue", "0", "--ports", "25,22", "--no-ssh-whitelist")
    bed.start_inspector("--workers", workers)
    a, b = CLIENTS[4]["a"], CLIENTS[4]["b"]
    assert bed.connect(a, 22, banner=True)["ok"]
    # loopback (a local webmail) and one failure below maxretry are never banned
    write_failures(log, "127.0.0.1", 5)
    write_failures(log, b, 1)
    delays = []
    for i, ip in enumerate([a, "198.51.100.12", "2001:db8:3::10"]):
        written = write_failures(log, ip, 2)
        wait_for(lambda ip=ip: bed.banned(ip) is not None, 3, interval=0.002, what=f"{ip} banned")
        delays.append(time.monotonic() - written)
    ban = bed.wait_event(event="ban", reason="log:sshd")
    assert ban["rule"] == "sshd" and ban["seconds"] == 3600
    assert 3590 <= bed.banned(a) <= 3600
    assert not bed.connect(a, 22, banner=True, timeout=1)["ok"]  # dropped in the kernel now
    assert bed.banned(b) is None and bed.banned("127.0.0.1") is None
    assert bed.connect(b, 22, banner=True)["ok"]
    print(f"\nlog line -> ipset entry ({workers} worker(s)): median {statistics.median(delays) * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms (poll every 100 ms)")
