import pytest
from scapy.layers.inet import IP, TCP

from inspector.bans import BanStore
from inspector.events import MemorySink, ban_line
from inspector.respond.bans import BanPipeline
from inspector.runner import Runner
from inspector.testing import FakeFirewall, FakePacket, RecordingSender
from tests.conftest import Conn

BLOCKED = b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@blocked.test>\r\n"


def make(make_engine, tmp_path, **config):
    now = [1000.0]
    fw = FakeFirewall(lambda: now[0])
    events = MemorySink()
    sender = RecordingSender()
    store = BanStore(tmp_path / "bans.json")
    runner = Runner(make_engine(**config), sender, events, BanPipeline(store, fw, events), lambda: now[0])
    return runner, fw, events, sender, store, now


def feed(runner, packets):
    out = []
    for p in packets:
        fp = FakePacket(p)
        runner.handle(fp)
        out.append(fp)
    return out


def test_blocked_recipient_is_reset_both_ways_and_banned(make_engine, tmp_path):
    runner, fw, events, sender, store, _ = make(make_engine, tmp_path)
    c = Conn()
    syn, data = feed(runner, [c.syn(), c.send(BLOCKED)])
    assert syn.verdict == "accept"
    # the offending packet itself became an in-window RST, accepted towards the server
    assert data.verdict == "accept"
    rst = IP(data.payload)
    assert str(rst[TCP].flags) == "R" and rst[TCP].seq == c.seq - len(BLOCKED) and rst.src == "198.51.100.7"
    # and the client got an RST from the server's address
    [to_client] = sender.sent
    assert IP(to_client).src == "192.0.2.25" and str(IP(to_client)[TCP].flags) == "RA"
    assert fw.calls[-1] == ("ban", "198.51.100.7", 86400)
    assert [r.network for r in store.active(1000.0)] == ["198.51.100.7"]
    kinds = [e["event"] for e in events.events]
    assert kinds == ["verdict", "ban"]
    assert events.events[0]["reason"] == "domain" and events.events[1]["rule"] == "blocked.test"


def test_alert_mode_accepts_untouched_and_bans_nothing(make_engine, tmp_path):
    runner, fw, events, sender, store, _ = make(make_engine, tmp_path, mode="alert")
    c = Conn()
    original = c.send(BLOCKED)
    _, data = feed(runner, [c.syn(), original])
    assert data.verdict == "accept" and data.payload == original
    assert sender.sent == [] and fw.calls == [] and not store.records
    assert events.events[0]["alert"] is True and events.events[0]["verdict"] == "reset"


def test_rate_drop_bans_and_late_packets_are_dropped_quietly(make_engine, tmp_path):
    runner, fw, events, _, _, _ = make(make_engine, tmp_path, domains="")
    out = feed(runner, [p for i in range(7) for p in Conn(sport=5000 + i, dport=22).opened()])
    # counted at each handshake's ACK: the 5th is reset (its packet rewritten into a RST and
    # accepted), then the SYNs and ACKs of connections 6 and 7 are dropped as banned
    assert [p.verdict for p in out] == ["accept"] * 10 + ["drop"] * 4
    assert [c[0] for c in fw.calls] == ["ban"]
    assert runner.counts["banned-late"] == 4
    assert [e["event"] for e in events.events] == ["verdict", "ban"]


def test_firewall_failure_is_an_event_not_a_crash(make_engine, tmp_path):
    runner, fw, events, _, store, _ = make(make_engine, tmp_path)

    def broken(network, seconds):
        raise RuntimeError("ipset full")
    fw.ban = broken
    c = Conn()
    _, data = feed(runner, [c.syn(), c.send(BLOCKED)])
    assert data.verdict == "accept"  # the reset still happened
    assert events.events[-1]["event"] == "error" and "ipset full" in events.events[-1]["error"]
    assert "198.51.100.7" in store.records  # kept, to be retried on the next start


def test_reset_sender_failure_still_gives_a_verdict(make_engine, tmp_path):
    runner, _, events, sender, _, _ = make(make_engine, tmp_path)

    def broken(packet):
        raise OSError("no raw socket")
    sender.send = broken
    c = Conn()
    _, data = feed(runner, [c.syn(), c.send(BLOCKED)])
    assert data.verdict == "accept"
    assert any(e["event"] == "error" and e["what"] == "reset-client" for e in events.events)


def test_ban_line_format():
    assert ban_line("198.51.100.7", 86400, "domain", "blocked.test", 25) == \
        "inspector-ban: 198.51.100.7 banned for 86400s reason=domain rule=blocked.test dport=25"


def test_alert_mode_reports_a_would_be_banned_source_once_a_minute(make_engine, tmp_path):
    runner, fw, events, _, _, now = make(make_engine, tmp_path, mode="alert", domains="")
    feed(runner, [p for i in range(5) for p in Conn(sport=5000 + i, dport=22).opened()])  # the 5th: rate alert
    feed(runner, [Conn(sport=6000 + i, dport=22).syn() for i in range(3)])  # would be dropped as banned
    now[0] += 61
    feed(runner, [Conn(sport=7000, dport=22).syn()])
    reasons = [(e["reason"], e.get("alert")) for e in events.events]
    assert reasons == [("rate", True), ("banned", True), ("banned", True)]
    assert fw.calls == [] and runner.counts["banned-alerts-quiet"] == 2


def test_decided_flow_is_marked_and_repeated(make_engine, tmp_path):
    runner, *_ = make(make_engine, tmp_path, depth=64)
    runner.mark = 0x40000000
    c = Conn()
    packets = feed(runner, [c.syn(), c.send(b"EHLO a\r\n"), c.send(b"x" * 100)])
    assert [p.verdict for p in packets] == ["accept", "accept", "repeat"]
    assert packets[2].mark == 0x40000000 and runner.counts["decided"] == 1


def test_noted_accepts_are_given_before_a_reset(make_engine, tmp_path):
    """With the queue's batched accepts, the accepts noted so far are given before a drop or a
    reset, so the reset never overtakes an earlier packet of its connection; plain accepts wait
    for the batch, a decided flow's packet gets its verdict at once."""
    runner, *_ = make(make_engine, tmp_path)
    order = []
    noted = []
    runner.accept_later = noted.append
    runner.accept_noted = lambda: (order.append(("batch", len(noted))), noted.clear())
    c = Conn()
    syn, ehlo, data = feed(runner, [c.syn(), c.send(b"EHLO x\r\n"), c.send(BLOCKED)])
    assert syn.verdict is None and ehlo.verdict is None  # noted for the batch
    assert order == [("batch", 2)] and data.verdict == "accept" and not noted  # the batch, then the RST
    ok = Conn(sport=40001, src="198.51.100.8")
    packets = feed(runner, [ok.syn(), ok.send(b"EHLO x\r\n"), ok.send(b"MAIL FROM:<a@b.example>\r\n"),
                            ok.send(b"RCPT TO:<c@d.example>\r\n"), ok.send(b"DATA\r\n")])
    # DATA (in body; no mark configured here): its accept is given at once
    assert [p.verdict for p in packets] == [None, None, None, None, "accept"] and len(noted) == 4


def test_in_body_mark_is_set_at_data_and_cleared_after_the_end_of_data(make_engine, tmp_path):
    runner, *_ = make(make_engine, tmp_path)
    runner.mark, runner.body_mark = 0x40000000, 0x20000000
    c = Conn()
    syn, head, body, end = feed(runner, [c.syn(), c.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n"),
                                         c.send(b"hello\r\n"), c.send(b".\r\nQUIT\r\n")])
    assert (syn.verdict, syn.mark) == ("accept", None)
    assert (head.verdict, head.mark) == ("repeat", 0x20000000), "in body: the chain sets the connection's body mark"
    assert (body.verdict, body.mark) == ("accept", None)
    assert end.verdict == "repeat" and end.mark == 0x40000000, "QUIT: decided"
    c2 = Conn(sport=40001)
    _, _, out = feed(runner, [c2.syn(), c2.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n"),
                              c2.send(b"hello\r\n.\r\n")])
    assert (out.verdict, out.mark) == ("repeat", 0x60000000), "both bits: the chain clears the body mark"
    assert runner.counts["in-body"] == 2 and runner.counts["out-of-body"] == 1


def test_without_a_body_mark_in_body_packets_are_plain_accepts(make_engine, tmp_path):
    runner, *_ = make(make_engine, tmp_path)
    runner.mark, runner.body_mark = 0x40000000, 0
    c = Conn()
    _, head = feed(runner, [c.syn(), c.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n")])
    assert (head.verdict, head.mark) == ("accept", None)


def test_alert_mode_accepts_go_with_the_batch(make_engine, tmp_path):
    """Alert mode accepts a would-be reset: with the burst's batch when the queue has one, and
    nothing is given before it (no reset, so nothing can be overtaken)."""
    runner, fw, events, sender, *_ = make(make_engine, tmp_path, mode="alert")
    noted = []
    runner.accept_later = noted.append
    runner.accept_noted = lambda: pytest.fail("no flush without a drop or reset")
    c = Conn()
    syn, data = feed(runner, [c.syn(), c.send(BLOCKED)])
    assert noted == [syn, data] and data.verdict is None and sender.sent == []
    assert events.events[0]["alert"] is True and events.events[0]["verdict"] == "reset" and runner.counts["accept"] == 1


def test_telemetry_counts_packets_per_second_of_the_clock(make_engine, tmp_path):
    """The per-second buckets follow the runner's clock, also when it steps back."""
    runner, *_, now = make(make_engine, tmp_path)
    t = runner.telemetry
    for at in (1000.2, 1000.7, 1001.0, 1001.9, 1003.5, 1002.5):
        now[0] = at
        feed(runner, [Conn(sport=int(at * 10) % 30000 + 1024).syn()])
    assert list(t.history) == [(1000, 2, 0), (1001, 2, 0), (1003, 1, 0)]
    assert (t.second, t.packets) == (1002, 1)


def test_reply_mark_names_the_smtp_state_on_client_and_server_packets(make_engine, tmp_path):
    """Replies watched (issue 12, kind 2): RCPT sets the reply bit alone; the server's 354 the body bit
    alone (the chain clears the other); the end of data clears both (the decided bit with them: the next
    RCPT sets the reply bit again); QUIT decides."""
    from tests.test_smtp_replies import GO_AHEAD, Server

    runner, *_ = make(make_engine, tmp_path, decide="early")
    runner.mark, runner.body_mark, runner.reply_mark = 0x40000000, 0x20000000, 0x10000000
    runner.engine.watch_replies()
    c = Conn()
    s = Server(c)
    out = feed(runner, [c.syn(), c.send(b"MAIL FROM:<a@ok.test>\r\n"), c.send(b"RCPT TO:<b@ok.test>\r\n"),
                        s.send(b"250 2.1.5 Ok\r\n"), c.send(b"DATA\r\n"), s.send(GO_AHEAD), c.send(b"hello\r\n"),
                        c.send(b".\r\n"), s.send(b"250 2.0.0 Ok: queued\r\n"), c.send(b"QUIT\r\n")])
    got = [(p.verdict, p.mark) for p in out]
    assert got == [("accept", None), ("accept", None), ("repeat", 0x10000000), ("accept", None), ("accept", None),
                   ("repeat", 0x20000000), ("accept", None), ("repeat", 0x70000000), ("accept", None),
                   ("repeat", 0x40000000)], got
    assert runner.counts["replies"] == 1 and runner.counts["in-body"] == 1 and runner.counts["out-of-body"] == 1


def test_resume_with_only_the_reply_mark_clears_it(make_engine, tmp_path):
    """decide = "depth" (no body filter): the 354 clears the reply bit (decided bit with it)."""
    from tests.test_smtp_replies import GO_AHEAD, Server

    runner, *_ = make(make_engine, tmp_path, decide="depth")
    runner.mark, runner.body_mark, runner.reply_mark = 0x40000000, 0, 0x10000000
    runner.engine.watch_replies()
    c = Conn()
    s = Server(c)
    out = feed(runner, [c.syn(), c.send(b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n"),
                        s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + GO_AHEAD)])
    assert [(p.verdict, p.mark) for p in out[1:]] == [("repeat", 0x10000000), ("repeat", 0x50000000)]
