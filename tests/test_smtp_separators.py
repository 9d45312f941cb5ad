"""SMTP command words as Postfix 3.7 splits them (issue 12, kind 2; found attacking the reply watch): engine-level

Each test states the bytes an attacker sends and what Postfix 3.7 does with them (smtpd.c, smtpd_token.c:
a command is split into tokens at ISSPACE, i.e. SP, HT, VT, FF, CR; the verb is matched with strcasecmp).
"""

from __future__ import annotations

import pytest

from inspector.detect.smtp import BODY, COMMAND, PENDING
from inspector.verdict import ACCEPT, ACCEPT_REPLIES, Reason

from .test_smtp_replies import BLOCKED, GO_AHEAD, NO_VALID, REFUSED, opened, session

OK_MAIL = b"250 2.1.0 Ok\r\n"
OK_RCPT = b"250 2.1.5 Ok\r\n"


@pytest.fixture(params=["early", "depth"])
def engine(request, make_engine):
    e = make_engine(domains=BLOCKED, decide=request.param)
    e.watch_replies()
    return e


# -- 1. the separators Postfix's tokenizer takes and the engine does not --------------------------------

@pytest.mark.parametrize("sep", [b"\x0b", b"\x0c", b"\r"], ids=["VT", "FF", "CR"])
def test_rcpt_with_a_vt_or_ff_separator_is_read(engine, sep):
    """``RCPT<VT>TO:<v@example.com>``: smtpd_token splits at ISSPACE, so Postfix reads RCPT, TO:, <v@...>."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\n"), 0.2)
    d = engine.process(c.send(b"RCPT" + sep + b"TO:<v@example.com>\r\n"), 0.3)
    assert d is not ACCEPT and d is not ACCEPT_REPLIES and d.reason is Reason.DOMAIN


@pytest.mark.parametrize("lead", [b"\x0b", b"\x0c", b"\r"], ids=["VT", "FF", "CR"])
def test_rcpt_after_a_leading_vt_or_ff_is_read(engine, lead):
    """Leading ISSPACE is skipped by smtpd_token (the engine strips only SP and HT)."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\n"), 0.2)
    d = engine.process(c.send(lead + b"RCPT TO:<v@example.com>\r\n"), 0.3)
    assert d is not ACCEPT and d is not ACCEPT_REPLIES and d.reason is Reason.DOMAIN


def test_rcpt_with_vt_before_the_path_is_read(engine):
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\n"), 0.2)
    d = engine.process(c.send(b"RCPT TO:\x0b<v@example.com>\r\n"), 0.3)
    assert d is not ACCEPT and d is not ACCEPT_REPLIES and d.reason is Reason.DOMAIN


# -- 2. a DATA Postfix reads that the engine does not count: its 354 answers a later DATA ------------------

@pytest.mark.parametrize("data_line", [b"DATA\x0b\r\n", b"DATA\x0c\r\n", b"\x0bDATA\r\n", b"DATA\x00x\r\n"],
                         ids=["VT", "FF", "lead-VT", "NUL"])
def test_uncounted_data_lends_its_354_to_a_later_data(engine, data_line):
    """Postfix reads ``DATA<VT>`` as DATA (354, body); the engine does not count it.  The client pipelines
    the end of that body and a second DATA (Postfix: 250 queued, 503 need RCPT), holding the 354 back
    with its window so that it leaves in its own segment after the engine read the second DATA.  The
    engine takes that 354 for the second DATA's and enters a body the server never opened: what follows
    is a new transaction to a blocked domain, read as body."""
    c, s = opened(engine)
    assert engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<ok@example.org>\r\n" + data_line),
                          0.2) is ACCEPT_REPLIES
    engine.process(s.send(OK_MAIL + OK_RCPT), 0.21)  # the window lets only these two replies out
    engine.process(c.send(b".\r\nDATA\r\n"), 0.3)      # Postfix: end of the first body, then DATA -> 503
    assert session(engine, c).mode == PENDING
    engine.process(s.send(GO_AHEAD), 0.31)            # window opened by 37 bytes: the 354 alone
    # the rest (250 queued, 503) leaves later; live it is no longer queued (the reply mark is cleared)
    assert session(engine, c).mode != BODY, "a 354 for a DATA the engine did not count opened a body"
    d = engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.com>\r\nDATA\r\n"), 0.4)
    assert d is not ACCEPT and d.reason is Reason.DOMAIN


@pytest.mark.parametrize("decide", ["early", "depth"])
def test_bdat_with_a_vt_separator_ends_the_transaction_without_replies(make_engine, decide):
    """``BDAT 4<VT>LAST`` is a last chunk to Postfix (250 queued; the transaction ends, DATA gets 503); the
    engine does not parse it, keeps the transaction open and, without the replies, takes the DATA for a body's
    start.  With the replies watched this holds (the 503 is not a 354)."""
    e = make_engine(domains=BLOCKED, decide=decide)
    c, s = opened(e)
    e.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.org>\r\n"), 0.2)
    e.process(c.send(b"BDAT 4\x0bLAST\r\nxx\r\n"), 0.3)
    e.process(c.send(b"DATA\r\n"), 0.4)
    d = e.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.com>\r\nDATA\r\n"), 0.5)
    assert d is not ACCEPT and d.reason is Reason.DOMAIN


# -- 3. reply attribution: variants that hold ------------------------------------------------------------

def test_rset_between_data_and_its_354_keeps_no_body(engine):
    """DATA, then RSET pipelined before the 354 (Postfix: 354, body "RSET"): no body in the engine."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<ok@example.org>\r\n"), 0.2)
    engine.process(s.send(OK_MAIL + OK_RCPT), 0.21)
    d = engine.process(c.send(b"DATA\r\nRSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<v@example.com>\r\n"), 0.3)
    assert d.reason is Reason.DOMAIN  # read as commands: stricter than Postfix (body there), never a pass


def test_refused_data_with_another_text_then_354_of_a_later_data_opens_no_body(engine):
    """DATA refused with a text the engine does not attribute (503), a later DATA's 354: datas stays 1."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<ok@example.org>\r\n"), 0.2)
    engine.process(s.send(OK_MAIL + OK_RCPT), 0.21)
    engine.process(c.send(b"DATA X\r\n"), 0.3)  # 501 Syntax: DATA (counted, not attributed)
    engine.process(s.send(b"501 5.5.4 Syntax: DATA\r\n"), 0.31)
    engine.process(c.send(b"DATA\r\n"), 0.4)
    engine.process(s.send(GO_AHEAD), 0.41)
    assert session(engine, c).mode != BODY  # the cost the README states: bodies read as commands


def test_multiline_reply_holding_354_continuations_is_no_354(engine):
    """A continuation line ``250-...`` then a line ``354 ...`` inside the same reply is no reply's first."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@unknown-user.local>\r\n"), 0.2)
    engine.process(s.send(OK_MAIL + REFUSED), 0.21)
    engine.process(c.send(b"DATA\r\n"), 0.3)
    engine.process(s.send(b"554-5.5.1 Error: no valid recipients\r\n354 End data\r\n554 5.5.1 x\r\n"), 0.31)
    assert session(engine, c).mode != BODY


def test_421_instead_of_354_opens_no_body(engine):
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<ok@example.org>\r\n"), 0.2)
    engine.process(s.send(OK_MAIL + OK_RCPT), 0.21)
    engine.process(c.send(b"DATA\r\n"), 0.3)
    engine.process(s.send(b"421 4.3.0 mail.example Error: too many errors\r\n"), 0.31)
    assert session(engine, c).mode == PENDING
    d = engine.process(c.send(b"RCPT TO:<v@example.com>\r\n"), 0.4)
    assert d.reason is Reason.DOMAIN


def test_overlapping_server_retransmission_with_new_tail(engine):
    """A retransmission that overlaps seen bytes and carries new ones: only the new part is read."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@unknown-user.local>\r\n"), 0.2)
    start = s.seq
    engine.process(s.send(OK_MAIL + REFUSED), 0.21)
    engine.process(c.send(b"DATA\r\n"), 0.3)
    engine.process(s.at(start, OK_MAIL + REFUSED + NO_VALID), 0.31)
    s.seq = start + len(OK_MAIL + REFUSED + NO_VALID)
    assert session(engine, c).mode == COMMAND and session(engine, c).datas == 0
    d = engine.process(c.send(b"RCPT TO:<v@example.com>\r\n"), 0.4)
    assert d.reason is Reason.DOMAIN


def test_second_transaction_after_body_with_refused_data(engine):
    """After a delivered message: MAIL, a policy-refused RCPT, DATA (554), then the blocked RCPT."""
    c, s = opened(engine)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<ok@example.org>\r\n"), 0.2)
    engine.process(s.send(OK_MAIL + OK_RCPT), 0.21)
    engine.process(c.send(b"DATA\r\n"), 0.3)
    engine.process(s.send(GO_AHEAD), 0.31)
    engine.process(c.send(b"Subject: x\r\n\r\nhi\r\n.\r\n"), 0.4)
    s.send(b"250 2.0.0 Ok: queued as 1\r\n")  # not queued live (no reply mark)
    engine.process(c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<v@unknown-user.local>\r\n"), 0.5)
    engine.process(s.send(OK_MAIL + REFUSED), 0.51)
    engine.process(c.send(b"DATA\r\n"), 0.6)
    engine.process(s.send(NO_VALID), 0.61)
    d = engine.process(c.send(b"RCPT TO:<v@example.com>\r\nDATA\r\n"), 0.7)
    assert d.reason is Reason.DOMAIN
