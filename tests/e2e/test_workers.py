"""Several workers (one queue each) behind one supervisor, on the real kernel."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from inspector.bans import BanStore
from inspector.control import control_request

from .bed import BLOCKED, Bed, wait_for

pytestmark = pytest.mark.e2e

SOURCES = [f"198.51.100.{i}" for i in range(40, 56)]


def status(bed: Bed) -> dict:
    # the control socket is a path: reachable from outside the namespace
    reply = control_request(str(bed.control_socket), {"cmd": "status"})
    assert reply is not None and reply["ok"], reply
    return reply


def bound_queues(bed: Bed) -> list[str]:
    lines = bed.s("cat", "/proc/net/netfilter/nfnetlink_queue").stdout.splitlines()
    return [f.split()[0] for f in lines if f.strip() and f.split()[1] != "0"]


@pytest.fixture
def two_workers(bed: Bed) -> Bed:
    bed.setup("install", "--workers", "2", "--queue", "0", "--ports", "25,22", "--no-ssh-whitelist")
    bed.start_inspector()
    return bed


def test_installed_rules_tell_the_service_how_many_workers(two_workers: Bed) -> None:
    started = two_workers.wait_event(event="started")
    assert started["workers"] == 2 and started["fail_open"] is True
    assert bound_queues(two_workers) == ["0", "1"]


def test_blocks_and_bans_from_many_sources_across_workers(two_workers: Bed) -> None:
    bed = two_workers
    bed.add_client_addresses(SOURCES)
    for src in SOURCES:
        r = bed.smtp(src, [f"x@{BLOCKED}"], timeout=3)
        assert not r["delivered"], (src, r)
    for src in SOURCES:
        wait_for(lambda s=src: bed.banned(s) is not None, 3, what=f"{src} banned")
    wait_for(lambda: status(bed)["bans_active"] == len(SOURCES), 3, what="the supervisor holds every ban")

    def resets() -> dict[int, int]:  # workers report their counts once a second
        return {int(i): w["counts"].get("reset", 0) for i, w in status(bed)["per_worker"].items()}
    wait_for(lambda: sum(resets().values()) == len(SOURCES), 3, what="every worker reported")
    per_worker = resets()
    assert all(n > 0 for n in per_worker.values()), f"the kernel spreads 16 sources over both queues: {per_worker}"

    def saved() -> int:  # the state file and its journal, as a restart reads them
        store = BanStore(bed.state_file)
        return store.load(time.time())
    wait_for(lambda: saved() == len(SOURCES), 3, what="bans saved")


def test_a_dead_worker_is_restarted(two_workers: Bed) -> None:
    bed = two_workers
    assert bed.inspector is not None
    supervisor = bed.inspector.pid
    pids = [int(p) for p in bed.s("pgrep", "-P", str(supervisor)).stdout.split()]
    workers = [p for p in pids if "inspector" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) == 2, pids
    os.kill(workers[-1], signal.SIGKILL)
    bed.wait_event(event="error", what="worker-exit")
    wait_for(lambda: bound_queues(bed) == ["0", "1"], 5, what="both queues bound again")
    for src in ("198.51.100.10", "198.51.100.11"):
        r = bed.smtp(src, [f"x@{BLOCKED}"], timeout=3)
        assert not r["delivered"], (src, r)
