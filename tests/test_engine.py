from inspector.engine import Engine
from inspector.verdict import ACCEPT, Action, Reason
from tests.conftest import CLIENT6, Conn, pkt

BLOCKED = b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@blocked.test>\r\n"


def run(engine: Engine, packets, start=0.0, step=0.01):
    out = []
    for i, p in enumerate(packets):
        v = engine.process(p, start + i * step)
        if v.reason is not None:
            out.append(v)
    return out


def test_blocked_rcpt_resets_and_bans(make_engine):
    e = make_engine()
    c = Conn()
    [v] = run(e, [c.syn(), c.send(b"EHLO me\r\n"), c.send(BLOCKED)])
    assert (v.action, v.reason, v.rule, v.match, v.ban) == (Action.RESET, Reason.DOMAIN, "blocked.test",
                                                            "<b@blocked.test>", 86400)
    assert v.src == "198.51.100.7" and v.dport == 25
    assert v.ban_network == "198.51.100.7"
    # the same source is now banned, another source is not
    later = run(e, [Conn(sport=40001).syn()], start=10)
    assert [v.reason for v in later] == [Reason.BANNED]
    assert run(e, [Conn(src="198.51.100.8").syn()], start=10) == []


def test_ban_expires(make_engine):
    e = make_engine(ban_domain=30)
    c = Conn()
    run(e, [c.syn(), c.send(BLOCKED)])
    assert run(e, [Conn(sport=5).syn()], start=20)[0].reason is Reason.BANNED
    assert run(e, [Conn(sport=6).syn()], start=31) == []


def test_exactly_once_per_flow_with_retransmissions(make_engine):
    e = make_engine(ban_domain=0)  # no ban, so the later packets reach the flow again
    c = Conn()
    seg = c.send(BLOCKED)
    verdicts = run(e, [c.syn(), seg, seg, seg])
    assert [v.reason for v in verdicts] == [Reason.DOMAIN]


def test_split_out_of_order(make_engine):
    e = make_engine()
    c = Conn()
    a, b = b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<x@bloc", b"ked.test>\r\n"
    verdicts = run(e, [c.syn(), c.at(len(a), b), c.at(0, a)])
    assert [v.reason for v in verdicts] == [Reason.DOMAIN]


def test_midstream_pickup(make_engine):
    e = make_engine()
    p = pkt(b"RCPT TO:<x@blocked.test>\r\n", seq=123456)
    assert [v.reason for v in run(e, [p])] == [Reason.DOMAIN]
    assert e.counts["flows-midstream"] == 1


def test_rate_limit_more_than_four_in_sixty_seconds(make_engine):
    e = make_engine(domains="")
    conns = [p for i in range(6) for p in Conn(sport=50000 + i, dport=22).opened()]
    verdicts = run(e, conns, step=2.5)
    # counted at the handshake's ACK (proven), reset there; the 6th SYN is already banned
    assert [v.reason for v in verdicts] == [Reason.RATE, Reason.BANNED, Reason.BANNED]
    assert verdicts[0].ban == 86400 and verdicts[0].action is Action.RESET


def test_rate_counts_only_proven_connections(make_engine):
    e = make_engine(domains="")
    syns = [Conn(sport=50000 + i, dport=22).syn() for i in range(50)]
    assert run(e, syns) == []  # SYNs alone prove nothing: never counted, never banned
    assert not e.bans and len(e.flows) == 0 and len(e.flows.embryos) == 50


def test_rate_limit_window_slides(make_engine):
    e = make_engine(domains="")
    conns = [Conn(sport=50000 + i, dport=22) for i in range(10)]
    assert run(e, [p for c in conns for p in c.opened()], step=7.51) == []  # never five within 60 s
    e2 = make_engine(domains="")
    # four at t=0..3, then one at t=59.9: five in the window
    times = [0, 1, 2, 3, 59.9]
    out = [(e2.process(c.syn(), t), e2.process(c.ack(), t))[1] for c, t in zip(conns, times, strict=False)]
    assert out[-1].reason is Reason.RATE


def test_retransmitted_syn_is_not_a_new_connection(make_engine):
    e = make_engine(domains="")
    packets = []
    for i in range(4):
        c = Conn(sport=50000 + i, dport=22)
        packets += [c.syn(), c.syn()]
    assert run(e, packets) == []


def test_ipv6_counted_per_64(make_engine):
    e = make_engine(domains="")
    syns = [p for i in range(5)
            for p in Conn(sport=50000 + i, dport=22, src=f"2001:db8:1::{i + 1:x}", dst="2001:db8::25").opened()]
    [v] = run(e, syns)
    assert v.reason is Reason.RATE
    assert v.ban_network == "2001:db8:1::/64"
    other = Conn(dport=22, src="2001:db8:1::99", dst="2001:db8::25")
    assert run(e, [other.syn()])[0].reason is Reason.BANNED
    assert run(e, [Conn(dport=22, src="2001:db8:2::1", dst="2001:db8::25").syn()]) == []


def test_whitelist_never_limited_or_banned(make_engine):
    import ipaddress

    e = make_engine(whitelist=(ipaddress.ip_network("198.51.100.0/24"),))
    c = Conn()
    syns = [p for i in range(8) for p in Conn(sport=50000 + i, dport=22).opened()]
    assert run(e, syns + [c.syn(), c.send(BLOCKED)]) == []
    assert e.counts["whitelisted"] == 5
    assert not e.bans


def test_alert_mode_reports_and_accepts(make_engine):
    e = make_engine(mode="alert")
    c = Conn()
    [v, *rest] = run(e, [c.syn(), c.send(BLOCKED), Conn(sport=1).syn()])
    assert v.alert and v.action is Action.RESET and v.applied is Action.ACCEPT
    assert all(r.alert and r.applied is Action.ACCEPT for r in rest)


def test_tcp_flag_probes(make_engine):
    e = make_engine()
    probes = {"NULL": "", "XMAS": "FPU", "SYN+FIN": "SF", "SYN+RST": "SR"}
    for name, flags in probes.items():
        [v] = run(e, [pkt(flags=flags, dport=22)])
        assert (v.action, v.reason, v.rule, v.ban) == (Action.DROP, Reason.TCP_FLAGS, name, 0)
    assert run(e, [pkt(flags="", dport=80)]) == []  # not a protected port


def test_payload_scope_on_ssh_port_not_smtp(make_engine):
    e = make_engine(payload="evilbot\n")
    c = Conn(dport=22)
    [v] = run(e, [c.syn(), c.send(b"SSH-2.0-EVI"), c.send(b"LBOT_1.0\r\n")])
    assert (v.reason, v.rule) == (Reason.PAYLOAD, "evilbot")
    s = Conn(dport=25, src="198.51.100.9")
    assert run(e, [s.syn(), s.send(b"EHLO evilbot\r\n")]) == []


def test_flow_table_is_bounded(make_engine):
    e = make_engine(max_flows=100, domains="")
    for i in range(1000):
        for p in Conn(src=f"198.18.{i // 250}.{i % 250 + 1}", sport=1000 + i, dport=25).opened():
            e.process(p, i * 0.001)
    assert len(e.flows) == 100 and e.flows.evicted == 900
    assert e.flows.evicted_open == 900 and len(e.flows.tombstones) == 100  # bounded too


def test_idle_flows_expire(make_engine):
    e = make_engine(flow_idle=10.0, domains="")
    for p in Conn().opened():
        e.process(p, 0.0)
    for p in Conn(src="198.51.100.99").opened():
        e.process(p, 30.0)
    assert len(e.flows) == 1 and e.flows.expired == 1


def test_fin_ends_flow(make_engine):
    e = make_engine()
    c = Conn()
    run(e, [c.syn(), c.send(b"QUIT\r\n"), c.send(b"", flags="FA")])
    assert len(e.flows) == 0


def test_malformed_is_counted_drop(make_engine):
    e = make_engine()
    v = e.process(b"\x45\x00\x00", 0.0)
    assert (v.action, v.reason, v.detail) == (Action.DROP, Reason.MALFORMED, "short")
    assert e.counts["malformed"] == 1


def test_restored_ban_and_unban(make_engine):
    e = make_engine()
    e.add_ban("198.51.100.7", 1000.0)
    assert run(e, [Conn().syn()])[0].reason is Reason.BANNED
    assert e.remove_ban("198.51.100.7")
    assert run(e, [Conn(sport=2).syn()]) == []
    e.add_ban("2001:db8:1::/64", 1000.0)
    assert run(e, [Conn(src=CLIENT6, dst="2001:db8::25").syn()])[0].reason is Reason.BANNED


def test_rule_swap(make_engine, tmp_path):
    from inspector.rules import DOMAIN, RuleFile, load_rules

    e = make_engine(domains="other.test\n")
    c = Conn()
    assert run(e, [c.syn(), c.send(BLOCKED)]) == []
    (tmp_path / "n.txt").write_text("blocked.test\n")
    e.swap_rules(load_rules([RuleFile(tmp_path / "n.txt", DOMAIN)]))
    c2 = Conn(src="198.51.100.8")
    assert len(run(e, [c2.syn(), c2.send(BLOCKED)])) == 1


def test_malformed_names_its_source_when_readable(make_engine):
    from scapy.layers.inet import IP, TCP

    e = make_engine()
    frag = bytes(IP(src="198.51.100.7", dst="192.0.2.25", flags="MF") / TCP(dport=25) / b"x")
    v = e.process(frag, 0.0)
    assert (v.reason, v.detail) == (Reason.MALFORMED, "fragment")
    assert (v.src, v.dst) == ("198.51.100.7", "192.0.2.25")
    assert not e.bans


def test_decided_flow_gets_final_accept(make_engine):
    from inspector.verdict import BYPASS

    e = make_engine(depth=64)
    c = Conn()
    out = [e.process(p, i * 0.01) for i, p in enumerate([c.syn(), c.send(b"EHLO a\r\n"), c.send(b"x" * 100),
                                                          c.send(b"more data")])]
    assert out[0] is ACCEPT and out[1] is ACCEPT
    assert out[2] is BYPASS and out[3] is BYPASS  # depth reached: nothing more to inspect
    s = Conn(sport=2)
    tls = [e.process(p, 1 + i * 0.01) for i, p in enumerate([s.syn(), s.send(b"STARTTLS\r\n"),
                                                              s.send(b"\x16\x03\x01\x00\x05hello")])]
    assert tls[1] is ACCEPT and tls[2] is BYPASS


def test_early_decision_in_body_at_data_and_after_the_ssh_banner(make_engine):
    from inspector.verdict import ACCEPT_BODY, ACCEPT_RESUME, BYPASS

    e = make_engine(decide="early")
    c = Conn()
    out = [e.process(p, i * 0.01) for i, p in enumerate(
        [c.syn(), c.send(b"EHLO a\r\nMAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\n"), c.send(b"DATA\r\n"),
         c.send(b"body\r\n.\r\n")])]
    # DATA: the connection goes "in body" (not bypassed); after the end-of-data line, commands again
    assert out[1] is ACCEPT and out[2] is ACCEPT_BODY and out[3] is ACCEPT_RESUME
    more = [e.process(p, 0.5 + i * 0.01) for i, p in enumerate(
        [c.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@blocked.test>\r\n")])]
    assert more[0].reason is Reason.DOMAIN, "early: the second transaction is inspected"
    s = Conn(dport=22, sport=3, src="198.51.100.8")
    ssh = [e.process(p, 1 + i * 0.01) for i, p in enumerate([s.syn(), s.send(b"SSH-2.0-Open"),
                                                              s.send(b"SSH_9.2\r\n"), s.send(b"\x00" * 50)])]
    assert ssh[1] is ACCEPT and ssh[2] is BYPASS and ssh[3] is BYPASS
    # "depth" inspects on: a second transaction after the message is still seen
    d = make_engine(decide="depth")
    c2 = Conn(src="198.51.100.9")
    verdicts = [d.process(p, 2 + i * 0.01) for i, p in enumerate(
        [c2.syn(), c2.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n"), c2.send(b"hi\r\n.\r\n"),
         c2.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@blocked.test>\r\n")])]
    assert verdicts[3].reason is Reason.DOMAIN


# ---- issue 12, kind 5: decide = "early" with the kernel's in-body filter ------------------------------------

def test_in_body_gaps_are_skipped_and_the_next_transaction_is_read(make_engine):
    from inspector.verdict import ACCEPT_BODY

    e = make_engine(decide="early")
    c = Conn()
    head = b"EHLO a\r\nMAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n"
    assert e.process(c.syn(), 0) is ACCEPT
    assert e.process(c.send(head), 0.1) is ACCEPT_BODY
    body = b"x" * 76 + b"\r\n"
    start = len(head)
    # the kernel kept 1,000 body lines; it queues the segment with the end-of-data line
    tail = c.at(start + 1000 * len(body), b"more\r\n.\r\nMAIL FROM:<a@ok.test>\r\nRCPT TO:<v@blocked.test>\r\n")
    assert e.process(tail, 0.2).reason is Reason.DOMAIN


def test_in_body_partial_dot_line_asks_for_the_next_segment(make_engine):
    from inspector.verdict import ACCEPT_BODY, ACCEPT_RESUME

    e = make_engine(decide="early")
    c = Conn()
    e.process(c.syn(), 0)
    assert e.process(c.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n"), 0.1) is ACCEPT_BODY
    assert e.process(c.send(b"text\r\n."), 0.2) is ACCEPT_RESUME, "'.' may end the data: queue the next one"
    assert e.process(c.send(b".stuffed\r\n"), 0.3) is ACCEPT_BODY, "it did not: back in the body"
    assert e.process(c.send(b"end\r\n.\r\n"), 0.4) is ACCEPT_RESUME
    assert e.process(c.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<x@blocked.test>\r\n"), 0.5).reason is Reason.DOMAIN


def test_early_message_bytes_do_not_count_towards_depth(make_engine):
    e = make_engine(decide="early", depth=4096)
    c = Conn()
    e.process(c.syn(), 0)
    e.process(c.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n"), 0.1)
    for i in range(100):  # 100 KB of body, every segment seen (no kernel filter)
        e.process(c.send(b"y" * 998 + b"\r\n"), 0.2 + i * 0.001)
    e.process(c.send(b".\r\n"), 0.4)
    assert e.process(c.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<x@blocked.test>\r\n"), 0.5).reason is Reason.DOMAIN
    # depth mode reads the body as bytes of the stream: past depth, nothing more is seen
    d = make_engine(decide="depth", depth=4096)
    c2 = Conn(src="198.51.100.9")
    d.process(c2.syn(), 0)
    d.process(c2.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n"), 0.1)
    for i in range(10):
        d.process(c2.send(b"y" * 998 + b"\r\n"), 0.2 + i * 0.001)
    d.process(c2.send(b".\r\n"), 0.4)
    assert d.process(c2.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<x@blocked.test>\r\n"), 0.5).reason is None



def test_reordered_commands_after_a_skipped_body_are_not_hidden(make_engine):
    """The client sends the commands that follow the end of data *before* the end-of-data segment:
    the kernel (body mark) lets them through unseen; once commands resume, a later segment beyond
    the gap is dropped until the gap is filled (kind 5, reordering)."""
    from inspector.verdict import ACCEPT_BODY, ACCEPT_RESUME

    e = make_engine(decide="early")
    c = Conn()
    head = b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n"
    e.process(c.syn(), 0)
    assert e.process(c.send(head), 0.1) is ACCEPT_BODY
    end = b"bye\r\n.\r\n"
    hidden = b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<v@blocked.test>\r\n"   # passed the kernel unseen
    start = len(head) + 5000
    assert e.process(c.at(start, end), 0.2) is ACCEPT_RESUME
    later = c.at(start + len(end) + len(hidden), b"DATA\r\n")
    out = e.process(later, 0.3)
    assert (out.action.value, out.reason.value) == ("drop", "desync")
    # a legitimate reordering: the filler arrives (queued, the mark is cleared), then the resent one
    f = make_engine(decide="early")
    c2 = Conn(src="198.51.100.9")
    f.process(c2.syn(), 0)
    f.process(c2.send(head), 0.1)
    f.process(c2.at(start, end), 0.2)
    assert f.process(c2.at(start + len(end) + len(hidden), b"DATA\r\n"), 0.3).reason is Reason.DESYNC
    assert f.process(c2.at(start + len(end), hidden), 0.4).reason is Reason.DOMAIN


def test_a_reordered_end_of_data_behind_a_skipped_body_resets(make_engine):
    """The end-of-data segment arrives after a later segment that the engine read as body (it held
    "\\n." too): the engine's reading of that segment was wrong, the late segment is reset."""
    e = make_engine(decide="early")
    c = Conn()
    head = b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n"
    e.process(c.syn(), 0)
    e.process(c.send(head), 0.1)
    real_end = b"x\r\n.\r\n"
    smuggled = b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<v@blocked.test>\r\nDATA\r\nhi\r\n.\r\n"
    start = len(head) + 3000
    assert e.process(c.at(start + len(real_end), smuggled), 0.2).reason is None  # read as body: no hit
    out = e.process(c.at(start, real_end), 0.3)
    assert (out.action.value, out.reason.value) == ("reset", "desync")
    # a late body segment without an end-of-data line changes nothing
    g = make_engine(decide="early")
    c3 = Conn(src="198.51.100.10")
    g.process(c3.syn(), 0)
    g.process(c3.send(head), 0.1)
    g.process(c3.at(start + 10, b"more\r\n.\r\n"), 0.2)
    assert g.process(c3.at(start, b"plain text"), 0.3).reason is None
