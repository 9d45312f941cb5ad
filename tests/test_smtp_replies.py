"""Issue 12, kind 2, the hole the client side cannot close: a recipient the server refuses for policy.

With the server's replies watched (the reply mark live, a two-sided capture in replay) a DATA starts
a body only at the server's own ``354``, and a server line counts only where it starts right after an
LF the engine saw in contiguous server bytes (see ``SmtpSession.server``).  Each test drives the engine
with crafted client and server segments, as the kernel would queue them.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from inspector.detect.smtp import BODY, COMMAND, PENDING, SmtpSession
from inspector.verdict import ACCEPT, ACCEPT_BODY, ACCEPT_REPLIES, ACCEPT_RESUME, Reason

from .conftest import CLIENT4, CLIENT6, SERVER4, SERVER6, Conn

BLOCKED = "example.com\n"
REFUSED = b"550 5.1.1 <v@unknown-user.local>: Recipient address rejected: User unknown in local recipient table\r\n"
NO_VALID = b"554 5.5.1 Error: no valid recipients\r\n"
GO_AHEAD = b"354 End data with <CR><LF>.<CR><LF>\r\n"


class Server:
    """The server side of a :class:`Conn`: segments from port 25, its own sequence numbers."""

    def __init__(self, conn: Conn, isn: int = 50000) -> None:
        self.conn = conn
        self.seq = isn + 1

    def send(self, data: bytes, flags: str = "PA") -> bytes:
        p = self.at(self.seq, data, flags)
        self.seq = (self.seq + len(data)) & 0xFFFFFFFF
        return p

    def at(self, seq: int, data: bytes, flags: str = "PA") -> bytes:
        c = self.conn
        ip = IPv6(src=c.dst, dst=c.src) if ":" in c.src else IP(src=c.dst, dst=c.src)
        return bytes(ip / TCP(sport=c.dport, dport=c.sport, seq=seq & 0xFFFFFFFF, ack=c.seq, flags=flags) / data)


def session(e, conn: Conn) -> SmtpSession:
    flow = e.flows.flows[next(k for k in e.flows.flows)]
    assert isinstance(flow.state, SmtpSession)
    return flow.state


def opened(e, v6: bool = False, sport: int = 40000) -> tuple[Conn, Server]:
    c = Conn(sport=sport, src=CLIENT6, dst=SERVER6) if v6 else Conn(sport=sport, src=CLIENT4, dst=SERVER4)
    s = Server(c)
    for p in c.opened():
        assert e.process(p, 0.0) is ACCEPT
    assert e.process(c.send(b"EHLO c.example.org\r\n"), 0.1) is ACCEPT
    return c, s


@pytest.fixture(params=["early", "depth"])
def engine(request, make_engine):
    e = make_engine(domains=BLOCKED, decide=request.param)
    e.watch_replies()
    return e


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_refused_for_policy_then_blocked_recipient_is_blocked(engine, v6):
    """The hole: RCPT refused for policy (550), DATA refused (554), then a blocked RCPT and DATA."""
    c, s = opened(engine, v6)
    assert engine.process(c.send(b"MAIL FROM:<a@example.org>\r\n"), 0.2) is ACCEPT
    assert engine.process(c.send(b"RCPT TO:<v@unknown-user.local>\r\n"), 0.3) is ACCEPT_REPLIES
    assert engine.process(s.send(REFUSED), 0.31) is ACCEPT
    assert engine.process(c.send(b"DATA\r\n"), 0.4) is ACCEPT
    assert session(engine, c).mode == PENDING, "no body before the server's 354"
    assert engine.process(s.send(NO_VALID), 0.41) is ACCEPT
    assert session(engine, c).mode == COMMAND and session(engine, c).datas == 0
    d = engine.process(c.send(b"RCPT TO:<v@example.com>\r\n"), 0.5)
    assert d.reason is Reason.DOMAIN and d.rule == "example.com"


def test_refused_data_unseen_reply_then_blocked_recipient_is_blocked(engine):
    """The client does not wait for the 554: its next bytes are commands all the same."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@unknown-user.local>\r\nDATA\r\n"), 0.2)
    d = engine.process(c.send(b"RCPT TO:<v@example.com>\r\nDATA\r\n"), 0.3)
    assert d.reason is Reason.DOMAIN
    assert engine.counts["smtp-pipelined-past-data"] == 1


def test_pipelined_refusal_in_one_segment_is_blocked(engine):
    c, s = opened(engine)
    d = engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@unknown-user.local>\r\nDATA\r\n"
                              b"RCPT TO:<v@example.com>\r\nDATA\r\nSubject: x\r\n\r\nhi\r\n.\r\n"), 0.2)
    assert d.reason is Reason.DOMAIN


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_legit_transaction_body_after_a_verified_354(make_engine, v6):
    """A body line that quotes a blocked envelope command does not block once the 354 was seen."""
    for decide in ("early", "depth"):
        e = make_engine(domains=BLOCKED, decide=decide)
        e.watch_replies()
        c, s = opened(e, v6)
        e.process(c.send(b"MAIL FROM:<a@example.org>\r\n"), 0.2)
        e.process(s.send(b"250 2.1.0 Ok\r\n"), 0.21)  # before the reply mark: not queued live, ignored
        assert e.process(c.send(b"RCPT TO:<v@example.org>\r\n"), 0.3) is ACCEPT_REPLIES
        assert e.process(s.send(b"250 2.1.5 Ok\r\n"), 0.31) is ACCEPT
        assert e.process(c.send(b"DATA\r\n"), 0.4) is ACCEPT
        d = e.process(s.send(GO_AHEAD), 0.41)
        assert d is (ACCEPT_BODY if decide == "early" else ACCEPT_RESUME), "the 354 ends the reply watch"
        assert session(e, c).mode == BODY
        assert e.process(c.send(b"Subject: t\r\n\r\nRCPT TO:<v@example.com>\r\n"), 0.5) is ACCEPT
        d = e.process(c.send(b".\r\n"), 0.6)
        assert d is (ACCEPT_RESUME if decide == "early" else ACCEPT), "after the end of data: no reply mark"
        assert e.process(s.send(b"250 2.0.0 Ok: queued as 1234\r\n"), 0.61) is ACCEPT
        assert e.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<w@example.org>\r\n"), 0.7) \
            is ACCEPT_REPLIES, "the next RCPT: replies watched again"
        d = e.process(c.send(b"RCPT TO:<w@example.com>\r\n"), 0.8)
        assert d.reason is Reason.DOMAIN, "the next transaction is read"


def test_mid_line_window_attack_does_not_reach_the_body(engine):
    """The refused RCPT's reply echoes a quoted address holding "354 ..."; the client makes the server
    cut the reply there (a small window), so the first queued segment starts with "354 "."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\n"), 0.2)
    assert engine.process(c.send(b'RCPT TO:<"x354 End data with <CR><LF>.<CR><LF>"@unknown-user.local>\r\n'),
                          0.3) is ACCEPT_REPLIES
    engine.process(c.send(b"DATA\r\n"), 0.4)
    head = b'550 5.1.1 <"x'
    s.seq += len(head)  # sent before the engine watched (or cut off by the window): never seen
    tail = b'354 End data with <CR><LF>.<CR><LF>"@unknown-user.local>: Recipient address rejected\r\n'
    assert engine.process(s.send(tail), 0.41) is ACCEPT
    assert session(engine, c).mode == PENDING, "a first segment's start is no line start"
    engine.process(s.send(NO_VALID), 0.42)
    d = engine.process(c.send(b"RCPT TO:<v@example.com>\r\n"), 0.5)
    assert d.reason is Reason.DOMAIN


def test_mid_line_cut_after_an_lf_in_the_echo_is_impossible_but_a_gap_loses_sync(engine):
    """After a gap in the server's sequence numbers a segment's start is no line start either."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\n"), 0.2)
    engine.process(c.send(b"RCPT TO:<v@unknown-user.local>\r\n"), 0.3)
    engine.process(s.send(b"550 5.1.1 <v@unknown-user.local>: Recipient address rejected\r\n"), 0.31)
    engine.process(c.send(b"DATA\r\n"), 0.4)
    s.seq += 10  # unseen bytes
    engine.process(s.send(GO_AHEAD), 0.41)
    assert session(engine, c).mode == PENDING


def test_split_354_across_server_segments(engine):
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\n"), 0.2)
    engine.process(s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"), 0.21)
    engine.process(c.send(b"DATA\r\n"), 0.3)
    assert engine.process(s.send(b"35"), 0.31) is ACCEPT
    assert engine.process(s.send(b"4 End data with"), 0.32) is ACCEPT
    assert session(engine, c).mode == PENDING, "a 354 line counts once its LF came"
    d = engine.process(s.send(b" <CR><LF>.<CR><LF>\r\n"), 0.33)
    assert d is not ACCEPT and session(engine, c).mode == BODY


def test_server_retransmission_is_read_once(engine):
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@unknown-user.local>\r\n"), 0.2)
    start = s.seq
    engine.process(s.send(b"250 2.1.0 Ok\r\n" + REFUSED), 0.21)
    engine.process(s.at(start, b"250 2.1.0 Ok\r\n" + REFUSED), 0.22)  # retransmitted whole
    engine.process(c.send(b"DATA\r\n"), 0.3)
    at = s.seq
    engine.process(s.send(NO_VALID), 0.31)
    engine.process(s.at(at, NO_VALID), 0.32)  # the 554 again: one refusal, not two
    sess = session(engine, c)
    assert sess.mode == COMMAND and sess.datas == 0
    engine.process(s.at(start + 5, b"2.1.0 Ok\r\n" + REFUSED + NO_VALID[:10]), 0.33)  # partly old
    assert sess.srv_next == s.seq and sess.datas == 0


def test_retransmitted_354_counts_once(engine):
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\n"), 0.2)
    engine.process(s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"), 0.21)
    engine.process(c.send(b"DATA\r\n"), 0.3)
    at = s.seq
    engine.process(s.send(GO_AHEAD), 0.31)
    assert session(engine, c).mode == BODY
    engine.process(s.at(at, GO_AHEAD), 0.32)
    assert session(engine, c).mode == BODY and session(engine, c).datas == 0


def test_pipelined_mail_rcpt_data_and_one_segment_of_three_replies(engine):
    c, s = opened(engine)
    d = engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n"), 0.2)
    assert d is ACCEPT_REPLIES and session(engine, c).mode == PENDING
    d = engine.process(s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + GO_AHEAD), 0.21)
    assert d is not ACCEPT and session(engine, c).mode == BODY
    assert engine.process(c.send(b"RCPT TO:<v@example.com>\r\n.\r\n"), 0.3).reason is None


def test_pipelining_past_data_keeps_command_parsing(engine):
    """A client that sends the body before the 354 (RFC 2920 violation): its body is read as commands
    (the price: a body line that is a blocked envelope command blocks; counted)."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n"), 0.2)
    engine.process(c.send(b"Subject: t\r\n\r\nhello\r\n"), 0.3)
    assert engine.counts["smtp-pipelined-past-data"] == 1
    engine.process(s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + GO_AHEAD), 0.31)
    assert session(engine, c).mode == COMMAND, "the 354 came after client bytes: no body"
    assert engine.process(c.send(b"RCPT TO:<v@example.com>\r\n"), 0.4).reason is Reason.DOMAIN


def test_a_stale_354_answers_the_oldest_data(engine):
    """A 354 held back by the client's window answers an earlier DATA, never the pending one."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\n"), 0.2)
    engine.process(s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"), 0.21)
    engine.process(c.send(b"DATA\r\n"), 0.3)  # accepted; its 354 held back by a zero window
    engine.process(c.send(b"x\r\n.\r\nRSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<v@unknown-user.local>\r\n"
                          b"DATA\r\n"), 0.4)  # the server: body, end of data, RSET, refused RCPT, 554
    sess = session(engine, c)
    assert sess.mode == PENDING and sess.datas == 2
    engine.process(s.send(GO_AHEAD), 0.5)  # the first DATA's 354, released
    assert sess.mode == PENDING and sess.datas == 1, "it answered the first DATA: no body"
    assert engine.process(c.send(b"RCPT TO:<v@example.com>\r\n"), 0.6).reason is Reason.DOMAIN


def test_a_reply_after_the_354_in_one_segment_means_no_body(engine):
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n"), 0.2)
    engine.process(s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + GO_AHEAD + b"250 2.0.0 Ok\r\n"), 0.21)
    assert session(engine, c).mode == COMMAND


def test_without_replies_watched_a_data_is_taken_as_accepted(make_engine):
    """reply_mark = 0 or a client-only capture: the old behaviour, the remaining limit (README)."""
    e = make_engine(domains=BLOCKED, decide="early")
    c, s = opened(e)
    e.process(c.send(b"MAIL FROM:<a@example.org>\r\n"), 0.2)
    assert e.process(c.send(b"RCPT TO:<v@unknown-user.local>\r\n"), 0.3) is ACCEPT
    assert e.process(c.send(b"DATA\r\n"), 0.4) is ACCEPT_BODY
    assert e.process(c.send(b"RCPT TO:<v@example.com>\r\n"), 0.5) is ACCEPT


def test_server_packets_are_ignored_while_the_kernel_would_not_queue_them(engine):
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\n"), 0.2)
    engine.process(s.send(b"250 2.1.0 Ok\r\n"), 0.21)
    assert session(engine, c).srv_next is None


def test_live_server_replies_do_not_make_the_view_two_sided(make_engine):
    """Live, server packets arrive only through the reply mark: the next connections are still proven
    by the kernel (their first ACK), never taken for unproven because no SYN-ACK was seen."""
    e = make_engine(domains=BLOCKED, decide="early")
    e.watch_replies()
    c, s = opened(e)
    e.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\n"), 0.2)
    e.process(s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"), 0.21)
    c2, _ = opened(e, sport=40001)
    d = e.process(c2.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.com>\r\n"), 0.3)
    assert d.reason is Reason.DOMAIN and e.counts["unproven"] == 0


def test_second_transaction_refused_for_policy_after_a_message(engine):
    """After a message's end of data the reply mark waits for the next RCPT; the refusal there is read."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n"), 0.2)
    engine.process(s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + GO_AHEAD), 0.21)
    engine.process(c.send(b"Subject: t\r\n\r\nhi\r\n.\r\n"), 0.3)
    s.send(b"250 2.0.0 Ok: queued as 1\r\n")  # not queued live: the reply mark is off until the next RCPT
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@unknown-user.local>\r\nDATA\r\n"), 0.4)
    assert session(engine, c).mode == PENDING
    engine.process(s.send(b"250 2.1.0 Ok\r\n" + REFUSED + NO_VALID), 0.41)
    assert session(engine, c).mode == COMMAND
    assert engine.process(c.send(b"RCPT TO:<v@example.com>\r\n"), 0.5).reason is Reason.DOMAIN


def test_held_back_reply_cut_mid_line_after_a_message(engine):
    """After a body the reply mark waits for the next RCPT.  A refused MAIL's reply that echoes
    "354 ..." is held back by the client's window and released mid-line once the RCPT set the mark:
    the first queued server segment starts with "354 " but no server LF came before it."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n"), 0.2)
    engine.process(s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + GO_AHEAD), 0.21)
    engine.process(c.send(b"hi\r\n.\r\n"), 0.3)
    s.send(b"250 2.0.0 Ok: queued as 1\r\n")  # unseen: no reply mark between the body and the next RCPT
    engine.process(c.send(b"RSET\r\n"), 0.4)
    s.send(b"250 2.0.0 Ok\r\n")  # unseen
    engine.process(c.send(b'MAIL FROM:<"x354 End data with <CR><LF>.<CR><LF>"@a.example>\r\n'), 0.5)
    s.send(b'553 5.7.1 <"x')  # sent before the mark (the window let 13 bytes through): unseen
    assert engine.process(c.send(b"RCPT TO:<v@unknown-user.local>\r\nDATA\r\n"), 0.6) is ACCEPT_REPLIES
    engine.process(s.send(b'354 End data with <CR><LF>.<CR><LF>"@a.example>: Sender address rejected\r\n'
                          b"503 5.5.1 Error: need MAIL command\r\n"), 0.61)
    assert session(engine, c).mode != BODY
    assert engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.com>\r\n"), 0.7).reason \
        is Reason.DOMAIN


def test_no_valid_recipients_is_not_attributed_once_a_bdat_was_read(engine):
    """BDAT draws the same "554 5.5.1 Error: no valid recipients": after one, that reply may answer it,
    and taking it for a DATA's would let a held-back 354 answer a later DATA.  The DATA stays
    unanswered: commands are read (no body), the blocked recipient after it is seen."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@unknown-user.local>\r\n"), 0.2)
    engine.process(s.send(b"250 2.1.0 Ok\r\n" + REFUSED), 0.21)
    engine.process(c.send(b"BDAT 2 LAST\r\nhi"), 0.3)
    engine.process(s.send(NO_VALID), 0.31)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n"), 0.4)
    engine.process(s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + NO_VALID), 0.41)
    sess = session(engine, c)
    assert sess.datas == 1 and sess.mode == PENDING, "the refusal is not attributed after a BDAT"
    assert engine.process(c.send(b"RCPT TO:<v@example.com>\r\n"), 0.5).reason is Reason.DOMAIN


def test_every_data_is_counted_so_a_held_back_reply_answers_it(engine):
    """MAIL and DATA without a RCPT after a message (the reply mark off): Postfix refuses that DATA with
    "no valid recipients", and the client's window can hold that reply back until a later DATA is
    pending.  Every DATA is counted (and turns the reply mark on), so the held-back refusal answers it,
    not the later one, and a held-back 354 cannot open a body for a later refused DATA."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n"), 0.2)
    engine.process(s.send(b"250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n" + GO_AHEAD), 0.21)
    engine.process(c.send(b"hi\r\n.\r\n"), 0.3)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nDATA\r\n"), 0.4)
    sess = session(engine, c)
    assert sess.datas == 1 and sess.watching
    engine.process(c.send(b"RCPT TO:<v@example.org>\r\nDATA\r\n"), 0.5)
    assert sess.datas == 2 and sess.mode == PENDING
    engine.process(s.send(b"250 2.0.0 Ok: queued\r\n250 2.1.0 Ok\r\n" + NO_VALID), 0.51)
    assert sess.datas == 1 and sess.mode == PENDING, "the refusal answers the first DATA"
    engine.process(s.send(b"250 2.1.5 Ok\r\n" + GO_AHEAD), 0.52)
    assert sess.mode == BODY and sess.datas == 0


# ---- a property: the body starts only at a 354 that begins right after an LF the server sent ----------



@settings(max_examples=400, deadline=None)
@given(stream=st.binary(min_size=1, max_size=80).map(
           lambda b: bytes(b"354 \r\n-5x"[c % 9] for c in b)),
       cuts=st.lists(st.integers(min_value=1, max_value=79), max_size=6),
       start=st.integers(min_value=0, max_value=0xFFFFFFFF))
@example(stream=b"x\r\n354 x\r\n", cuts=[5], start=0xFFFFFFFE)  # the property can hold: this one enters
@example(stream=b"354 x\r\n354 x\r\n", cuts=[], start=0)     # the first line is no line start
def test_body_only_at_a_354_after_a_server_lf(stream, cuts, start):
    class NoRules:
        def match(self, domain):
            return None

    session = SmtpSession(replies=True)
    session.feed(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n", NoRules())
    assert session.mode == PENDING
    points = sorted({c for c in cuts if c < len(stream)} | {0, len(stream)})
    entered = False
    for a, b in zip(points, points[1:], strict=False):
        entered |= session.server((start + a) & 0xFFFFFFFF, stream[a:b])
    if stream == b"x\r\n354 x\r\n":
        assert entered
    if entered:
        proven = [i for i in range(1, len(stream) - 3) if stream[i - 1:i] == b"\n" and stream[i:i + 3] == b"354"
                  and stream[i + 3:i + 4] in (b" ", b"-") and b"\n" in stream[i:]]
        assert proven, stream
