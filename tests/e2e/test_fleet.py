"""The fleet end to end: redis-server in one namespace, three hosts in theirs, each with its own
ipsets and state; propagation is timed from host 1's ban to the entry in the peers' kernel sets."""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inspector.manual import parse_target

from .bed import percentile
from .fleet_bed import FleetBed, wait_until, why_not

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(why_not() is not None, reason=why_not() or "")]

WHITELIST2 = "203.0.113.0/24"  # host 2's whitelist


def addresses(base: str, n: int) -> list[str]:
    start = ipaddress.ip_address(base)
    return [str(start + i) for i in range(n)]


@pytest.fixture
def fleet(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[FleetBed]:
    bed = FleetBed(tmp_path)
    try:
        bed.up()
        bed.start(1)
        bed.start(2, whitelist=(WHITELIST2,))
        bed.start(3)
        yield bed
    finally:
        if getattr(getattr(request.node, "rep_call", None), "failed", False):
            print(bed.redis.log()[-1500:] if bed.redis is not None else "")
            for proc in bed.procs.values():
                print(proc.tail())
        bed.close()


def test_a_thousand_bans_reach_the_peers_kernel_sets(fleet: FleetBed) -> None:
    nets = addresses("198.18.64.0", 900) + [f"2001:db8:{i:x}::/64" for i in range(1, 101)]
    issued = fleet.procs[1].ask(cmd="ban", nets=nets, seconds=3600, pace=0.002)["issued"]
    assert all(ok for *_, ok in issued)
    t_issue = {net: t for net, t, _, _ in issued}
    assert wait_until(lambda: set(nets) <= fleet.kernel(2) and set(nets) <= fleet.kernel(3), 60)
    delays = []
    for i in (2, 3):
        applied = fleet.procs[i].ask(cmd="applied")["applied"]
        delays += [applied[n] - t_issue[n] for n in nets]
    p50, p99, worst = percentile(delays, 50), percentile(delays, 99), max(delays)
    print(f"\nfleet propagation of {len(nets)} bans (500/s) to 2 peers' kernel sets: "
          f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, max {worst * 1000:.1f} ms")
    assert p99 < 1.0  # the issue's target; measured far below it (see the print)
    # (the count follows the kernel add)
    assert wait_until(lambda: fleet.procs[2].ask(cmd="status")["status"]["received"] == len(nets), 10)
    assert fleet.procs[2].ask(cmd="status")["status"]["connected"]


def test_unban_lifts_everywhere_and_a_manual_range_arrives_as_networks(fleet: FleetBed) -> None:
    networks = parse_target("198.51.100.10-198.51.100.20")
    assert len(networks) == 4
    fleet.procs[1].ask(cmd="ban", nets=networks + ["198.51.100.77"], seconds=3600)
    want = set(networks) | {"198.51.100.77"}
    assert wait_until(lambda: all(want <= fleet.kernel(i) for i in (1, 2, 3)), 20)
    fleet.procs[1].ask(cmd="unban", net="198.51.100.12/30")
    assert wait_until(lambda: all("198.51.100.12/30" not in fleet.kernel(i) for i in (1, 2, 3)), 20)
    assert all(want - {"198.51.100.12/30"} <= fleet.kernel(i) for i in (1, 2, 3))


def test_a_peers_ban_of_a_whitelisted_network_or_own_address_is_refused_there_applied_elsewhere(
        fleet: FleetBed) -> None:
    protected = ["203.0.113.9", "203.0.112.0/23", "198.18.2.2"]  # whitelisted, covering it, host 2's own address
    fleet.procs[1].ask(cmd="ban", nets=protected + ["198.51.100.99"], seconds=3600)
    assert wait_until(lambda: set(protected) | {"198.51.100.99"} <= fleet.kernel(3), 20)
    assert wait_until(lambda: "198.51.100.99" in fleet.kernel(2), 20)
    assert not set(protected) & fleet.kernel(2)
    assert fleet.procs[2].ask(cmd="applied")["refused"] == protected
    assert fleet.procs[2].ask(cmd="status")["status"]["refused"] == 3


def test_a_stopped_host_catches_up_on_restart_missing_nothing(fleet: FleetBed) -> None:
    fleet.procs[1].ask(cmd="ban", nets=["198.51.100.1"])
    assert wait_until(lambda: "198.51.100.1" in fleet.kernel(3), 20)
    fleet.stop(3)
    nets = addresses("198.18.128.0", 500)
    fleet.procs[1].ask(cmd="ban", nets=nets, seconds=3600)
    assert wait_until(lambda: set(nets) <= fleet.kernel(2), 30)
    assert not set(nets) & fleet.kernel(3)
    fleet.start(3)
    wait_until(lambda: set(nets) <= fleet.kernel(3), 30)
    missed = set(nets) - fleet.kernel(3)
    print(f"\nhost 3 back after 500 bans: missed = {len(missed)}")
    assert missed == set()
    assert fleet.procs[3].ask(cmd="status")["status"]["resyncs"] == 0  # resumed from its id


def test_a_host_away_longer_than_the_stream_keeps_resyncs_and_no_expired_ban_returns(tmp_path: Path) -> None:
    bed = FleetBed(tmp_path)
    try:
        bed.up()
        bed.start(1, keep=1)
        bed.start(3, keep=1)
        bed.procs[1].ask(cmd="ban", nets=["198.51.100.1"])
        assert wait_until(lambda: "198.51.100.1" in bed.kernel(3), 20)
        bed.stop(3)
        short = addresses("198.18.130.0", 150)
        long = addresses("198.18.131.0", 150)
        bed.procs[1].ask(cmd="ban", nets=short, seconds=2)
        bed.procs[1].ask(cmd="ban", nets=long, seconds=3600)
        time.sleep(2.5)  # the short bans have expired; every entry so far is older than keep
        later = addresses("198.18.132.0", 250)
        bed.procs[1].ask(cmd="ban", nets=later, seconds=3600)
        assert wait_until(lambda: bed.procs[1].ask(cmd="status")["status"]["outbox"] == 0, 20)
        bed.start(3, keep=1)
        want = set(long) | set(later)
        assert wait_until(lambda: want <= bed.kernel(3), 30)
        assert not set(short) & bed.kernel(3)
        assert bed.procs[3].ask(cmd="status")["status"]["resyncs"] == 1
    finally:
        bed.close()


def test_redis_down_local_bans_as_fast_outbox_grows_and_converges(fleet: FleetBed) -> None:
    assert fleet.redis is not None
    up = fleet.procs[1].ask(cmd="ban", nets=addresses("198.18.140.0", 300))["issued"]
    fleet.redis.stop()
    assert wait_until(lambda: not fleet.procs[1].ask(cmd="status")["status"]["connected"], 20)
    nets = addresses("198.18.141.0", 300)
    down = fleet.procs[1].ask(cmd="ban", nets=nets)["issued"]
    assert set(nets) <= fleet.kernel(1)  # applied locally at once
    depth = fleet.procs[1].ask(cmd="status")["status"]["outbox"]
    t_up = sorted(d for _, _, d, _ in up)
    t_down = sorted(d for _, _, d, _ in down)
    print(f"\nlocal ban (pipeline + kernel set) with Redis up: p50 {t_up[150] * 1e6:.0f} us, "
          f"p99 {t_up[296] * 1e6:.0f} us; Redis down: p50 {t_down[150] * 1e6:.0f} us, "
          f"p99 {t_down[296] * 1e6:.0f} us; outbox {depth}")
    assert depth >= 290
    assert t_down[150] < 3 * t_up[150] + 0.0005  # no wait on Redis in the ban path
    fleet.redis.start()
    assert wait_until(lambda: all(set(nets) <= fleet.kernel(i) for i in (2, 3)), 30)
    # (peers may read an entry before the publisher has taken it off its outbox)
    assert wait_until(lambda: fleet.procs[1].ask(cmd="status")["status"]["outbox"] == 0, 10)
