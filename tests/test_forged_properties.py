"""Property (issue 11): forged packets never ban anyone and never change a real session's verdict.

A real SMTP session (handshake with the server's SYN-ACK, as a two-sided capture shows it; its
envelope blocked or clean, split over segments) is interleaved with random forged client
packets: random sources, flags, payloads (envelope fragments among them), sequence and
acknowledgment numbers, including packets on the real session's 4-tuple (off its window: the
attacker is blind).  The verdicts of the real session must be exactly those it gets alone, and
the only ban is the real client's, when its envelope is blocked.  Forged *server* packets are
out of scope: the live queue never sees server->client packets.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from inspector.config import Config
from inspector.engine import Engine
from inspector.rules import DOMAIN, RuleFile, load_rules

EXAMPLES = int(os.environ.get("INSPECTOR_FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_dir = Path(tempfile.mkdtemp())
(_dir / "d.txt").write_text("blocked.test\n")
RULES = load_rules([RuleFile(_dir / "d.txt", DOMAIN)])

ISN, SERVER_ISN = 0x6C8E9CF5, 0x9E3779B9  # far from anything a strategy shrinks towards
REAL = {4: ("198.51.100.7", "192.0.2.25"), 6: ("2001:db8:1::7", "2001:db8::25")}
FORGED_SOURCES = {4: [f"203.0.113.{i}" for i in range(1, 9)] + ["192.0.2.25"],  # the server's own too
                  6: [f"2001:db8:{i:x}::{i:x}" for i in range(2, 9)] + ["2001:db8::25", "2001:db8::99"]}
PAYLOADS = [b"", b"QUIT\r\n", b"RCPT TO:<x@blocked.test>\r\n", b"MAIL FROM:<x@blocked.test>\r\n", b"DATA\r\n",
            b"ocked.test>\r\n", b"EHLO x\r\n", b"\r\n.\r\n"]


def ip(family: int, src: str, dst: str):  # noqa: ANN201
    return IP(src=src, dst=dst) if family == 4 else IPv6(src=src, dst=dst)


def real_session(family: int, blocked: bool) -> list[bytes]:
    c, s = REAL[family]
    lines = [b"EHLO me\r\n", b"MAIL FROM:<a@fine.test>\r\n", b"RCPT TO:<v@bl",
             b"ocked.test>\r\n" if blocked else b"ah.test>\r\n", b"DATA\r\n"]

    def cl(off: int, data: bytes = b"", flags: str = "PA") -> bytes:
        return bytes(ip(family, c, s) / TCP(sport=40000, dport=25, seq=(ISN + 1 + off) & 0xFFFFFFFF,
                                            ack=SERVER_ISN + 1, flags=flags) / data)

    out = [bytes(ip(family, c, s) / TCP(sport=40000, dport=25, seq=ISN, flags="S")),
           bytes(ip(family, s, c) / TCP(sport=25, dport=40000, seq=SERVER_ISN, ack=ISN + 1, flags="SA")),
           cl(0, flags="A")]
    off = 0
    for line in lines:
        out.append(cl(off, line))
        off += len(line)
    return out


@st.composite
def forged(draw: st.DrawFn, family: int) -> bytes:
    on_real = draw(st.booleans())
    c, s = REAL[family]
    if on_real:
        src, sport = c, 40000
        # blind: off the real window by at least 2**20 either way
        seq = (ISN + draw(st.integers(1 << 20, (1 << 32) - (1 << 20)))) & 0xFFFFFFFF
    else:
        src, sport = draw(st.sampled_from(FORGED_SOURCES[family])), draw(st.integers(1, 65535))
        seq = draw(st.integers(0, 0xFFFFFFFF))
    dport = draw(st.sampled_from([25, 22]))
    flags = draw(st.integers(0, 255))
    ack = draw(st.integers(0, 0xFFFFFFFF).filter(lambda a: not 0 < (a - SERVER_ISN) & 0xFFFFFFFF < 1 << 16))
    urg = draw(st.integers(0, 65535))
    payload = draw(st.one_of(st.sampled_from(PAYLOADS), st.binary(max_size=40)))
    opts = draw(st.sampled_from([[], [("Timestamp", (draw(st.integers(0, 0xFFFFFFFF)), 0))]]))
    return bytes(ip(family, src, s) / TCP(sport=sport, dport=dport, seq=seq, ack=ack, flags=flags, urgptr=urg,
                                          options=opts) / payload)


def verdicts(engine: Engine, packets: list[tuple[bool, bytes]]) -> list[tuple[str, str | None, int]]:
    out = []
    for i, (real, p) in enumerate(packets):
        v = engine.process(p, i * 0.01)
        if real and v.reason is not None:
            out.append((v.action.value, v.reason.value, v.ban))
    return out


@given(family=st.sampled_from([4, 6]), blocked=st.booleans(), data=st.data())
@SETTINGS
def test_forged_packets_never_ban_nor_change_a_real_session(family: int, blocked: bool, data: st.DataObject) -> None:
    real = real_session(family, blocked)
    alone = verdicts(Engine(Config(), RULES), [(True, p) for p in real])
    assert alone[:1] == ([("reset", "domain", 86400)] if blocked else [])
    noise = data.draw(st.lists(forged(family), max_size=30))
    # the real SYN first, then everything interleaved at random positions
    mixed: list[tuple[bool, bytes]] = [(True, real[0])]
    rest = [(True, p) for p in real[1:]]
    for n in noise:
        rest.insert(data.draw(st.integers(0, len(rest))), (False, n))
    engine = Engine(Config(), RULES)
    engine.expect_server_packets()  # a two-sided capture: replay tells the engine (has_server_packets)
    assert verdicts(engine, mixed + rest) == alone
    client = REAL[family][0]
    expected_bans = {client if family == 4 else "2001:db8:1::/64"} if blocked else set()
    assert {engine.ban_network(k) for k in engine.bans} == expected_bans


def test_replay_knows_a_two_sided_capture_before_its_first_packet(tmp_path: Path) -> None:
    """A forged envelope ahead of every server packet of a two-sided capture bans nobody on replay
    (the engine is told first); fed packet by packet without that, the same engine would ban."""
    from scapy.utils import wrpcap

    from inspector.replay import has_server_packets, replay_file

    c, s = REAL[4]
    first = IP(src="203.0.113.1", dst=s) / TCP(sport=1, dport=25, seq=0, ack=0, flags="PA") / \
        b"RCPT TO:<x@blocked.test>\r\n"
    packets = [bytes(first), *real_session(4, blocked=False)]
    capture = tmp_path / "forged-first.pcap"
    wrpcap(str(capture), [IP(p) for p in packets])
    assert has_server_packets(str(capture), [25, 22])
    result = replay_file(Engine(Config(), RULES), str(capture), collect=True)
    assert [d for d in result.decisions if d.get("ban")] == []
    unaware = Engine(Config(), RULES)
    assert {unaware.process(p, 0.0).reason for p in packets[:1]} != {None}  # the rule it relies on
