"""The policy path: protocol reader, decision and server (real sockets on loopback, no MTA)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inspector.config import ConfigError, load_config
from inspector.detect.domains import DomainMatcher
from inspector.events import MemorySink
from inspector.policy.decide import DUNNO, Decision, PolicyDecider, address_domain, address_domains
from inspector.policy.protocol import Request, RequestReader, encode_reply
from inspector.policy.server import Limits, PolicyServer, parse_listen, peer_uid
from inspector.policy.service import PolicyService
from inspector.policy.settings import PolicySettings

REPLY = "421 4.7.1 Service not available, closing transmission channel"
BASE = {"request": "smtpd_access_policy", "protocol_state": "RCPT", "protocol_name": "ESMTP",
        "client_address": "198.51.100.7", "client_name": "unknown", "helo_name": "client.test",
        "sender": "a@example.org", "recipient": "b@example.net", "encryption_protocol": "TLSv1.3"}


def wire(**attrs: str) -> bytes:
    merged = {**BASE, **attrs}
    return b"".join(f"{k}={v}\n".encode() for k, v in merged.items()) + b"\n"


# -- protocol ---------------------------------------------------------------------------------


def test_reader_one_request_any_split() -> None:
    data = wire()
    for step in (1, 2, 7, len(data)):
        reader = RequestReader()
        out: list[Request] = []
        for i in range(0, len(data), step):
            out += reader.feed(data[i:i + step])
        assert len(out) == 1 and out[0].error is None
        assert out[0].attributes == BASE
        assert not reader.pending


def test_reader_many_pipelined_requests_in_one_chunk() -> None:
    data = b"".join(wire(recipient=f"u{i}@example.net") for i in range(1000))
    out = RequestReader().feed(data)
    assert [r.get("recipient") for r in out] == [f"u{i}@example.net" for i in range(1000)]


def test_reader_crlf_stray_empty_lines_and_values_with_equals() -> None:
    data = b"\n\nrequest=smtpd_access_policy\r\nsender=a=b@example.org\r\nccert_subject=\r\n\r\n"
    (r,) = RequestReader().feed(data)
    assert r.error is None and r.get("sender") == "a=b@example.org" and r.get("ccert_subject") == ""


@pytest.mark.parametrize("body, why", [
    (b"request=smtpd_access_policy\nno equals sign\n\n", "without '='"),
    (b"request=smtpd_access_policy\n=value\n\n", "empty name"),
    (b"sender=a@example.org\n\n", "not request="),
    (b"request=something_else\nsender=a@example.org\n\n", "not request="),
])
def test_reader_malformed_requests_are_answered_and_the_stream_stays_in_step(body: bytes, why: str) -> None:
    out = RequestReader().feed(body + wire())
    assert len(out) == 2
    assert out[0].error is not None and why in out[0].error and out[0].attributes == {}
    assert out[1].error is None and out[1].get("recipient") == "b@example.net"


def test_reader_huge_attribute_line_is_bounded_and_skipped() -> None:
    reader = RequestReader(max_line=1024)
    out = reader.feed(b"request=smtpd_access_policy\nrecipient=" + b"x" * 5000)
    assert out == []
    assert len(reader._buffer) <= 1024  # noqa: SLF001 - the bound is the point of this test
    for _ in range(100):  # a line of 10 MB arrives: memory stays bounded
        assert reader.feed(b"y" * 100_000) == []
        assert len(reader._buffer) <= 1024  # noqa: SLF001
    out = reader.feed(b"@blocked.test\nsender=s@example.org\n\n" + wire())
    assert len(out) == 2
    assert out[0].error is not None and "longer than 1024" in out[0].error
    assert out[1].error is None


def test_reader_request_size_and_line_count_bounds() -> None:
    reader = RequestReader(max_line=100, max_request=1000, max_attributes=50)
    many = b"request=smtpd_access_policy\n" + b"".join(b"a%d=%s\n" % (i, b"v" * 50) for i in range(40)) + b"\n"
    (r,) = reader.feed(many)
    assert r.error is not None and "longer than 1000" in r.error
    lines = b"request=smtpd_access_policy\n" + b"".join(b"a%d=v\n" % i for i in range(60)) + b"\n"
    (r,) = reader.feed(lines)
    assert r.error is not None and "more than 50" in r.error
    (r,) = reader.feed(wire())
    assert r.error is None


def test_reader_eof_completes_an_unterminated_request_as_exim_sends_it() -> None:
    reader = RequestReader()
    assert reader.feed(b"request=smtpd_access_policy\nsender=a@example.org\nrecipient=b@blocked.test") == []
    r = reader.eof()
    assert r is not None and r.error is None and r.get("recipient") == "b@blocked.test"
    assert RequestReader().eof() is None
    reader = RequestReader()
    reader.feed(wire())
    assert reader.eof() is None


def test_encode_reply_is_one_line() -> None:
    assert encode_reply("DUNNO") == b"action=DUNNO\n\n"
    assert encode_reply("421 a\r\nb") == b"action=421 a  b\n\n"


# -- decision ---------------------------------------------------------------------------------


def decider(alert: bool = False, whitelist: tuple[str, ...] = ("203.0.113.0/24", "2001:db8:ffff::/48")
            ) -> PolicyDecider:
    matcher = DomainMatcher({"blocked.test": 0, "xn--bcher-kva.test": 0})
    nets = [ipaddress.ip_network(n) for n in whitelist]

    def whitelisted(a: str) -> bool:
        ip = ipaddress.ip_address(a)
        return any(ip in n for n in nets if n.version == ip.version)

    def ban_network(a: str) -> str:
        ip = ipaddress.ip_address(a)
        return str(ipaddress.ip_network(f"{a}/64", strict=False)) if ip.version == 6 else a
    return PolicyDecider(lambda: matcher, whitelisted, ban_network, REPLY, alert)


def request(**attrs: str) -> Request:
    (r,) = RequestReader().feed(wire(**attrs))
    return r


@pytest.mark.parametrize("address", [
    "x@blocked.test", "x@BLOCKED.Test", "x@mx.blocked.test", "x@blocked.test.", "x@y@blocked.test",
    "x@b\u00fccher.test", "x@MX.B\u00dcCHER.test",
    "v%blocked.test@[192.0.2.25]", "v%x.org%Blocked.Test@mx.example.net", "blocked.test!v",
    "blocked.test!v@[192.0.2.25]",
])
def test_blocked_recipient_and_sender_same_semantics_as_the_packet_path(address: str) -> None:
    d = decider().decide(request(recipient=address))
    assert (d.action, d.outcome, d.field, d.ban_network) == (REPLY, "reject", "recipient", "198.51.100.7")
    d = decider().decide(request(sender=address, recipient="b@example.net", protocol_state="MAIL"))
    assert (d.outcome, d.field, d.state) == ("reject", "sender", "MAIL")


@pytest.mark.parametrize("address", [
    "x@notblocked.test", "x@blocked.test.evil.example", "blocked.test@example.net", "x@[192.0.2.1]", "", "postmaster",
    "v%blocked.test%example.org@[192.0.2.25]", "v!blocked.test@example.org",
])
def test_clean_addresses_are_dunno(address: str) -> None:
    assert decider().decide(request(recipient=address)).action == DUNNO


def test_address_domain() -> None:
    assert address_domain("A@Example.COM.") == "example.com"
    assert address_domain("") is None and address_domain("x@[192.0.2.1]") is None
    assert address_domains("a!b!v%c.org%d.org@e.org") == ["e.org", "d.org", "a"]


def test_whitelist_alert_unknown_client_and_ipv6_prefix() -> None:
    assert decider().decide(request(recipient="x@blocked.test", client_address="203.0.113.9")).outcome == "whitelisted"
    d = decider().decide(request(recipient="x@blocked.test", client_address="2001:db8:ffff::1"))
    assert (d.action, d.outcome) == (DUNNO, "whitelisted")
    d = decider(alert=True).decide(request(recipient="x@blocked.test"))
    assert (d.action, d.outcome) == (DUNNO, "alert")
    d = decider().decide(request(recipient="x@blocked.test", client_address="unknown"))
    assert (d.action, d.ban_network) == (REPLY, None)
    d = decider().decide(request(recipient="x@blocked.test", client_address=""))  # Exim: a local -bs submission
    assert (d.action, d.outcome) == (DUNNO, "whitelisted")
    d = decider().decide(request(recipient="x@blocked.test", client_address="2001:db8:1:2::99"))
    assert d.ban_network == "2001:db8:1:2::/64"
    d = decider().decide(request(recipient="x@blocked.test", client_address="::ffff:198.51.100.9"))
    assert (d.client, d.ban_network) == ("198.51.100.9", "198.51.100.9")
    assert decider().decide(request(recipient="x@blocked.test", client_address="::ffff:203.0.113.9")).outcome \
        == "whitelisted"


def test_malformed_is_dunno_and_reply_must_end_the_session() -> None:
    (bad,) = RequestReader().feed(b"junk\n\n")
    assert decider().decide(bad).outcome == "malformed" and decider().decide(bad).action == DUNNO
    with pytest.raises(ValueError, match="421 or 521"):
        PolicyDecider(lambda: DomainMatcher({}), lambda a: False, str, "REJECT blocked")
    with pytest.raises(ValueError, match="421 or 521"):
        PolicyDecider(lambda: DomainMatcher({}), lambda a: False, str, "550 5.7.1 no")


# -- server -------------------------------------------------------------------------------------


class Recorder:
    def __init__(self, delay: float = 0.0) -> None:
        self.acted: list[Decision] = []
        self.delay = delay

    def __call__(self, decision: Decision) -> None:
        time.sleep(self.delay)
        self.acted.append(decision)


@pytest.fixture
def server() -> Iterator[tuple[PolicyServer, Recorder]]:
    rec = Recorder()
    s = PolicyServer(parse_listen("127.0.0.1:0"), decider().decide, rec,
                     Limits(max_connections=8, request_timeout=1.0, idle_timeout=3.0))
    s.start()
    try:
        yield s, rec
    finally:
        s.close()


def connect(s: PolicyServer) -> socket.socket:
    c = socket.create_connection(tuple(s.address), timeout=5)
    return c


def read_replies(c: socket.socket, n: int) -> list[bytes]:
    buf = b""
    while buf.count(b"\n\n") < n:
        chunk = c.recv(65536)
        if not chunk:
            break
        buf += chunk
    return [r for r in buf.split(b"\n\n") if r]


def test_server_answers_pipelined_requests_on_one_connection_in_order(server: tuple[PolicyServer, Recorder]) -> None:
    s, rec = server
    n = 2000
    with connect(s) as c:
        data = b"".join(wire(recipient=f"u{i}@{'blocked.test' if i % 100 == 7 else 'example.net'}")
                        for i in range(n))
        threading.Thread(target=c.sendall, args=(data,), daemon=True).start()
        replies = read_replies(c, n)
    assert len(replies) == n
    assert [i for i, r in enumerate(replies) if r != b"action=DUNNO"] == [i for i in range(n) if i % 100 == 7]
    assert all(replies[i] == f"action={REPLY}".encode() for i in range(7, n, 100))
    assert len(rec.acted) == n // 100
    st = s.status()
    assert st["counts"]["requests"] == n and st["counts"]["reject"] == n // 100 and st["latency_ms"]["p99"] >= 0


def test_server_malformed_and_huge_requests_get_dunno_and_are_counted(server: tuple[PolicyServer, Recorder]) -> None:
    s, rec = server
    with connect(s) as c:
        c.sendall(b"junk\n\n" + b"request=smtpd_access_policy\nrecipient=" + b"x" * 200_000 + b"@blocked.test\n\n"
                  + wire(recipient="x@blocked.test"))
        replies = read_replies(c, 3)
    assert replies == [b"action=DUNNO", b"action=DUNNO", f"action={REPLY}".encode()]
    assert s.status()["counts"]["malformed"] == 2


def test_server_request_deadline_closes_a_stalled_request(server: tuple[PolicyServer, Recorder]) -> None:
    s, _ = server
    with connect(s) as c:
        c.sendall(b"request=smtpd_access_policy\nsender=a@example.org\n")  # never finished
        started = time.monotonic()
        assert c.recv(100) == b""  # closed by the server
        took = time.monotonic() - started
    assert 0.5 < took < 4.0
    assert s.status()["counts"]["timeouts:request"] == 1


def test_server_trickled_request_still_hits_the_deadline(server: tuple[PolicyServer, Recorder]) -> None:
    s, _ = server
    with connect(s) as c:
        started = time.monotonic()
        closed = False
        for _ in range(40):  # one byte every 0.1 s: never idle, never finished
            try:
                c.sendall(b"x")
            except OSError:
                closed = True
                break
            time.sleep(0.1)
            c.setblocking(False)
            try:
                if c.recv(100) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            finally:
                c.setblocking(True)
        assert closed and time.monotonic() - started < 3.5


def test_server_exim_half_close_answers_then_closes(server: tuple[PolicyServer, Recorder]) -> None:
    s, rec = server
    for body in (wire(recipient="x@blocked.test"), wire(recipient="x@blocked.test")[:-2]):
        with connect(s) as c:
            c.sendall(body)
            c.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := c.recv(4096):
                data += chunk
        assert data == f"action={REPLY}\n\n".encode()


def test_server_many_concurrent_connections_and_the_capacity_bound(server: tuple[PolicyServer, Recorder]) -> None:
    s, _ = server
    conns = [connect(s) for _ in range(8)]
    try:
        for c in conns:  # every one of the 8 is served
            c.sendall(wire())
            assert read_replies(c, 1) == [b"action=DUNNO"]
        extra = connect(s)
        with extra:
            assert extra.recv(100) == b""  # the ninth is closed at once
        assert s.status()["counts"]["refused:capacity"] >= 1
    finally:
        for c in conns:
            c.close()
    deadline = time.monotonic() + 3
    while s.status()["connections"] and time.monotonic() < deadline:
        time.sleep(0.02)
    with connect(s) as c:  # capacity is given back
        c.sendall(wire())
        assert read_replies(c, 1) == [b"action=DUNNO"]


def test_server_slow_ban_never_holds_the_answer_past_the_deadline() -> None:
    rec = Recorder(delay=3.0)
    s = PolicyServer(parse_listen("127.0.0.1:0"), decider().decide, rec, Limits(request_timeout=0.5))
    s.start()
    try:
        with connect(s) as c:
            started = time.monotonic()
            c.sendall(wire(recipient="x@blocked.test"))
            assert read_replies(c, 1) == [f"action={REPLY}".encode()]
            assert time.monotonic() - started < 2.0
        assert s.status()["counts"]["act-late"] == 1
    finally:
        s.close()


def test_server_a_stuck_ban_pipeline_holds_bounded_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import inspector.policy.server as server_module

    monkeypatch.setattr(server_module, "MAX_PENDING_ACTS", 3)
    gate = threading.Event()
    s = PolicyServer(parse_listen("127.0.0.1:0"), decider().decide, lambda d: gate.wait(10),
                     Limits(request_timeout=0.2))
    s.start()
    try:
        with connect(s) as c:
            c.sendall(b"".join(wire(recipient="x@blocked.test") for _ in range(10)))
            assert read_replies(c, 10) == [f"action={REPLY}".encode()] * 10
        counts = s.status()["counts"]
        assert counts["act-dropped"] == 7 and counts["act-late"] == 3
    finally:
        gate.set()
        s.close()


def test_server_decide_failure_fails_open() -> None:
    def broken(r: Request) -> Decision:
        raise RuntimeError("boom")
    s = PolicyServer(parse_listen("127.0.0.1:0"), broken, Recorder())
    s.start()
    try:
        with connect(s) as c:
            c.sendall(wire() + wire())
            assert read_replies(c, 2) == [b"action=DUNNO", b"action=DUNNO"]
        assert s.status()["counts"]["errors:decide"] == 2
    finally:
        s.close()


def test_server_unix_socket_and_peer_uid(tmp_path: Path) -> None:
    path = tmp_path / "policy.sock"
    me = os.getuid()
    allowed = PolicyServer(parse_listen(f"unix:{path}"), decider().decide, Recorder(), uids=frozenset({me}))
    allowed.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(path))
            assert peer_uid(c) == me
            c.sendall(wire())
            assert read_replies(c, 1) == [b"action=DUNNO"]
    finally:
        allowed.close()
    assert not path.exists()
    with socket.socket(socket.AF_UNIX) as other:  # a live socket of another process is left alone
        other.bind(str(path))
        other.listen(1)
        second = PolicyServer(parse_listen(f"unix:{path}"), decider().decide, Recorder())
        with pytest.raises(OSError, match="another process answers"):
            second.start()
        second.close()
        assert path.exists()
    path.unlink()
    refused = PolicyServer(parse_listen("127.0.0.1:0"), decider().decide, Recorder(), uids=frozenset({me + 1}))
    refused.start()
    try:
        with connect(refused) as c:
            assert peer_uid(c) == me  # the loopback TCP peer is found (sock_diag, else /proc/net/tcp)
            try:  # refused at once: closed, or reset if our request arrived after the close
                c.sendall(wire())
                assert c.recv(100) == b""
            except ConnectionResetError:
                pass
        assert refused.status()["counts"]["refused:peer"] == 1
    finally:
        refused.close()


def test_server_ipv6_loopback_peer_uid() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    s = PolicyServer(parse_listen("[::1]:0"), decider().decide, Recorder(), uids=frozenset({os.getuid()}))
    s.start()
    try:
        with socket.create_connection(("::1", s.address[1]), timeout=5) as c:
            assert peer_uid(c) == os.getuid()
            c.sendall(wire(recipient="x@blocked.test", client_address="2001:db8:1:2::99"))
            assert read_replies(c, 1) == [f"action={REPLY}".encode()]
    finally:
        s.close()


def test_parse_listen() -> None:
    assert str(parse_listen("127.0.0.1:10040")) == "127.0.0.1:10040"
    assert str(parse_listen("[::1]:10040")) == "[::1]:10040"
    assert parse_listen("unix:/run/inspector/policy.sock").path == "/run/inspector/policy.sock"
    for bad in ("192.0.2.1:10040", "0.0.0.0:10040", "localhost:10040", "10040", "unix:relative", "127.0.0.1:99999"):
        with pytest.raises(ValueError):
            parse_listen(bad)


# -- the service: decisions into events and the ban pipeline ----------------------------------------


def test_service_bans_through_the_pipeline_and_reports_the_path() -> None:
    events = MemorySink()
    bans: list[tuple[str, int, str, float]] = []
    d = decider()
    service = PolicyService(PolicySettings(listen=parse_listen("127.0.0.1:0")), DomainMatcher({"blocked.test": 0}),
                            d.whitelisted, d.ban_network, lambda *a: bans.append(a) or True, 3600, events,
                            lambda: 1000.0)
    service.start()
    try:
        with connect(service.server) as c:
            c.sendall(wire(recipient="x@mx.blocked.test") + wire() + b"junk\n\n")
            assert read_replies(c, 3) == [f"action={service.settings.reply}".encode(), b"action=DUNNO",
                                          b"action=DUNNO"]
        service.swap_domains(DomainMatcher({"example.net": 0}))
        with connect(service.server) as c:
            c.sendall(wire(client_address="2001:db8:5::1"))
            assert read_replies(c, 1)[0].startswith(b"action=421")
    finally:
        service.close()
    assert bans == [("198.51.100.7", 3600, "blocked.test", 1000.0), ("2001:db8:5::/64", 3600, "example.net", 1000.0)]
    verdicts = [e for e in events.events if e["event"] == "verdict"]
    assert [(e["path"], e["reason"], e["src"], e["field"], e["tls"]) for e in verdicts] == [
        ("policy", "domain", "198.51.100.7", "recipient", "TLSv1.3"),
        ("policy", "domain", "2001:db8:5::1", "recipient", "TLSv1.3")]
    assert [e["what"] for e in events.events if e["event"] == "error"] == ["policy-request"]


def test_policy_config_section(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[policy]\nlisten = "127.0.0.1:10040"\nrequest_timeout = 2\nusers = ["postfix"]\n')
    policy = load_config(cfg).policy
    assert policy.listen is not None and policy.listen.port == 10040 and policy.limits.request_timeout == 2
    assert load_config(None).policy.listen is None
    for text, where in (('[policy]\nlisten = "192.0.2.1:25"\n', ":2: policy.listen"),
                        ('[policy]\n\nreply = "REJECT no"\n', ":3: policy.reply"),
                        ('[policy]\nbogus = 1\n', ":2: policy.bogus"),
                        ('[policy]\nmax_connections = 0\n', ":2: policy.max_connections")):
        cfg.write_text(text)
        with pytest.raises(ConfigError, match=where):
            load_config(cfg)


def test_report_counts_both_paths() -> None:
    import json

    from inspector.report import build_report, render_text

    lines = [json.dumps(e) for e in (
        {"event": "verdict", "time": 10, "verdict": "reset", "reason": "domain", "src": "198.51.100.1",
         "rule": "blocked.test", "match": "<x@blocked.test>"},
        {"event": "ban", "time": 10, "network": "198.51.100.1", "seconds": 60, "reason": "domain"},
        {"event": "verdict", "time": 11, "path": "policy", "verdict": "reject", "reason": "domain",
         "src": "198.51.100.2", "rule": "blocked.test", "match": "y@blocked.test", "tls": "TLSv1.3"},
        {"event": "ban", "time": 11, "network": "198.51.100.2", "seconds": 60, "reason": "domain", "path": "policy"},
        {"event": "ban", "time": 12, "network": "198.51.100.3", "seconds": 60, "reason": "log:sshd"},
    )]
    r = build_report(lines, 0, 100)
    assert r.blocks["domain"] == 2 and r.bans["domain"] == 2
    assert dict(r.block_paths) == {"packet": 1, "policy": 1}
    assert dict(r.ban_paths) == {"packet": 1, "policy": 1, "log": 1}
    text = render_text(r)
    assert "blocks by path" in text and "policy" in text
    assert r.as_dict()["bans_by_path"] == {"packet": 1, "policy": 1, "log": 1}


def test_status_shows_the_policy_path() -> None:
    from inspector.status import render

    st = {"ok": True, "pid": 7, "mode": "enforce", "paths": ["policy"], "uptime": 5, "bans_active": 1,
          "bans_by_reason": {"domain": 1}, "recent_bans": [],
          "policy": {"listen": "127.0.0.1:10040", "connections": 3,
                     "counts": {"requests": 10, "reject": 1, "dunno": 8, "malformed": 1, "timeouts:request": 2},
                     "latency_ms": {"p50": 0.1, "p99": 0.4, "samples": 10}}}
    text = render("/run/x", st)
    assert "policy path only" in text and "10 requests: 1 rejected, 8 DUNNO" in text and "timeouts:request 2" in text


# -- inside the service: a side component of inspector run (fakes, no root) ------------------------


def test_inspector_run_serves_the_policy_path_bans_through_the_pipeline_and_reloads(tmp_path: Path) -> None:
    from inspector.testing import FakeQueue
    from tests.conftest import Conn
    from tests.test_service import Bed as ServiceBed

    bed = ServiceBed(tmp_path, extra='[policy]\nlisten = "127.0.0.1:0"\nusers = []\n',
                     own=("192.0.2.25", "2001:db8::25"))
    bed.service.start()
    try:
        component = bed.service.host.components["policy"]
        address = component.service.server.address  # type: ignore[attr-defined]
        # one process: the policy path shares the packet side's rules (a big list is not held twice)
        assert component.service.decider.domains() is bed.service.side.rules.domains  # type: ignore[attr-defined]
        with socket.create_connection(tuple(address), timeout=5) as c:
            c.sendall(wire(recipient="x@mx.blocked.test", client_address="198.51.100.7") + wire()
                      # this host itself and loopback (local submission): as whitelisted
                      + wire(recipient="x@blocked.test", client_address="192.0.2.25")
                      + wire(recipient="x@blocked.test", client_address="::1")
                      # a neighbour in this host's /64: rejected, not banned (the pipeline refuses)
                      + wire(recipient="x@blocked.test", client_address="2001:db8::99"))
            assert read_replies(c, 5) == [f"action={REPLY}".encode(), b"action=DUNNO", b"action=DUNNO",
                                          b"action=DUNNO", f"action={REPLY}".encode()]
        deadline = time.monotonic() + 5
        while not any(e["event"] == "ban-refused" for e in bed.events.events) and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = next(e for e in bed.events.events if e["event"] == "ban-refused")
        assert (refused["network"], refused["protected"], refused["path"]) == ("2001:db8::/64", "own /64", "policy")
        assert bed.firewall.entries == {"198.51.100.7": 1000.0 + 86400}
        ban = next(e for e in bed.events.events if e["event"] == "ban")
        assert (ban["path"], ban["reason"], ban["rule"]) == ("policy", "domain", "blocked.test")
        # the packet path knows the ban too (the pipeline's listener): the next SYN is dropped
        assert isinstance(bed.queue, FakeQueue)
        [late] = bed.feed(Conn(sport=7).syn())
        assert late.verdict == "drop"
        st = bed.service.host.status()
        assert st["policy"]["counts"]["reject"] == 2 and st["policy"]["counts"]["requests"] == 5
        assert st["policy"]["counts"]["whitelisted"] == 2
        # SIGHUP: new rules for both paths
        (tmp_path / "rules" / "blocked.txt").write_text("example.net\n")
        bed.service.side.request_reload()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            bed.service.loop.turn()
            with socket.create_connection(tuple(address), timeout=5) as c:
                c.sendall(wire(client_address="198.51.100.8"))
                if read_replies(c, 1) != [b"action=DUNNO"]:
                    break
            time.sleep(0.05)
        else:
            pytest.fail("the policy path did not take the reloaded rules")
        assert component.service.decider.domains() is bed.service.side.rules.domains  # type: ignore[attr-defined]
    finally:
        bed.service.stop()
    assert any(e["event"] == "stopped" for e in bed.events.events)


def test_a_taken_listen_address_is_a_clear_start_error() -> None:
    from inspector.service import ServiceError
    from inspector.service.components import _PolicyComponent

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        d = decider()
        service = PolicyService(PolicySettings(listen=parse_listen(f"127.0.0.1:{port}")), DomainMatcher({}),
                                d.whitelisted, d.ban_network, lambda *a: True, 60, MemorySink(), time.time)
        with pytest.raises(ServiceError, match=r"\[policy\] listen: .*Address already in use"):
            _PolicyComponent(service).start()
        service.close()


def test_status_screen_of_inspector_run_has_a_policy_line() -> None:
    from inspector.status import render

    st = {"ok": True, "pid": 7, "mode": "enforce", "queue": 0, "workers": 1, "uptime": 5, "packets": 10,
          "queues": [], "live": {}, "rules": {},
          "policy": {"listen": "127.0.0.1:10040", "connections": 1, "counts": {"requests": 4, "reject": 1}}}
    text = render("/run/x", st)
    assert "policy path: 127.0.0.1:10040" in text and "4 requests: 1 rejected" in text


def test_reader_fast_path_and_line_path_agree() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    line = st.one_of(
        st.sampled_from([b"request=smtpd_access_policy", b"recipient=x@blocked.test", b"sender=", b"=v", b"noeq",
                         b"sender=a@b", b"x=" + b"y" * 300, b"request=other", b"k=\xff\xfe\xc3"]),
        st.binary(max_size=40).filter(lambda b: b"\n" not in b))
    request = st.lists(line, max_size=12).map(lambda ls: b"".join(x + b"\n" for x in ls) + b"\n")
    stream = st.lists(st.tuples(request, st.booleans()), max_size=6).map(
        lambda rs: b"".join(r.replace(b"\n", b"\r\n") if crlf else r for r, crlf in rs))

    def parse(data: bytes, step: int) -> list[tuple[dict[str, str], bool]]:
        reader = RequestReader(max_line=200, max_request=1000, max_attributes=8)
        out: list[Request] = []
        for i in range(0, len(data), step):
            out += reader.feed(data[i:i + step])
        return [(r.attributes, r.error is None) for r in out]

    @settings(max_examples=300, deadline=None)
    @given(stream)
    def agree(data: bytes) -> None:
        assert parse(data, max(1, len(data))) == parse(data, 1)

    agree()


def test_reader_never_raises_and_stays_bounded_on_any_bytes() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.binary(max_size=300), max_size=20))
    def check(chunks: list[bytes]) -> None:
        reader = RequestReader(max_line=64, max_request=256, max_attributes=4)
        for chunk in chunks:
            for r in reader.feed(chunk):
                assert (r.error is None) == bool(r.attributes)
            assert len(reader._buffer) <= 64  # noqa: SLF001 - the bound is the point
        reader.eof()
        assert not reader.pending

    check()


def test_server_one_hundred_concurrent_mta_connections() -> None:
    s = PolicyServer(parse_listen("127.0.0.1:0"), decider().decide, Recorder(), Limits(max_connections=256))
    s.start()
    try:
        conns = [connect(s) for _ in range(100)]
        try:
            for i, c in enumerate(conns):
                c.sendall(wire(recipient=f"u{i}@{'blocked.test' if i % 10 == 0 else 'example.net'}"))
            for i, c in enumerate(conns):
                want = f"action={REPLY}".encode() if i % 10 == 0 else b"action=DUNNO"
                assert read_replies(c, 1) == [want]
            assert s.status()["connections"] == 100
        finally:
            for c in conns:
                c.close()
    finally:
        s.close()


def test_metrics_show_the_policy_path() -> None:
    pytest.importorskip("prometheus_client")
    from inspector.metrics import StatusCollector

    st = {"policy": {"connections": 2, "counts": {"requests": 5, "reject": 1, "dunno": 4}}}
    families = {f.name: f for f in StatusCollector(lambda: st).collect()}
    samples = {s.labels.get("outcome"): s.value for s in families["inspector_policy_requests"].samples
               if s.name.endswith("_total")}
    assert samples == {"dunno": 4, "reject": 1, "requests": 5}
    assert families["inspector_policy_connections"].samples[0].value == 2


NOBODY = 65534


def _as_nobody(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                             "/usr/bin/python3", "-c", code])


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists(),
                    reason="needs root and setpriv to connect as another user")
def test_peer_uid_of_another_users_tcp_socket_without_the_proc_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # the exact socket lookup (sock_diag) answers without reading the whole /proc/net/tcp
    import builtins

    real_open = builtins.open

    def no_proc(path: Any, *a: Any, **kw: Any) -> Any:
        if str(path).startswith("/proc/net/tcp"):
            raise OSError("not read")
        return real_open(path, *a, **kw)
    with socket.socket() as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen()
        child = _as_nobody(f"import socket,time; s=socket.create_connection(('127.0.0.1',{ls.getsockname()[1]}));"
                           " time.sleep(2)")
        try:
            ls.settimeout(10)
            conn, _ = ls.accept()
            with conn:
                monkeypatch.setattr(builtins, "open", no_proc)
                assert peer_uid(conn) == NOBODY
        finally:
            child.wait(10)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists(),
                    reason="needs root and setpriv to connect as another user")
def test_connections_of_refused_local_users_never_take_the_mtas_places(monkeypatch: pytest.MonkeyPatch) -> None:
    # an unprivileged local user floods the loopback port while the peer checks are slow (a big
    # socket table): the MTA's connection must still be answered, not refused for capacity
    import inspector.policy.server as server_module

    # the slow part: the scan of the socket table (before sock_diag, every check scanned it)
    target = "_proc_uid" if hasattr(server_module, "_proc_uid") else "peer_uid"
    real = getattr(server_module, target)

    def slow(sock: socket.socket) -> int | None:
        time.sleep(0.3)
        return real(sock)  # type: ignore[no-any-return]
    monkeypatch.setattr(server_module, target, slow)
    s = PolicyServer(parse_listen("127.0.0.1:0"), decider().decide, Recorder(),
                     Limits(max_connections=4, request_timeout=2.0, idle_timeout=5.0), uids=frozenset({0}))
    s.start()
    port = s.address[1]
    flood = _as_nobody("import socket,time\nheld=[]\n"
                       f"for _ in range(40):\n    held.append(socket.create_connection(('127.0.0.1',{port})))\n"
                       "time.sleep(4)")
    try:
        time.sleep(1.0)  # the 40 connections are in, their checks queued
        with connect(s) as c:
            c.sendall(wire())
            assert read_replies(c, 1) == [b"action=DUNNO"]
        assert s.status()["counts"].get("refused:capacity", 0) == 0
    finally:
        flood.wait(15)
        s.close()
