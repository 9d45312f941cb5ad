"""The engine reads a client stream as the receiving Linux kernel does (issue 12, kind 1 and 6)
and only proven connections can count, decide or ban (issue 11, items 1-3).

Each test is one kind; IPv4 and IPv6, both decide modes where the kind touches them."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from inspector.engine import Engine
from inspector.verdict import Action, Reason

SERVER = {4: "192.0.2.25", 6: "2001:db8::25"}
CLIENT = {4: "198.51.100.7", 6: "2001:db8:1::7"}
SERVER_ISN = 0x70000000


class Peer:
    """Both ends of one connection, with full control of flags, options and sequence numbers."""

    def __init__(self, family: int = 4, sport: int = 40000, dport: int = 25, isn: int = 0x10000000,
                 src: str | None = None, ts: int | None = None) -> None:
        self.src, self.dst = src or CLIENT[family], SERVER[family]
        self.sport, self.dport, self.isn, self.ts = sport, dport, isn, ts
        self.server_next = SERVER_ISN + 1

    def _ip(self, to_server: bool = True):  # noqa: ANN202
        a, b = (self.src, self.dst) if to_server else (self.dst, self.src)
        return IPv6(src=a, dst=b) if ":" in a else IP(src=a, dst=b)

    def client(self, offset: int, data: bytes = b"", flags: str = "PA", ts: int | None = None,
               urgptr: int = 0, ack: int | None = None, seq: int | None = None) -> bytes:
        opts = [("NOP", None), ("NOP", None), ("Timestamp", (ts, 0))] if ts is not None else []
        tcp = TCP(sport=self.sport, dport=self.dport, flags=flags, urgptr=urgptr, options=opts,
                  seq=seq if seq is not None else (self.isn + 1 + offset) & 0xFFFFFFFF,
                  ack=self.server_next if ack is None else ack)
        return bytes(self._ip() / tcp / data)

    def syn(self, data: bytes = b"", isn: int | None = None) -> bytes:
        opts = [("MSS", 1460), ("Timestamp", (self.ts, 0))] if self.ts is not None else [("MSS", 1460)]
        return bytes(self._ip() / TCP(sport=self.sport, dport=self.dport, flags="S", options=opts,
                                      seq=self.isn if isn is None else isn) / data)

    def synack(self) -> bytes:
        return bytes(self._ip(False) / TCP(sport=self.dport, dport=self.sport, flags="SA", seq=SERVER_ISN,
                                           ack=(self.isn + 1) & 0xFFFFFFFF))

    def opened(self) -> list[bytes]:
        """SYN and the handshake's ACK (client-only view)."""
        return [self.syn(), self.client(0, flags="A", ts=self.ts)]


def feed(engine: Engine, packets: list[bytes], start: float = 0.0) -> list:
    out = []
    for i, p in enumerate(packets):
        v = engine.process(p, start + i * 0.001)
        if v.reason is not None:
            out.append(v)
    return out


def session(peer: Peer, lines: list[bytes], ts: int | None = None) -> list[bytes]:
    out, off = [], 0
    for line in lines:
        out.append(peer.client(off, line, ts=ts))
        off += len(line)
    return out


ENVELOPE = [b"EHLO me\r\n", b"MAIL FROM:<a@fine.test>\r\n"]


# -- kind 1: urgent data ---------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("decide", ["early", "depth"])
def test_urgent_byte_is_not_part_of_the_stream(make_engine, family, decide):
    e = make_engine(domains="example.com\n", decide=decide)
    p = Peer(family)
    line = b"RCPT TO:<v@exaXmple.com>\r\n"
    off = sum(map(len, ENVELOPE))
    # the urgent pointer points one past the urgent byte (Linux, tcp_stdurg = 0)
    pkts = p.opened() + session(p, ENVELOPE) + [p.client(off, line, flags="PAU", urgptr=line.index(b"X") + 1)]
    [v] = feed(e, pkts)
    assert (v.action, v.reason, v.rule, v.match) == (Action.RESET, Reason.DOMAIN, "example.com", "<v@example.com>")


def test_urgent_pointer_into_a_later_segment_and_stale_pointers(make_engine):
    e = make_engine(domains="example.com\n")
    p = Peer()
    off = sum(map(len, ENVELOPE))
    a, b = b"RCPT TO:<v@exa", b"Xmple.com>\r\n"
    # the pointer in segment a designates the first byte of segment b (not arrived yet: TCP_URG_NOTYET)
    pkts = p.opened() + session(p, ENVELOPE) + [p.client(off, a, flags="PAU", urgptr=len(a) + 1),
                                                  p.client(off + len(a), b)]
    [v] = feed(e, pkts)
    assert v.match == "<v@example.com>"
    # a pointer at bytes already received is ignored (tcp_check_urg: before rcv_nxt)
    e2 = make_engine(domains="example.com\n")
    q = Peer(sport=40001)
    pkts = q.opened() + session(q, ENVELOPE) + [q.client(off, b"RCPT TO:<v@example.com>\r\n"),
                                                  q.client(off, b"RCPT", flags="PAU", urgptr=2)]
    assert [x.match for x in feed(e2, pkts) if x.reason is Reason.DOMAIN] == ["<v@example.com>"]


def test_second_urgent_pointer_after_the_first_byte_arrived_is_ambiguous(make_engine):
    e = make_engine(domains="example.com\n")
    p = Peer()
    off = sum(map(len, ENVELOPE))
    pkts = p.opened() + session(p, ENVELOPE) + [p.client(off, b"RCPT TO:<v@exa", flags="PAU", urgptr=3),
                                                  p.client(off + 14, b"Xmple.com>\r\n", flags="PAU", urgptr=1)]
    [v] = feed(e, pkts)
    assert (v.action, v.reason, v.detail, v.ban) == (Action.RESET, Reason.TCP_STREAM, "urgent-pointer-replaced", 0)


# -- kind 6: flags ---------------------------------------------------------------------------


def test_fin_psh_urg_ack_is_a_legal_close_but_exact_xmas_is_not(make_engine):
    e = make_engine()
    p = Peer()
    quit_ = p.client(0, b"QUIT\r\n", flags="FPUA", urgptr=0)
    assert feed(e, p.opened() + [quit_]) == []
    assert len(e.flows) == 0  # the FIN ended the flow
    [v] = feed(e, [Peer(sport=41000).client(0, b"", flags="FPU")])
    assert (v.action, v.reason, v.rule, v.ban) == (Action.DROP, Reason.TCP_FLAGS, "XMAS", 0)
    for flags, name in (("F", "FIN"), ("", "NULL"), ("FU", "FIN+URG"), ("SF", "SYN+FIN"), ("SR", "SYN+RST")):
        [v] = feed(e, [Peer(sport=41001).client(0, b"x", flags=flags)])
        assert (v.rule, v.ban) == (name, 0)
    assert not e.bans


# -- kind 1: PAWS ----------------------------------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
def test_paws_discards_a_stale_copy_and_reads_the_current_one(make_engine, family):
    e = make_engine(domains="example.com\n")
    p = Peer(family, ts=5000)
    off = sum(map(len, ENVELOPE))
    stale = p.client(off, b"RCPT TO:<v@safe.test>\r\n", ts=100)  # more than 1 behind ts_recent
    current = p.client(off, b"RCPT TO:<v@example.com>\r\n", ts=5002)
    [v] = feed(e, p.opened() + session(p, ENVELOPE, ts=5001) + [stale, current])
    assert (v.reason, v.match) == (Reason.DOMAIN, "<v@example.com>")
    # and the reverse: the blocked copy is the stale one, the server reads the safe one
    e2 = make_engine(domains="example.com\n")
    q = Peer(family, sport=40001, ts=5000)
    stale = q.client(off, b"RCPT TO:<v@example.com>\r\n", ts=100)
    current = q.client(off, b"RCPT TO:<v@safe.test>\r\n", ts=5002)
    assert feed(e2, q.opened() + session(q, ENVELOPE, ts=5001) + [stale, current]) == []
    assert e2.counts["overlap-conflicts"] == 0


def test_paws_undecidable_copy_resets_instead_of_guessing(make_engine):
    # The first data segment (offset 0) certainly sets ts_recent (6000): an older copy is
    # discarded.  Whether the second (7000) moved it depends on whether the server had ACKed
    # in between (rcv_wup): a third with 6500 is taken provisionally, and a conflicting copy
    # of it cannot be attributed: reset.
    e = make_engine(domains="example.com\n")
    p = Peer(ts=5000)
    mail = b"MAIL FROM:<a@fine.test>\r\n"
    pkts = p.opened() + [p.client(0, b"EHLO me\r\n", ts=6000), p.client(9, b"EHLO xx\r\n", ts=5000),
                         p.client(9, mail, ts=7000), p.client(9 + len(mail), b"RCPT TO:<a@safe.test>\r\n", ts=6500),
                         p.client(9 + len(mail), b"RCPT TO:<a@example.com>\r\n", ts=7001)]
    [v] = feed(e, pkts)
    assert next(iter(e.flows.flows.values())).stream.paws_discarded == 1
    assert (v.reason, v.detail) == (Reason.TCP_STREAM, "conflicting-copy-of-uncertain-bytes")


# -- kind 1: a SYN with a new ISN on an open connection (RFC 5961 4.2) -------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("decide", ["early", "depth"])
def test_syn_on_open_flow_keeps_the_flow(make_engine, family, decide):
    e = make_engine(decide=decide)
    p = Peer(family)
    off = sum(map(len, ENVELOPE))
    pkts = p.opened() + session(p, ENVELOPE) + [p.client(off, b"RCPT TO:<v@bl"), p.syn(isn=0x55555555),
                                                  p.client(off + 13, b"ocked.test>\r\n")]
    [v] = feed(e, pkts)
    assert (v.reason, v.match) == (Reason.DOMAIN, "<v@blocked.test>")
    assert e.counts["syn-on-open-flow"] == 1


def test_data_at_the_new_isn_on_an_open_flow_is_reset(make_engine):
    e = make_engine()
    p = Peer()
    new_isn = 0x55555555
    pkts = p.opened() + session(p, ENVELOPE) + [p.syn(isn=new_isn),
                                                  p.client(0, b"EHLO x\r\n", seq=new_isn + 1)]
    [v] = feed(e, pkts)
    assert (v.action, v.reason, v.detail, v.ban) == (Action.RESET, Reason.TCP_STREAM, "syn-on-open-flow", 0)


def test_server_accepting_a_new_isn_replaces_the_flow(make_engine):
    e = make_engine()
    p = Peer()
    old = p.opened() + session(p, ENVELOPE)
    q = Peer(isn=0x55555555)
    new = [q.syn(), q.synack(), q.client(0, flags="A"),
           q.client(0, b"MAIL FROM:<a@fine.test>\r\nRCPT TO:<v@blocked.test>\r\n")]
    [v] = feed(e, [p.syn(), p.synack()] + old[1:] + new)
    assert v.reason is Reason.DOMAIN


# -- kind 1 / issue 11 item 2: data on a SYN ----------------------------------------------------


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("decide", ["early", "depth"])
def test_syn_data_is_not_the_stream(make_engine, family, decide):
    e = make_engine(decide=decide)
    p = Peer(family)
    pkts = [p.syn(b"QUIT\r\n"), p.client(0, flags="A")] + session(p, ENVELOPE + [b"RCPT TO:<victim@blocked.test>\r\n"])
    [v] = feed(e, pkts)
    assert (v.reason, v.match) == (Reason.DOMAIN, "<victim@blocked.test>")
    assert e.counts["syn-data-ignored"] == 1


@pytest.mark.parametrize("family", [4, 6])
def test_a_forged_syn_with_an_envelope_bans_nobody(make_engine, family):
    e = make_engine()
    spoofed = Peer(family, src="203.0.113.99" if family == 4 else "2001:db8:99::99")
    assert feed(e, [spoofed.syn(b"MAIL FROM:<x@blocked.test>\r\nRCPT TO:<x@blocked.test>\r\n")]) == []
    # five payload-free SYNs to port 22: no rate, no ban
    assert feed(e, [Peer(family, sport=50000 + i, dport=22, src=spoofed.src).syn() for i in range(20)]) == []
    assert not e.bans and len(e.flows) == 0


# -- kind 1: adjacent out-of-order segments are merged as Linux merges them -------------------


@pytest.mark.parametrize("family", [4, 6])
def test_adjacent_out_of_order_segments_merge_before_an_overlap(make_engine, family):
    e = make_engine(domains="example.com\n")
    p = Peer(family)
    head = b"RCPT TO:<v@"
    off = sum(map(len, ENVELOPE))
    pkts = p.opened() + session(p, ENVELOPE) + [
        p.client(off + len(head), b"exam"), p.client(off + len(head) + 4, b"ple."),
        p.client(off + len(head) + 2, b"ZZZZ"),  # inside the merged [exam|ple.]: dropped by Linux
        p.client(off + len(head) + 8, b"com>\r\n"), p.client(off, head)]
    [v] = feed(e, pkts)
    assert v.match == "<v@example.com>"


# -- issue 11 item 3: a flood cannot evict a flow in progress ---------------------------------


@pytest.mark.parametrize("two_sided", [False, True])
def test_spoofed_syn_flood_cannot_evict_a_split_envelope(make_engine, two_sided):
    e = make_engine(max_flows=20000)
    p = Peer(6)
    start = [p.syn(), p.synack(), p.client(0, flags="A")] if two_sided else p.opened()
    pkts = start + session(p, ENVELOPE) + [p.client(sum(map(len, ENVELOPE)), b"RCPT TO:<victim@bl")]
    assert feed(e, pkts) == []
    template = Peer(6, src="2001:db8:ffff::1")
    syn, synack = bytearray(template.syn()), bytearray(template.synack())
    for i in range(25_000):  # from 25,000 distinct /64s (the addresses patched into one packet)
        src = bytes.fromhex(f"20010db8{i:08x}") + bytes(7) + b"\x01"
        syn[8:24] = src
        syn[40:42] = (1024 + i % 60000).to_bytes(2, "big")
        e.process(bytes(syn), 1.0 + i * 1e-5)
        if two_sided:
            synack[24:40] = src
            synack[42:44] = syn[40:42]
            e.process(bytes(synack), 1.0 + i * 1e-5)
    tail = p.client(sum(map(len, ENVELOPE)) + 18, b"ocked.test>\r\n")
    v = e.process(tail, 2.0)
    assert (v.reason, v.match) == (Reason.DOMAIN, "<victim@blocked.test>")
    assert len(e.flows) == 1 and e.flows.evicted == 0 and e.flows.embryos_evicted == 25_000 - 20_000
    assert [e.ban_network(k) for k in e.bans] == ["2001:db8:1::/64"]


def test_a_flow_evicted_mid_envelope_is_reset_not_passed(make_engine):
    e = make_engine(max_flows=16)
    p = Peer()
    feed(e, p.opened() + session(p, ENVELOPE) + [p.client(sum(map(len, ENVELOPE)), b"RCPT TO:<victim@bl")])
    for i in range(20):  # proven connections (real clients) can still push it out
        feed(e, Peer(sport=42000 + i, src=f"198.51.100.{100 + i}").opened(), start=1.0)
    v = e.process(p.client(sum(map(len, ENVELOPE)) + 18, b"ocked.test>\r\n"), 2.0)
    assert (v.action, v.reason, v.detail, v.ban) == (Action.RESET, Reason.TCP_STREAM, "flow-evicted", 0)


# -- issue 11 item 1: proof, and never the server's own address or /64 ------------------------


def test_two_sided_view_needs_the_syn_ack_acknowledged(make_engine):
    e = make_engine()
    p = Peer(src="203.0.113.99")
    blind = [p.syn(), p.synack(),
             p.client(0, b"MAIL FROM:<a@fine.test>\r\nRCPT TO:<x@blocked.test>\r\n", ack=SERVER_ISN + 12345)]
    assert feed(e, blind) == [] and not e.bans and len(e.flows) == 0
    q = Peer(sport=40001)
    real = [q.syn(), q.synack(), q.client(0, b"MAIL FROM:<a@fine.test>\r\nRCPT TO:<x@blocked.test>\r\n")]
    [v] = feed(e, real)
    assert v.reason is Reason.DOMAIN and v.ban


@pytest.mark.parametrize("src,dst,why", [
    ("192.0.2.25", "192.0.2.25", "own address"),
    ("2001:db8::25", "2001:db8::25", "own /64"),
    ("2001:db8::99", "2001:db8::25", "own /64"),  # a neighbour in the server's /64
])
def test_own_address_and_own_64_are_never_banned(make_engine, src, dst, why):
    e = make_engine()
    p = Peer(src=src)
    p.dst = dst
    [v] = feed(e, p.opened() + session(p, ENVELOPE + [b"RCPT TO:<x@blocked.test>\r\n"]))
    assert (v.action, v.reason, v.ban, v.detail) == (Action.RESET, Reason.DOMAIN, 0, f"ban refused: {why}")
    assert not e.bans
    rate = make_engine(domains="")
    for i in range(8):
        q = Peer(sport=50000 + i, dport=22, src=src)
        q.dst = dst
        feed(rate, q.opened(), start=i)
    assert not rate.bans and rate.counts[f"ban-refused:{why}"] >= 1


def test_protects_hook_refuses_bans(make_engine):
    from inspector.config import Config
    from inspector.rules import RuleSet

    base = make_engine()
    e = Engine(Config(), base.rules, protects=lambda net: "whitelist" if net.startswith("198.51.100.") else None)
    p = Peer()
    [v] = feed(e, p.opened() + session(p, ENVELOPE + [b"RCPT TO:<x@blocked.test>\r\n"]))
    assert v.ban == 0 and v.detail == "ban refused: whitelist" and not e.bans
    assert isinstance(base.rules, RuleSet)


def test_midstream_flow_with_earlier_data_is_reset(make_engine):
    e = make_engine()
    p = Peer()
    # no SYN seen (the inspector started after the connection): the first segment is taken as
    # the start, and data before it proves that was wrong
    pkts = [p.client(15, b"ked.test>\r\n"), p.client(0, b"RCPT TO:<x@bloc")]
    [v] = feed(e, pkts)
    assert (v.reason, v.detail) == (Reason.TCP_STREAM, "data-before-midstream-start")
