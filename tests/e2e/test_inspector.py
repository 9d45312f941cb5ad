"""``inspector run`` inline, end to end: real TCP clients, a real MTA, real NFQUEUE, ipset and resets.

Each test gets fresh namespaces (see bed.py), the setup script's rules and,
for ``live``, a running inspector in enforce mode with ``blocked.test``
blocked.  Every wait has a deadline; expected failures use short timeouts.
"""

from __future__ import annotations

import json
import signal
import time

import pytest

from .bed import BAN_SET, BLOCKED, CLIENTS, DAY, SERVER, WHITELIST, Bed, ban_network, wait_for

pytestmark = pytest.mark.e2e

V = pytest.mark.parametrize("v", [4, 6], ids=["ipv4", "ipv6"])


def rcpt_blocked(bed: Bed, src: str, rcpt: str = f"user@{BLOCKED}", **kw: object) -> dict:
    return bed.smtp(src, [rcpt], timeout=3, **kw)


def assert_reset_both_ways(bed: Bed, r: dict, stage: str = "rcpt0") -> None:
    """The client saw its connection reset within 1 s of the offending RCPT, and so did the server."""
    assert r.get("connected"), r
    assert not r["delivered"], r
    assert r["stage"] == stage and r["error"] in ("reset", "closed"), r
    assert r["error_after"] < 1.0, f"client saw the reset after {r['error_after']:.3f}s"
    lost = wait_for(lambda: bed.server_events(event="lost", peer=r["src"], sport=r["sport"]), 2,
                    what="the server's connection-lost record")[0]
    assert lost["error"] == "ConnectionResetError", lost
    assert lost["t"] - r["t_offending"] < 1.0, f"server saw the reset after {lost['t'] - r['t_offending']:.3f}s"


def wait_banned(bed: Bed, src: str, timeout: float = 3) -> int:
    return wait_for(lambda: bed.banned(src), timeout, what=f"{ban_network(src)} in the ipset")


@V
def test_clean_mail_is_delivered(live: Bed, v: int) -> None:
    a = CLIENTS[v]["a"]
    r = live.smtp(a, ["user@example.org", "other@notblocked.test"], body_size=5000)
    assert r["delivered"], r
    [msg] = live.server_events(event="message", peer=a)
    assert msg["rcpt_tos"] == ["user@example.org", "other@notblocked.test"]
    ssh = live.connect(CLIENTS[v]["b"], 22, banner=True, send="ping\n")
    assert ssh["ok"] and ssh["banner"].startswith("SSH-2.0-") and ssh["echo"] == "ping\n", ssh
    assert live.events(event="verdict") == []
    assert live.banned(a) is None


@V
def test_blocked_recipient_is_reset_and_banned(live: Bed, v: int) -> None:
    a, b = CLIENTS[v]["a"], CLIENTS[v]["b"]
    r = rcpt_blocked(live, a, "Someone@Mail.BLOCKED.test")  # a subdomain, any case
    assert_reset_both_ways(live, r)
    # the MTA never saw the blocked recipient
    assert live.server_events(event="rcpt", peer=a) == []

    left = wait_banned(live, a)
    assert DAY - 30 <= left <= DAY, left
    verdict = live.wait_event(event="verdict", src=a)
    assert (verdict["verdict"], verdict["reason"], verdict["rule"], verdict.get("ban")) == \
        ("reset", "domain", BLOCKED, DAY), verdict
    assert "blocked.test" in verdict["match"].lower(), verdict
    ban = live.wait_event(event="ban", network=ban_network(a))
    assert (ban["seconds"], ban["reason"]) == (DAY, "domain"), ban

    # the kernel now drops the source: its next connections time out, on both protected ports
    again = live.client_run([{"op": "connect", "src": a, "dst": SERVER[v], "port": 25, "timeout": 1},
                             {"op": "connect", "src": a, "dst": SERVER[v], "port": 22, "timeout": 1}])
    assert [x["error"] for x in again] == ["timeout", "timeout"], again
    if v == 6:
        # an IPv6 ban covers the source's /64
        other = a.rsplit(":", 1)[0] + ":99"
        live.add_client_addresses([other])
        assert live.connect(other, 25, timeout=1)["error"] == "timeout"
    # another source still delivers
    ok = live.smtp(b, ["user@example.org"])
    assert ok["delivered"], ok
    assert live.banned(b) is None


@V
def test_domain_split_across_segments_is_blocked(live: Bed, v: int) -> None:
    a = CLIENTS[v]["a"]
    line = f"RCPT TO:<user@{BLOCKED}>"
    cut = line.index("blocked") + 4  # "...@bloc" | "ked.test>"
    r = rcpt_blocked(live, a, split=[0, cut], split_pause=0.2)
    assert_reset_both_ways(live, r)
    wait_banned(live, a)
    assert live.wait_event(event="verdict", src=a)["reason"] == "domain"


@V
def test_rate_limit_bans_the_fifth_connection_not_the_whitelist(live: Bed, v: int) -> None:
    a, w = CLIENTS[v]["a"], CLIENTS[v]["w"]
    dst = SERVER[v]
    burst = [{"op": "connect", "src": a, "dst": dst, "port": 22, "timeout": 1.5, "banner": True}
             for _ in range(6)]
    res = live.client_run(burst)
    # a connection counts once proven (its first queued packet after the handshake: here the
    # client's FIN, since it sends no data): the 5th is served, and reset and banned as it closes
    assert [x["ok"] for x in res[:5]] == [True] * 5, res
    assert [x["error"] for x in res[5:]] == ["timeout"], res
    left = wait_banned(live, a)
    assert DAY - 30 <= left <= DAY
    verdict = live.wait_event(event="verdict", src=a)
    assert (verdict["reason"], verdict["verdict"]) == ("rate", "reset"), verdict

    # the whitelisted client: many connections, and even a blocked recipient, are let through
    res = live.client_run([{"op": "connect", "src": w, "dst": dst, "port": 22, "timeout": 1.5, "banner": True}
                           for _ in range(8)])
    assert all(x["ok"] for x in res), res
    mail = live.smtp(w, [f"user@{BLOCKED}"])
    assert mail["delivered"], mail
    assert live.banned(w) is None
    assert live.events(src=w) == []
    # without the kernel's whitelist entry, the config's [whitelist] alone keeps it unbanned
    live.s("ipset", "del", f"inspector-white{v}", next(c for c in WHITELIST if (":" in c) == (v == 6)))
    res = live.client_run([{"op": "connect", "src": w, "dst": dst, "port": 22, "timeout": 1.5, "banner": True}
                           for _ in range(8)])
    assert all(x["ok"] for x in res), res
    mail = live.smtp(w, [f"user@{BLOCKED}"])
    assert mail["delivered"], mail
    assert live.banned(w) is None
    assert [e for e in live.events(src=w) if e.get("event") in ("verdict", "ban")] == []


@V
def test_alert_mode_blocks_nothing_and_reports(bed: Bed, v: int) -> None:
    # two sources: after its first alert the engine counts a source as banned, and the
    # runner reports no further verdicts for it (see the report: alert mode hides later verdicts)
    a, b = CLIENTS[v]["a"], CLIENTS[v]["b"]
    bed.start_inspector("--alert")
    r = rcpt_blocked(bed, a)
    assert r["delivered"], r
    [msg] = bed.server_events(event="message", peer=a)
    assert msg["rcpt_tos"] == [f"user@{BLOCKED}"]
    res = bed.client_run([{"op": "connect", "src": b, "dst": SERVER[v], "port": 22, "timeout": 1.5}
                          for _ in range(6)])
    assert all(x["ok"] for x in res), res

    domain = bed.wait_event(event="verdict", src=a, reason="domain")
    assert domain.get("alert") is True and domain["verdict"] == "reset" and domain["rule"] == BLOCKED, domain
    rate = bed.wait_event(event="verdict", src=b, reason="rate")
    assert rate.get("alert") is True, rate
    time.sleep(0.3)
    assert bed.events(event="ban") == []
    assert bed.ipset(BAN_SET[v]) == {}


@V
def test_restart_keeps_bans_and_unban_lifts_them(live: Bed, v: int) -> None:
    a = CLIENTS[v]["a"]
    net = ban_network(a)
    assert_reset_both_ways(live, rcpt_blocked(live, a))
    wait_banned(live, a)

    assert live.stop_inspector(signal.SIGTERM) == 0, live.inspector.tail()
    assert live.events(event="stopped"), "no 'stopped' event after SIGTERM"
    state = json.loads(live.state_file.read_text())
    assert net in [b["network"] for b in state["bans"]], state

    live.s("ipset", "flush", BAN_SET[v])
    assert live.ipset(BAN_SET[v]) == {}
    live.start_inspector()
    started = live.events(event="started")[-1]
    assert started.get("bans_restored", 1) >= 1, started
    left = live.banned(a)
    assert left is not None and DAY - 60 <= left <= DAY, f"ban not restored into the ipset: {left}"
    assert live.connect(a, 25, timeout=1)["error"] == "timeout"

    listing = live.cli("bans")
    assert listing.returncode == 0, listing.stderr
    assert net in listing.stdout and "domain" in listing.stdout, listing.stdout

    r = live.cli("unban", a)
    assert r.returncode == 0, r.stdout + r.stderr
    assert live.banned(a) is None
    state = json.loads(live.state_file.read_text())
    assert net not in [b["network"] for b in state["bans"]], state
    assert net not in live.cli("bans").stdout
    ok = live.smtp(a, ["user@example.org"])
    assert ok["delivered"], ok


@V
def test_sighup_with_broken_rules_keeps_the_old_ones(live: Bed, v: int) -> None:
    b, c = CLIENTS[v]["b"], CLIENTS[v]["c"]
    good = live.rules_file.read_bytes()
    live.rules_file.write_bytes(good + b"\xff\xfe not utf-8\n")
    live.inspector.send(signal.SIGHUP)
    bad = live.wait_event(event="reload")
    assert bad["ok"] is False and bad.get("error"), bad
    assert str(live.rules_file) in bad["error"], bad
    assert_reset_both_ways(live, rcpt_blocked(live, b))

    # a good file is taken: a newly blocked domain resets, and the old one stays blocked
    live.rules_file.write_bytes(good + b"newly.test\n")
    live.inspector.send(signal.SIGHUP)
    ok = live.wait_event(event="reload", after=1)
    assert ok["ok"] is True, ok
    assert_reset_both_ways(live, rcpt_blocked(live, c, "x@newly.test"))
    assert live.inspector.alive()


@V
def test_killed_inspector_fails_open(live: Bed, v: int) -> None:
    a, b = CLIENTS[v]["a"], CLIENTS[v]["b"]
    live.stop_inspector(signal.SIGKILL)
    r = live.smtp(b, ["user@example.org"], timeout=3)
    assert r["delivered"], r
    # nothing inspects now: even a blocked recipient goes through (--queue-bypass)
    r = rcpt_blocked(live, a)
    assert r["delivered"], r
    ssh = live.connect(a, 22, banner=True)
    assert ssh["ok"], ssh
    # and the setup script takes everything away again, leaving the administrator's rules as they were
    live.setup("remove")
    live.installed = False
    assert live.snapshot_rules() == live.rules_before


@V
def test_unban_without_a_running_service(live: Bed, v: int) -> None:
    a = CLIENTS[v]["a"]
    net = ban_network(a)
    assert_reset_both_ways(live, rcpt_blocked(live, a))
    wait_banned(live, a)
    assert live.stop_inspector(signal.SIGTERM) == 0
    listing = live.cli("bans")
    assert listing.returncode == 0 and net in listing.stdout, listing.stdout + listing.stderr
    r = live.cli("unban", a)
    assert r.returncode == 0, r.stdout + r.stderr
    assert live.banned(a) is None
    assert net not in [b["network"] for b in json.loads(live.state_file.read_text())["bans"]]
    # and it stays lifted when the service starts again
    live.start_inspector()
    assert live.banned(a) is None
    assert live.smtp(a, ["user@example.org"])["delivered"]


def test_ban_time_flag(bed: Bed) -> None:
    a = CLIENTS[4]["a"]
    bed.start_inspector("--ban-time", "120")
    assert_reset_both_ways(bed, rcpt_blocked(bed, a))
    left = wait_banned(bed, a)
    assert 100 <= left <= 120, left
    assert bed.wait_event(event="ban")["seconds"] == 120
