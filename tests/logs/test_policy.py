import ipaddress

import pytest

from inspector.logs.policy import (
    MAX_BAN,
    Limits,
    LogPolicy,
    Whitelist,
    ban_network,
    hosts_deny_lines,
    local_addresses,
    write_hosts_deny,
)

L = Limits(maxretry=3, findtime=600, bantime=100)


def policy(*white: str, bantime_max: int = 1000, **kw) -> LogPolicy:
    return LogPolicy(Whitelist(white), bantime_max=bantime_max, **kw)


def fail_n(p: LogPolicy, host: str, times, limits: Limits = L, source: str = "s"):
    return [p.failure(source, "sshd", limits, host, t, f"line {t}") for t in times]


def test_maxretry_within_findtime_bans():
    p = policy()
    out = fail_n(p, "203.0.113.5", [0, 10, 20])
    assert out[:2] == [None, None]
    ban = out[2]
    assert (ban.network, ban.seconds, ban.reason, ban.rule, ban.failures, ban.offense, ban.match) == \
        ("203.0.113.5", 100, "log:sshd", "sshd", 3, 1, "line 20")


def test_failures_older_than_findtime_do_not_count():
    p = policy()
    assert fail_n(p, "203.0.113.5", [0, 400, 700, 1000]) == [None] * 4  # never 3 within 600 s
    assert fail_n(p, "203.0.113.5", [1001])[0] is not None  # 700, 1000, 1001


def test_sources_count_separately_and_hosts_separately():
    p = policy()
    assert fail_n(p, "203.0.113.5", [0, 1], source="a") == [None, None]
    assert fail_n(p, "203.0.113.5", [2], source="b") == [None]
    assert fail_n(p, "203.0.113.6", [3]) == [None]
    assert fail_n(p, "203.0.113.5", [4], source="a")[0] is not None


def test_repeat_offenders_double_up_to_the_cap():
    p = policy(bantime_max=500)
    seconds = []
    t = 0.0
    for _ in range(6):
        ban = fail_n(p, "203.0.113.5", [t, t + 1, t + 2])[2]
        seconds.append((ban.seconds, ban.offense))
        t = ban.time + ban.seconds + 1  # after the ban ends
    assert seconds == [(100, 1), (200, 2), (400, 3), (500, 4), (500, 5), (500, 6)]


def test_offender_forgotten_after_a_quiet_bantime_max():
    p = policy(bantime_max=500)
    ban = fail_n(p, "203.0.113.5", [0, 1, 2])[2]
    end = ban.time + ban.seconds
    ban2 = fail_n(p, "203.0.113.5", [end + 500, end + 501, end + 502])[2]
    assert ban2.offense == 1 and ban2.seconds == 100


def test_cap_never_above_ipset_limit():
    p = policy(bantime_max=10 ** 9)
    assert p.bantime_max == MAX_BAN
    big = Limits(1, 600, 2_000_000)
    first = fail_n(p, "203.0.113.5", [0], big)[0]
    second = fail_n(p, "203.0.113.5", [first.seconds + 1], big)[0]
    assert first.seconds == 2_000_000 and second.seconds == MAX_BAN


def test_failures_while_banned_are_counted_not_rebanned():
    p = policy()
    assert fail_n(p, "203.0.113.5", [0, 1, 2])[2] is not None
    assert fail_n(p, "203.0.113.5", [3, 4, 5, 50]) == [None] * 4
    assert p.counts["while-banned"] == 4
    assert fail_n(p, "203.0.113.5", [103, 104, 105])[2].offense == 2


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1"])
def test_loopback_is_never_banned(host):
    p = LogPolicy(Whitelist())
    assert fail_n(p, host, range(100), Limits(1, 600, 100)) == [None] * 100
    assert p.counts["whitelisted"] == 100 and p.counts["bans"] == 0


def test_own_addresses_and_crawler_cidrs_are_whitelisted():
    p = policy("192.0.2.10", "2001:db8:ffff::1", "66.249.64.0/19")
    for host in ("192.0.2.10", "2001:db8:ffff::1", "66.249.66.1", "66.249.95.255"):
        assert fail_n(p, host, range(10)) == [None] * 10
    assert fail_n(p, "66.249.96.1", [0, 1, 2])[2] is not None


def test_ipv6_counts_and_bans_per_64():
    p = policy()
    out = fail_n(p, "2001:db8:1:2::1", [0]) + fail_n(p, "2001:db8:1:2::2", [1]) + fail_n(p, "2001:db8:1:2:ff::3", [2])
    assert out[2].network == "2001:db8:1:2::/64" and out[2].host == "2001:db8:1:2:ff::3"


def test_a_prefix_holding_a_whitelisted_address_narrows_to_the_address():
    p = policy("2001:db8:1:2::10")  # the server itself, in a hosting /64
    ban = fail_n(p, "2001:db8:1:2::66", [0, 1, 2])[2]
    assert ban.network == "2001:db8:1:2::66"


def test_network_matches_the_packet_engine(make_engine):
    engine = make_engine(domains="")
    for host in ("203.0.113.5", "2001:db8:1:2:3:4:5:6"):
        raw = ipaddress.ip_address(host).packed
        assert ban_network(host) == engine.ban_network(engine.ban_key(raw))
    assert ban_network("203.0.113.5", ipv4_prefix=24) == "203.0.113.0/24"


def test_bantime_zero_reports_only():
    p = policy()
    assert fail_n(p, "203.0.113.5", range(10), Limits(3, 600, 0)) == [None] * 10
    assert p.counts["over-limit-no-ban"] > 0


def test_memory_is_bounded():
    p = policy(capacity=100)
    for i in range(5000):
        p.failure("s", "sshd", L, str(ipaddress.ip_address("10.0.0.0") + i), float(i))
    assert len(p) <= 200


def test_message_repeated_counts_once_per_failure():
    p = policy()
    assert p.failure("s", "sshd", L, "203.0.113.5", 0.0, "x", count=2) is None
    assert p.failure("s", "sshd", L, "203.0.113.5", 1.0, "x").failures == 3


def test_forget():
    p = policy()
    ban = fail_n(p, "203.0.113.5", [0, 1, 2])[2]
    p.forget(ban.network)
    again = fail_n(p, "203.0.113.5", [3, 4, 5])[2]
    assert again.offense == 1


def test_local_addresses_never_raises_and_finds_loopback():
    addrs = local_addresses()
    assert all(ipaddress.ip_address(a) for a in addrs)
    assert "127.0.0.1" in addrs or not addrs  # a namespace without lo up may have none


def test_hosts_deny_lines():
    nets = ["203.0.113.5", "198.51.100.0/24", "2001:db8:1:2::/64", "2001:db8::7"]
    assert hosts_deny_lines(nets) == ["ALL: 203.0.113.5", "ALL: 198.51.100.0/255.255.255.0",
                                      "ALL: [2001:db8:1:2::]/64", "ALL: [2001:db8::7]"]
    assert hosts_deny_lines(nets[:1], "sshd") == ["sshd: 203.0.113.5"]
    assert hosts_deny_lines(nets[:1], "") == ["203.0.113.5"]


def test_write_hosts_deny_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "etc" / "hosts.deny.inspector"
    assert write_hosts_deny(path, ["203.0.113.5", "203.0.113.5", "2001:db8::/64"], "sshd") == 2
    text = path.read_text()
    assert text.splitlines()[1:] == ["sshd: 203.0.113.5", "sshd: [2001:db8::]/64"]
    assert text.startswith("#")
    assert (path.stat().st_mode & 0o777) == 0o644

    import os
    def broken(*a):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", broken)
    with pytest.raises(OSError):
        write_hosts_deny(path, ["198.51.100.1"])
    assert path.read_text() == text  # the old file stands
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
