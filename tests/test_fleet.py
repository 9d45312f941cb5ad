"""The fleet client against a real redis-server (in a namespace of its own, reached over its
UNIX socket), with in-memory ban pipelines standing for three hosts."""

from __future__ import annotations

import ipaddress
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from inspector.config import ConfigError, load_config
from inspector.fleet import FleetBan, FleetClient, FleetSettings

from .netns import namespace
from .redis_server import PASSWORD, RedisServer, why_not

pytestmark = pytest.mark.skipif(why_not() is not None, reason=why_not() or "")


@dataclass(frozen=True)
class Ban:
    """The pipeline's ban, as the shared contract defines it."""

    network: str
    seconds: int
    reason: str
    rule: str | None = None
    path: str = "packet"
    origin: str | None = None
    dport: int | None = None


class Pipeline:
    """A thread-safe in-memory ban pipeline: refuses protected networks, tells its listeners."""

    def __init__(self, protected: list[str] = ()) -> None:  # type: ignore[assignment]
        self.protected = [ipaddress.ip_network(p) for p in protected]
        self.bans: dict[str, tuple[float, Ban]] = {}
        self.refused: list[str] = []
        self.listeners: list[Callable[[str, Any], None]] = []
        self.lock = threading.Lock()

    def issue(self, ban: Ban, now: float) -> bool:
        net = ipaddress.ip_network(ban.network, strict=False)
        if any(net.overlaps(p) for p in self.protected):
            self.refused.append(ban.network)
            return False
        with self.lock:
            self.bans[ban.network] = (now + ban.seconds, ban)
        for listener in self.listeners:
            listener("ban", ban)
        return True

    def lift(self, network: str, now: float, path: str = "manual") -> bool:
        with self.lock:
            found = self.bans.pop(network, None) is not None
        for listener in self.listeners:
            listener("unban", network)
        return found

    def active(self) -> set[str]:
        now = time.time()
        with self.lock:
            return {n for n, (exp, _) in self.bans.items() if exp > now}


class Host:
    def __init__(self, name: str, settings: FleetSettings, state: Path, protected: list[str] = ()) -> None:  # type: ignore[assignment]
        self.name = name
        self.pipeline = Pipeline(protected)
        self.events: list[dict[str, Any]] = []
        self.settings = replace(settings, host=name)
        self.state = state
        self.client = self._client()

    def _client(self) -> FleetClient:
        pipe = self.pipeline

        def issue(b: FleetBan, now: float) -> bool:
            return pipe.issue(Ban(b.network, b.seconds, b.reason, b.rule, path="fleet", origin=b.origin), now)

        def peer_bans() -> list[str]:
            with pipe.lock:
                return [n for n, (_, b) in pipe.bans.items() if b.origin and b.origin != self.name]

        client = FleetClient(self.settings, self.state, issue, lambda n, now: pipe.lift(n, now, path="fleet"),
                             self.events.append, peer_bans=peer_bans)
        pipe.listeners = [client.on_local]
        return client

    def restart(self) -> None:
        self.client.close()
        self.client = self._client()
        self.client.start()

    def ban(self, network: str, seconds: int = 3600, reason: str = "manual") -> None:
        self.pipeline.issue(Ban(network, seconds, reason, path="manual"), time.time())


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with namespace() as ns:
        server = RedisServer(ns, port=6390, bind="127.0.0.1")
        try:
            server.start()
            yield server
        finally:
            server.close()


@pytest.fixture
def hosts(redis_server: RedisServer, tmp_path: Path) -> Iterator[list[Host]]:
    settings = FleetSettings(url=redis_server.url(), keep=3600)
    made = [Host(f"host{i}", settings, tmp_path / f"host{i}.fleet", ["203.0.113.0/24"] if i == 2 else [])
            for i in (1, 2, 3)]
    for h in made:
        h.client.start()
    # each has taken its place in the stream (a first start resyncs from the snapshot)
    assert wait_for(lambda: all(h.client.status()["last_id"] is not None for h in made))
    try:
        yield made
    finally:
        for h in made:
            h.client.close()


def wait_for(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_bans_reach_every_peer_and_an_unban_lifts_them_everywhere(hosts: list[Host],
                                                                   redis_server: RedisServer) -> None:
    h1, h2, h3 = hosts
    nets = [f"198.51.100.{i}" for i in range(1, 41)] + [f"2001:db8:{i:x}::/64" for i in range(1, 11)]
    for n in nets:
        h1.ban(n)
    assert wait_for(lambda: h2.pipeline.active() >= set(nets) and h3.pipeline.active() >= set(nets))
    # a peer's ban carries its origin and path, and keeps the reason
    _, ban = h2.pipeline.bans["198.51.100.1"]
    assert (ban.path, ban.origin, ban.reason) == ("fleet", "host1", "manual")
    h1.pipeline.lift("198.51.100.1", time.time())
    assert wait_for(lambda: "198.51.100.1" not in h2.pipeline.active() | h3.pipeline.active())
    time.sleep(0.3)
    # nothing a peer received was published again: the stream holds host 1's 51 entries only
    entries = redis_server.admin().xrange("inspector:bans")
    assert len(entries) == len(nets) + 1
    assert {f["origin"] for _, f in entries} == {"host1"}
    assert wait_for(lambda: h2.client.status()["received"] == len(nets) and h2.client.status()["lifted"] == 1)
    assert wait_for(lambda: h1.client.status()["published"] == len(nets) + 1), h1.client.status()
    assert h1.client.status()["connected"]


def test_a_peers_ban_of_a_protected_network_is_refused_there_and_applied_elsewhere(hosts: list[Host]) -> None:
    h1, h2, h3 = hosts
    h1.ban("203.0.113.9")  # host 2 whitelists 203.0.113.0/24
    h1.ban("203.0.112.0/23")  # covers host 2's whitelisted network
    h1.ban("0.0.0.0/1")  # wider than min_prefix_v4 (/8): refused by every peer
    h1.ban("198.51.100.77")
    assert wait_for(lambda: "198.51.100.77" in h2.pipeline.active() and "198.51.100.77" in h3.pipeline.active())
    assert {"203.0.113.9", "203.0.112.0/23"} <= h3.pipeline.active()
    assert not {"203.0.113.9", "203.0.112.0/23"} & h2.pipeline.active()
    assert h2.pipeline.refused == ["203.0.113.9", "203.0.112.0/23"]
    assert h2.client.status()["refused"] == 3 and h3.client.status()["refused"] == 1
    assert "0.0.0.0/1" not in h3.pipeline.active()
    assert any(e.get("event") == "ban-refused" and e["network"] == "0.0.0.0/1" for e in h3.events)


def test_a_host_that_was_down_catches_up_from_its_last_id(hosts: list[Host]) -> None:
    h1, h2, h3 = hosts
    h1.ban("198.51.100.1")
    assert wait_for(lambda: "198.51.100.1" in h3.pipeline.active())
    h3.client.close()
    nets = [str(ipaddress.ip_address("198.18.0.0") + i) for i in range(500)]
    for n in nets:
        h1.ban(n)
    assert wait_for(lambda: h2.pipeline.active() >= set(nets))
    h3.pipeline.bans.clear()  # only what the stream brings counts
    h3.restart()
    assert wait_for(lambda: h3.pipeline.active() >= set(nets))
    missed = set(nets) - h3.pipeline.active()
    assert missed == set()
    assert h3.client.status()["resyncs"] == 0  # resumed from its id, no snapshot needed


def test_a_host_away_longer_than_the_stream_keeps_resyncs_without_expired_bans(
        redis_server: RedisServer, tmp_path: Path) -> None:
    settings = FleetSettings(url=redis_server.url(), keep=1)  # below the parser's minimum, for the test
    h1 = Host("host1", settings, tmp_path / "h1")
    h3 = Host("host3", settings, tmp_path / "h3")
    try:
        for h in (h1, h3):
            h.client.start()
        h1.ban("198.51.100.1")
        assert wait_for(lambda: "198.51.100.1" in h3.pipeline.active())
        h3.client.close()
        short = [str(ipaddress.ip_address("198.18.1.0") + i) for i in range(150)]
        long = [str(ipaddress.ip_address("198.18.2.0") + i) for i in range(150)]
        for n in short:
            h1.ban(n, seconds=2)
        for n in long:
            h1.ban(n, seconds=3600)
        time.sleep(2.5)  # the short bans expire; the stream's oldest entries are older than keep
        later = [str(ipaddress.ip_address("198.18.3.0") + i) for i in range(250)]
        for n in later:
            h1.ban(n)
        assert wait_for(lambda: h1.client.status()["outbox"] == 0)
        info = redis_server.admin().xinfo_stream("inspector:bans")
        assert info["recorded-first-entry-id"] > h3.client.status()["last_id"]  # trimmed past host 3's place
        h3.pipeline.bans.clear()
        h3.restart()
        want = set(long) | set(later) | {"198.51.100.1"}
        assert wait_for(lambda: h3.pipeline.active() >= want)
        assert h3.client.status()["resyncs"] == 1
        assert not set(short) & set(h3.pipeline.bans)  # expired bans never come back
        assert any(e.get("event") == "fleet-resync" for e in h3.events)
    finally:
        h1.client.close()
        h3.client.close()


def test_redis_down_local_bans_stay_fast_the_outbox_grows_and_drains(hosts: list[Host],
                                                                     redis_server: RedisServer) -> None:
    h1, h2, h3 = hosts

    def ban_times(prefix: str, n: int) -> list[float]:
        took = []
        for i in range(n):
            t = time.perf_counter()
            h1.ban(f"{prefix}.{i}")
            took.append(time.perf_counter() - t)
        return sorted(took)

    up = ban_times("198.18.4", 200)
    assert wait_for(lambda: h1.client.status()["outbox"] == 0), h1.client.status()
    redis_server.stop()
    assert wait_for(lambda: not h2.client.status()["connected"]), h2.client.status()
    down = ban_times("198.18.5", 200)
    assert h1.client.status()["outbox"] >= 195, h1.client.status()  # (the publisher may have been mid-batch)
    print(f"\nlocal ban p50/p99 with Redis up {up[100] * 1e6:.1f}/{up[197] * 1e6:.1f} us, "
          f"down {down[100] * 1e6:.1f}/{down[197] * 1e6:.1f} us")
    assert down[100] < max(10 * up[100], 0.001), (up[100], down[100])  # no network wait on the ban path
    h1.restart()  # the outbox survives a restart of the host too
    assert h1.client.status()["outbox"] >= 195, h1.client.status()
    redis_server.start()
    want = {f"198.18.5.{i}" for i in range(200)}
    assert wait_for(lambda: h2.pipeline.active() >= want and h3.pipeline.active() >= want, 30), \
        (h1.client.status(), h2.client.status(), len(want - h2.pipeline.active()), len(want - h3.pipeline.active()))
    assert wait_for(lambda: h1.client.status()["outbox"] == 0), h1.client.status()


def test_redis_that_lost_its_data_is_noticed_and_reading_starts_over(redis_server: RedisServer,
                                                                     tmp_path: Path) -> None:
    settings = FleetSettings(url=redis_server.url())
    h1, h2 = Host("host1", settings, tmp_path / "h1"), Host("host2", settings, tmp_path / "h2")
    try:
        for h in (h1, h2):
            h.client.start()
        for i in range(20):
            h1.ban(f"198.51.100.{i}")
        assert wait_for(lambda: len(h2.pipeline.active()) == 20)
        redis_server.stop()
        shutil.rmtree(redis_server.dir / "appendonlydir", ignore_errors=True)
        redis_server.start()  # empty: the stream's ids start again below host 2's position
        h1.ban("198.51.100.200")
        assert wait_for(lambda: "198.51.100.200" in h2.pipeline.active(), 20)
    finally:
        h1.client.close()
        h2.client.close()


def test_fleet_config(tmp_path: Path) -> None:
    assert not load_config(None).fleet.enabled  # off by default
    cfg = tmp_path / "c.toml"
    cfg.write_text('[fleet]\nurl = "rediss://inspector:pw@redis.example:6380/0"\nhost = "mx1"\nkeep = 3600\n')
    fleet = load_config(cfg).fleet
    assert (fleet.url, fleet.host_id, fleet.keep, fleet.enabled) == ("rediss://inspector:pw@redis.example:6380/0",
                                                                    "mx1", 3600, True)
    cfg.write_text('[fleet]\nurl = "redis://x"\n\nstreem = "a"\n')
    with pytest.raises(ConfigError, match=r"c\.toml:4: fleet\.streem: unknown setting"):
        load_config(cfg)
    cfg.write_text('[fleet]\nurl = "http://x"\n')
    with pytest.raises(ConfigError, match=r"c\.toml:2: fleet\.url: must start with redis://"):
        load_config(cfg)


TLS_CHECK = r"""
import json, sys, time
from inspector.fleet import FleetClient, FleetSettings
url, ca, wait = sys.argv[1], sys.argv[2], float(sys.argv[3])
got = []
def client(host, issue):
    return FleetClient(FleetSettings(url=url, host=host, ca_file=ca), None, issue, lambda n, now: True,
                       lambda e: None)
a = client("a", lambda b, now: True)
b = client("b", lambda ban, now: got.append(ban.network) or True)
a.start(); b.start()
class Ban:
    network, seconds, reason, rule, path, origin = "198.51.100.5", 60, "manual", None, "manual", None
a.on_local("ban", Ban())
deadline = time.time() + wait
while not got and time.time() < deadline:
    time.sleep(0.05)
print(json.dumps({"got": got, "a": a.status(), "b": b.status()}))
a.close(); b.close()
"""


def test_tls_with_a_password_reaches_peers(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a test certificate")
    import json
    import subprocess
    import sys

    ca_key, ca, key, csr, cert = (tmp_path / n for n in ("ca.key", "ca.crt", "r.key", "r.csr", "r.crt"))
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "1", "-subj", "/CN=fleet test CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    ext = tmp_path / "ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "1", "-extfile", str(ext))
    for f in (key, cert, ca):
        f.chmod(0o644)
    with namespace() as ns:
        server = RedisServer(ns, port=0, bind="127.0.0.1",
                             extra=f"tls-port 6391\ntls-cert-file {cert}\ntls-key-file {key}\n"
                                   f"tls-ca-cert-file {ca}\ntls-auth-clients no")
        try:
            server.start()
            url = f"rediss://inspector:{PASSWORD}@127.0.0.1:6391/0"
            r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", TLS_CHECK, url, str(ca), "15"],
                               capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
            assert r.returncode == 0, r.stderr[-2000:]
            out = json.loads(r.stdout)
            assert out["got"] == ["198.51.100.5"], out
            # the wrong password is refused, and said so
            bad = url.replace(PASSWORD, "wrong")
            r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", TLS_CHECK, bad, str(ca), "2"],
                               capture_output=True, text=True, timeout=60, cwd=Path(__file__).parents[1])
            out = json.loads(r.stdout)
            assert out["got"] == [] and not out["a"]["connected"]
            assert "password" in out["a"]["last_error"].lower() or "auth" in out["a"]["last_error"].lower()
        finally:
            server.close()


def test_malformed_entries_are_counted_and_skipped(hosts: list[Host], redis_server: RedisServer) -> None:
    h1, h2, h3 = hosts
    admin = redis_server.admin()
    now = time.time()
    good = {"op": "ban", "sec": 3600, "exp": now + 3600, "reason": "manual", "rule": "", "origin": "evil", "at": now}
    for bad in ({"op": "ban"}, {**good, "net": "not-an-address"}, {**good, "net": "198.51.100.1", "sec": "x"},
                {**good, "net": "198.51.100.2", "exp": "nan"}, {**good, "net": "198.51.100.3", "exp": "inf",
                                                                "sec": "inf"},
                {**good, "net": "198.51.100.4", "op": "explode"}, {**good, "net": "198.51.100.5", "exp": now - 5}):
        admin.xadd("inspector:bans", bad)
    admin.xadd("inspector:bans", {**good, "net": "198.51.100.6", "sec": 10**12, "exp": 10**13})
    h1.ban("198.51.100.7")
    assert wait_for(lambda: "198.51.100.7" in h2.pipeline.active())
    status = h2.client.status()
    assert status["invalid"] == 6 and status["expired"] == 1 and status["connected"]
    assert h2.pipeline.active() == {"198.51.100.6", "198.51.100.7"}
    expires, _ = h2.pipeline.bans["198.51.100.6"]
    assert expires <= time.time() + 366 * 86400 + 5  # a peer cannot ask for more than a year


def test_attach_fleet_only_when_configured(tmp_path: Path) -> None:
    from inspector.config import Config
    from inspector.fleet import attach_fleet

    class FakeHost:
        def __init__(self, config: Config) -> None:
            self.config = config
            self.bans = Pipeline()
            self.bans.add_listener = self.bans.listeners.append  # type: ignore[attr-defined]
            self.bans.store = None  # type: ignore[attr-defined]
            self.components: dict[str, Any] = {}
            self.events = type("Sink", (), {"emit": lambda self, e: None})()
            self.clock = time.time

        def add_component(self, name: str, component: Any) -> None:
            self.components[name] = component

    off = FakeHost(Config())
    assert attach_fleet(off) is None and off.components == {} and off.bans.listeners == []
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[service]\nstate_file = "{tmp_path}/bans.json"\n[fleet]\nurl = "redis://127.0.0.1:1/0"\n'
                   'host = "mx9"\n')
    on = FakeHost(load_config(cfg))
    client = attach_fleet(on)
    assert client is not None and on.components == {"fleet": client}
    assert on.bans.listeners == [client.on_local] and client.state_path == tmp_path / "bans.json.fleet"
    assert client.status()["host"] == "mx9" and not client.status()["connected"]


def test_the_outbox_is_bounded_and_keeps_the_newest_word_per_network(tmp_path: Path) -> None:
    settings = FleetSettings(url="redis://127.0.0.1:1/0", host="h", outbox_max=100)
    client = FleetClient(settings, tmp_path / "f", lambda b, now: True, lambda n, now: True, lambda e: None)
    for i in range(150):
        client.on_local("ban", Ban(f"198.51.100.{i}", 60, "manual", path="manual"))
    client.on_local("unban", "198.51.100.149")
    client.on_local("ban", Ban("198.51.100.7", 60, "rate", path="fleet", origin="peer"))  # never published
    status = client.status()
    assert status["outbox"] == 100 and status["outbox-dropped"] == 50
    client.save()
    again = FleetClient(settings, tmp_path / "f", lambda b, now: True, lambda n, now: True, lambda e: None)
    assert again.status()["outbox"] == 100  # the outbox survives a restart
    import json

    saved = json.loads((tmp_path / "f").read_text())["outbox"]
    assert saved[-1]["op"] == "unban" and saved[-1]["net"] == "198.51.100.149"
    assert saved[0]["net"] == "198.51.100.50"


def test_an_unban_trimmed_away_while_a_host_was_down_is_applied_by_its_resync(
        redis_server: RedisServer, tmp_path: Path) -> None:
    # host 3 had host 1's ban; host 1 lifted it while host 3 was away longer than the stream keeps
    # entries: the unban is gone from the stream, and the snapshot no longer holds the ban
    settings = FleetSettings(url=redis_server.url(), keep=1)  # below the parser's minimum, for the test
    h1 = Host("host1", settings, tmp_path / "h1")
    h3 = Host("host3", settings, tmp_path / "h3")
    try:
        for h in (h1, h3):
            h.client.start()
        h1.ban("198.51.100.1")
        h1.ban("198.51.100.2")
        h3.ban("198.51.100.3")  # host 3's own: no peer can lift it by silence
        for i in range(120):  # a whole stream node of old entries, so that trimming can drop it
            h1.ban(str(ipaddress.ip_address("198.18.5.0") + i), seconds=3600)
        assert wait_for(lambda: {"198.51.100.1", "198.51.100.2"} <= h3.pipeline.active())
        assert wait_for(lambda: h3.client.status()["outbox"] == 0)
        h3.client.close()
        h1.pipeline.lift("198.51.100.1", time.time())
        for i in range(120):
            h1.ban(str(ipaddress.ip_address("198.18.6.0") + i), seconds=3600)
        time.sleep(2.5)
        for i in range(300):  # MINID ~ trims whole stream nodes (100 entries by default)
            h1.ban(str(ipaddress.ip_address("198.18.4.0") + i))
        assert wait_for(lambda: h1.client.status()["outbox"] == 0)
        assert redis_server.admin().xinfo_stream("inspector:bans")["recorded-first-entry-id"] > \
            h3.client.status()["last_id"]
        h3.restart()
        assert wait_for(lambda: h3.client.status()["resyncs"] == 1)
        assert wait_for(lambda: "198.51.100.1" not in h3.pipeline.active())
        assert {"198.51.100.2", "198.51.100.3", "198.18.4.0"} <= h3.pipeline.active()
    finally:
        h1.client.close()
        h3.client.close()


def test_a_peers_texts_are_bounded_before_they_reach_the_ban_store(tmp_path: Path) -> None:
    # origin, reason and rule end up in the ban store, the state file, events and `inspector bans`
    got: list[FleetBan] = []
    settings = FleetSettings(url="redis://127.0.0.1:1/0", host="h")
    client = FleetClient(settings, None, lambda b, now: got.append(b) or True, lambda n, now: True, lambda e: None)
    now = time.time()
    client._apply({"op": "ban", "net": "198.51.100.9", "sec": 60, "exp": now + 60, "reason": "r" * 10_000,
                   "rule": "u" * 10_000, "origin": "o" * 100_000, "at": now})
    [ban] = got
    assert len(ban.origin) <= 64 and len(ban.reason) <= 64 and len(ban.rule or "") <= 200
