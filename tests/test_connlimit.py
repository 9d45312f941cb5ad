"""``[connlimit]``: config, counting per source network and port, bans through the pipeline, conntrack reads."""

from __future__ import annotations

import ipaddress
import socket
import subprocess
import sys
import time
from collections.abc import Collection
from pathlib import Path

import pytest

from inspector.config import ConfigError, load_config
from inspector.connlimit import ConnLimiter, ConnLimitRule, ConnLimitSettings
from inspector.conntrack_netlink import IPS_DST_NAT, TCP_ESTABLISHED, Connection, ConntrackError
from inspector.events import MemorySink
from inspector.nets import Whitelist
from inspector.respond.bans import BanPipeline
from inspector.testing import FakeFirewall

from .netns import namespace, run_in

SERVER4, SERVER6 = ipaddress.ip_address("192.0.2.25"), ipaddress.ip_address("2001:db8::25")


def conns(src: str, n: int, dport: int = 25, dst: str = "192.0.2.25", state: int = TCP_ESTABLISHED,
          status: int = 0) -> list[Connection]:
    s, d = ipaddress.ip_address(src).packed, ipaddress.ip_address(dst).packed
    return [Connection(s, d, 40000 + i, dport, state, status) for i in range(n)]


class Table:
    def __init__(self) -> None:
        self.rows: list[Connection] = []
        self.error: Exception | None = None

    def __call__(self, ports: Collection[int]) -> list[Connection]:
        if self.error is not None:
            raise self.error
        return [c for c in self.rows if c.dport in ports]


def limiter(settings: ConnLimitSettings | None = None, alert: bool = False,
            whitelist: tuple[str, ...] = ()) -> tuple[ConnLimiter, Table, FakeFirewall, MemorySink]:
    settings = settings or ConnLimitSettings()
    now = [1000.0]
    fw, events, table = FakeFirewall(lambda: now[0]), MemorySink(), Table()
    bans = BanPipeline(None, fw, events, Whitelist(whitelist), own=[SERVER4, SERVER6])
    lim = ConnLimiter(settings, (25, 22), table, bans, lambda: now[0], events.emit,
                      own=[SERVER4.packed, SERVER6.packed], alert=alert)
    return lim, table, fw, events


def test_a_source_over_the_limit_is_banned_through_the_pipeline() -> None:
    lim, table, fw, events = limiter()
    table.rows = conns("198.51.100.7", 151) + conns("198.51.100.8", 150) + conns("198.51.100.9", 200, dport=587)
    assert lim.poll(1000.0) == ["198.51.100.7"]  # 587 is not a protected port here
    assert fw.entries == {"198.51.100.7": 1000.0 + 600}
    [ban] = [e for e in events.events if e["event"] == "ban"]
    assert (ban["reason"], ban["dport"], ban["rule"]) == ("connlimit", 25, "151 connections to port 25 (limit 150)")
    assert lim.status()["top"][0] == {"network": "198.51.100.7", "port": 25, "connections": 151}


def test_only_established_inbound_connections_count() -> None:
    lim, table, fw, _ = limiter(ConnLimitSettings((ConnLimitRule(limit=10),)))
    table.rows = (conns("198.51.100.7", 8) + conns("198.51.100.7", 8, state=2)  # SYN_RECV
                  + conns("198.51.100.7", 8, dst="203.0.113.99")  # outgoing/forwarded, not to us
                  + conns("198.51.100.8", 11, dst="198.18.0.2", status=IPS_DST_NAT))  # to a published container
    assert lim.poll(1000.0) == ["198.51.100.8"]


def test_ipv6_counts_per_64_and_ports_per_rule() -> None:
    rules = (ConnLimitRule(ports=(22,), limit=5, ban=3600), ConnLimitRule(limit=150, ban=600))
    lim, table, fw, _ = limiter(ConnLimitSettings(rules))
    table.rows = (conns("2001:db8:1::1", 80, dst="2001:db8::25") + conns("2001:db8:1::2", 80, dst="2001:db8::25")
                  + conns("198.51.100.7", 6, dport=22))
    assert sorted(lim.poll(1000.0)) == ["198.51.100.7", "2001:db8:1::/64"]
    assert fw.entries == {"2001:db8:1::/64": 1600.0, "198.51.100.7": 4600.0}


def test_whitelisted_and_own_are_never_counted_against_the_limit() -> None:
    lim, table, fw, events = limiter(whitelist=("203.0.113.0/24",))
    table.rows = conns("203.0.113.7", 500) + conns("127.0.0.1", 500, dst="127.0.0.1") + conns("192.0.2.25", 500)
    assert lim.poll(1000.0) == []
    assert fw.entries == {} and events.events == []  # not even a ban-refused event each interval


def test_no_new_ban_while_the_ban_runs_then_again() -> None:
    lim, table, fw, events = limiter()
    table.rows = conns("198.51.100.7", 200)  # the old connections stay in the table after the ban
    assert lim.poll(1000.0) == ["198.51.100.7"]
    assert lim.poll(1010.0) == [] and lim.poll(1599.0) == []
    assert lim.poll(1601.0) == ["198.51.100.7"]
    assert len([e for e in events.events if e["event"] == "ban"]) == 2
    lim.on_ban("unban", "198.51.100.7")  # lifted by hand while still over the limit: banned at the next read
    assert lim.poll(1602.0) == ["198.51.100.7"]


def test_alert_mode_reports_and_bans_nothing() -> None:
    lim, table, fw, events = limiter(alert=True)
    table.rows = conns("198.51.100.7", 200)
    assert lim.poll(1000.0) == ["198.51.100.7"]
    assert fw.entries == {}
    [v] = events.events
    assert (v["event"], v["reason"], v["alert"], v["src"]) == ("verdict", "connlimit", True, "198.51.100.7")


def test_an_unreadable_table_is_reported_once_and_never_raised() -> None:
    lim, table, _, events = limiter()
    table.error = ConntrackError(1, "cannot open a ctnetlink socket (needs CAP_NET_ADMIN)")
    assert lim.poll(1000.0) == [] and lim.poll(1010.0) == []
    assert [e["what"] for e in events.events] == ["connlimit"]
    assert lim.status()["errors"] == 2 and "CAP_NET_ADMIN" in lim.status()["last_error"]
    table.error = None
    lim.poll(1020.0)
    assert lim.status()["last_error"] is None


def test_config(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[connlimit]\nlimit = 100\nban = 900\ninterval = 5\nports = [25, 587]\n'
                 'rules = [{ports = [587], limit = 20}]\n')
    cl = load_config(p).connlimit
    assert cl == ConnLimitSettings((ConnLimitRule((587,), 20, 900), ConnLimitRule(None, 100, 900)), (25, 587), 5.0)
    assert cl.rule_for(25).limit == 100 and cl.rule_for(587).limit == 20
    assert load_config(None).connlimit is None
    out = subprocess.run([sys.executable, "-m", "inspector", "check", "--config", str(p)], capture_output=True,
                         text=True, check=True).stdout
    assert "connlimit: more than 20 established connections from one source to port 587 -> ban 900s" in out
    for body, line, words in (('[connlimit]\nlimit = 0\n', 2, "between 1"),
                              ('[connlimit]\n\ninterval = 0.1\n', 3, "between 1"),
                              ('[connlimit]\nports = [70000]\n', 2, "invalid port"),
                              ('[connlimit]\nrules = [{limit = 3}]\n', 2, "'ports' is required"),
                              ('[connlimit]\nrules = [{ports = [22], max = 3}]\n', 2, "unknown key 'max'"),
                              ('[connlimit]\nmaxconn = 3\n', 2, "unknown setting")):
        p.write_text(body)
        with pytest.raises(ConfigError) as e:
            load_config(p)
        assert str(e.value).startswith(f"{p}:{line}: connlimit"), e.value
        assert words in str(e.value)


READ = r"""
import json, socket, sys, time
sys.path.insert(0, sys.argv[1])
from inspector.conntrack_netlink import ConntrackDump
listeners, clients = [], []
for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    for port in (25, 22):
        l = socket.socket(family)
        l.bind((host, port))
        l.listen(64)
        listeners.append(l)
    for port, n in ((25, 7), (22, 3)):
        for _ in range(n):
            clients.append(socket.create_connection((host, port), timeout=2))
time.sleep(0.2)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.sendto(b"x", ("127.0.0.1", 25))  # a UDP entry to port 25: not a TCP connection
d = ConntrackDump()
got = d.tcp([25, 22, 587])
out = {f"{fam}/{port}": [c.state for c in got if c.dport == port and len(c.src) == (4 if fam == socket.AF_INET else 16)]
       for fam in (socket.AF_INET, socket.AF_INET6) for port in (25, 22, 587)}
out["only25"] = len(d.tcp([25]))
started = time.perf_counter()
for _ in range(20):
    d.tcp([25])
out["ms_per_dump"] = (time.perf_counter() - started) / 20 * 1000
out["kernel_filter"] = d.kernel_filter
print(json.dumps(out))
"""


def test_conntrack_dump_reads_the_kernels_table() -> None:
    import json

    with namespace() as ns:
        # conntrack tracks a namespace once a rule there uses it
        run_in(ns, "iptables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
        run_in(ns, "ip6tables", "-A", "INPUT", "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
        r = run_in(ns, sys.executable, "-c", READ, str(Path(__file__).resolve().parents[1]), check=False)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    a4, a6 = socket.AF_INET, socket.AF_INET6
    assert got[f"{a4}/25"] == [TCP_ESTABLISHED] * 7 and got[f"{a4}/22"] == [TCP_ESTABLISHED] * 3
    assert got[f"{a6}/25"] == [TCP_ESTABLISHED] * 7 and got[f"{a4}/587"] == [] and got["only25"] == 14
    print(f"conntrack dump of 14 connections: {got['ms_per_dump']:.3f} ms, kernel filter {got['kernel_filter']}")


def test_the_thread_polls_and_close_stops_it() -> None:
    lim, table, fw, _ = limiter(ConnLimitSettings(interval=1))
    lim.settings = ConnLimitSettings(interval=0.05)
    lim.clock = time.time
    table.rows = conns("198.51.100.7", 200)
    lim.start()
    try:
        deadline = time.monotonic() + 5
        while not fw.entries and time.monotonic() < deadline:
            time.sleep(0.02)
        assert list(fw.entries) == ["198.51.100.7"]
    finally:
        lim.close()
    polls = lim.polls
    time.sleep(0.2)
    assert lim.polls == polls
