"""The fleet through ``inspector run``: two hosts each run the service with a ``[fleet]`` section
(host 1 as a supervisor with two workers, host 2 in one process);
``inspector ban RANGE`` on host 1 reaches host 2's kernel set as networks, ``inspector bans`` there
names the origin host and the reason, ``inspector status`` shows the fleet, and ``inspector unban``
lifts the range everywhere."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..redis_server import RedisServer
from .bed import BLOCKED, CLIENTS, Bed, ban_network
from .fleet_bed import REPO, FleetBed, wait_until, why_not

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(why_not() is not None, reason=why_not() or "")]


def _nfqueue() -> str | None:
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        return "needs NetfilterQueue (the 'live' extra)"
    return None


class ServiceHost:
    def __init__(self, bed: FleetBed, i: int, tmp: Path, workers: int = 1) -> None:
        self.bed, self.i = bed, i
        self.dir = tmp / f"svc{i}"
        self.dir.mkdir()
        self.log = self.dir / "auth.log"
        self.log.write_text("")
        self.config = self.dir / "inspector.toml"
        self.config.write_text(
            f'[service]\nqueue = {40 + 10 * i}\nworkers = {workers}\nstate_file = "{self.dir}/bans.json"\n'
            f'events = "{self.dir}/events.jsonl"\nsyslog = false\ncontrol_socket = "{self.dir}/control.sock"\n'
            f'[fleet]\nurl = "{bed.url(i)}"\nhost = "mx{i}"\n'
            f'[logs]\npoll_interval = 0.1\n[[logs.source]]\npath = "{self.log}"\nfilter = "sshd"\nmaxretry = 2\n')
        self.err = (self.dir / "stderr").open("wb")
        self.proc = subprocess.Popen(["ip", "netns", "exec", bed.ns[i], sys.executable, "-m", "inspector", "run",
                                      "--config", str(self.config)], cwd=REPO, stdin=subprocess.DEVNULL,
                                     stdout=self.err, stderr=self.err)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ip", "netns", "exec", self.bed.ns[self.i], sys.executable, "-m", "inspector", *args,
                               "--config", str(self.config)], cwd=REPO, capture_output=True, text=True, timeout=30)

    def status(self) -> dict[str, Any]:
        r = self.cli("status", "--json")
        try:
            reply = json.loads(r.stdout)
        except ValueError:
            return {}
        return reply if isinstance(reply, dict) else {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.err.close()

    def tail(self) -> str:
        return (self.dir / "stderr").read_text(errors="replace")[-3000:]


@pytest.fixture
def services(tmp_path: Path) -> Iterator[tuple[FleetBed, ServiceHost, ServiceHost]]:
    reason = _nfqueue()
    if reason:
        pytest.skip(reason)
    bed = FleetBed(tmp_path, hosts=2)
    hosts: list[ServiceHost] = []
    try:
        bed.up()
        hosts = [ServiceHost(bed, 1, tmp_path, workers=2), ServiceHost(bed, 2, tmp_path)]
        for h in hosts:
            ok = wait_until(lambda h=h: h.proc.poll() is not None or h.status().get("fleet", {}).get("connected"), 30)
            assert ok and h.proc.poll() is None, h.tail()
        yield bed, hosts[0], hosts[1]
    finally:
        for h in hosts:
            h.stop()
        bed.close()


def test_manual_range_ban_through_the_service_reaches_the_peer_and_unban_lifts_it(
        services: tuple[FleetBed, ServiceHost, ServiceHost]) -> None:
    bed, mx1, mx2 = services
    r = mx1.cli("ban", "198.51.100.10-198.51.100.20", "--time", "2h", "--reason", "spam run")
    assert r.returncode == 0, r.stdout + r.stderr + mx1.tail()
    networks = {"198.51.100.10/31", "198.51.100.12/30", "198.51.100.16/30", "198.51.100.20"}
    assert {line.split()[1] for line in r.stdout.splitlines()} == networks
    assert wait_until(lambda: networks <= bed.kernel(2), 20), mx2.tail()
    assert networks <= bed.kernel(1)
    bans = [json.loads(line) for line in mx2.cli("bans", "--json").stdout.splitlines()]
    got = {b["network"]: b for b in bans}
    assert set(got) == networks
    assert {(b["origin"], b["reason"], b["rule"]) for b in bans} == {("mx1", "manual", "spam run")}
    assert 7000 < got["198.51.100.20"]["seconds_left"] <= 7200
    # (the counts follow the kernel add and the publish)
    assert wait_until(lambda: mx2.status()["fleet"]["received"] == 4 and mx1.status()["fleet"]["published"] == 4, 10)
    fleet = mx2.status()["fleet"]
    assert fleet["connected"] and fleet["host"] == "mx2"
    assert "fleet: CONNECTED as mx2" in mx2.cli("status").stdout
    # the host's own address is never banned, by hand either
    r = mx1.cli("ban", "198.18.1.2")
    assert r.returncode == 1 and "own address" in r.stderr
    r = mx1.cli("unban", "198.51.100.10-198.51.100.20")
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: not networks & (bed.kernel(1) | bed.kernel(2)), 20), mx2.tail()
    assert mx2.cli("bans", "--json").stdout.strip() == ""


def test_a_log_ban_on_one_service_reaches_the_other(services: tuple[FleetBed, ServiceHost, ServiceHost]) -> None:
    bed, mx1, mx2 = services
    with mx1.log.open("a") as f:
        for i in range(2):
            f.write(f"Nov 30 10:00:0{i} mx1 sshd[{100 + i}]: Failed password for root from 198.51.100.50 "
                    f"port {40000 + i} ssh2\n")
    assert wait_until(lambda: "198.51.100.50" in bed.kernel(2), 20), mx1.tail() + mx2.tail()
    bans = {b["network"]: b for b in (json.loads(x) for x in mx2.cli("bans", "--json").stdout.splitlines())}
    assert (bans["198.51.100.50"]["origin"], bans["198.51.100.50"]["reason"]) == ("mx1", "log:sshd")
    # host 2 applied it from the fleet and did not publish it again
    assert mx2.status()["fleet"]["published"] == 0


def test_a_packet_ban_in_a_worker_is_published_to_the_stream(bed: Bed) -> None:
    """The packet path: a worker's ban reaches the supervisor's pipeline and the fleet publishes it."""
    if _nfqueue():
        pytest.skip(_nfqueue() or "")
    redis = RedisServer(bed.server, port=6390, bind="127.0.0.1")
    try:
        redis.start()
        bed.write_config(extra=f'[fleet]\nurl = "{redis.url("127.0.0.1")}"\nhost = "mx-packet"\n')
        bed.start_inspector("--workers", "2")
        for src in (CLIENTS[4]["a"], CLIENTS[6]["a"]):
            r = bed.smtp(src, [f"user@{BLOCKED}"])
            assert not r["delivered"], r
        want = {CLIENTS[4]["a"], ban_network(CLIENTS[6]["a"])}

        def published() -> set[str]:
            return {f["net"] for _, f in redis.admin().xrange("inspector:bans") if f["reason"] == "domain"}

        assert wait_until(lambda: published() == want, 10), published()
        entries = [f for _, f in redis.admin().xrange("inspector:bans")]
        assert {(f["origin"], f["rule"], f["op"]) for f in entries} == {("mx-packet", BLOCKED, "ban")}
    finally:
        if bed.inspector is not None and bed.inspector.alive():
            bed.stop_inspector()
        redis.close()
