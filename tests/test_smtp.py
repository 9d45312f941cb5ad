import pytest

from inspector.detect.domains import DomainMatcher
from inspector.detect.smtp import SmtpSession, envelope_domain

RULES = DomainMatcher({"blocked.test": 0, "zip": 0})


@pytest.mark.parametrize("path, domain", [
    ("<a@Example.COM>", "example.com"),
    (" <a@example.com>", "example.com"),
    ("a@example.com", "example.com"),
    ("a@example.com SIZE=100", "example.com"),
    ("<a@example.com> SIZE=100 BODY=8BITMIME", "example.com"),
    ("<@relay.one,@relay.two:user@final.test>", "final.test"),
    ('<"odd@local"@real.test>', "real.test"),
    ('<"x\\"@y.test"@real.test>', "real.test"),
    ('<"x@blocked.test">', None),
    ("<x@blocked.test(comment)>", "blocked.test"),
    ('<"(not a comment)"@(a comment)real.test>', "real.test"),
    ("<user@example.com.>", "example.com"),
    ("<user@[192.0.2.1]>", None),
    ("<>", None),
    ("<postmaster>", None),
    ("<a@b@c.test>", "c.test"),
])
def test_envelope_domain(path, domain):
    assert envelope_domain(path) == domain


def feed_all(chunks):
    s = SmtpSession()
    for c in chunks:
        hit = s.feed(c, RULES)
        if hit:
            return hit
    return None


@pytest.mark.parametrize("stream", [
    b"RCPT TO:<a@blocked.test>\r\n",
    b"rcpt to:<a@BLOCKED.test>\r\n",
    b"Rcpt To: <a@mx.blocked.test>\r\n",
    b"MAIL FROM:<spam@blocked.test> SIZE=10\r\n",
    b"MAIL   FROM:spam@blocked.test\r\n",
    b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nRCPT TO:<c@blocked.test>\r\nDATA\r\n",
    b"RCPT TO:<a@blocked.test.>\r\n",
    b"RCPT TO:<a@x.zip>\r\n",
    b"RCPT TO:<a@blocked.test>\n",
    b"DATA\r\nhello\r\n.\r\nMAIL FROM:<a@blocked.test>\r\n",
    b"BDAT 5 LAST\r\nRCPT MAIL FROM:<a@blocked.test>\r\n",
    b"STARTTLS\r\nRCPT TO:<a@blocked.test>\r\n",  # STARTTLS refused: plain text goes on
    b"MAIL FROM:<a@ok.test>\r\nDATA\r\nRCPT TO:<a@blocked.test>\r\n",  # DATA before RCPT is refused
    b"RCPT TO:<x@blocked.test(comment)>\r\n",
    b"RCPT TO:<x@(comment (nested))blocked.test>\r\n",
])
def test_blocked(stream):
    assert feed_all([stream]) is not None
    assert feed_all([bytes([b]) for b in stream]) is not None, "split at every byte"


@pytest.mark.parametrize("stream", [
    b"EHLO blocked.test\r\nMAIL FROM:<a@ok.test>\r\n",
    b"RCPT TO:<a@notblocked.test>\r\n",
    b"RCPT TO:<a@blocked.test.evil.example>\r\n",
    b"RCPT TO:<a@blocked.testing>\r\n",
    b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\nRCPT TO:<a@blocked.test>\r\nsee blocked.test\r\n..\r\n",
    b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nDATA\r\n .\r\n. \r\nRCPT TO:<a@blocked.test>\r\n",
    b"BDAT 30\r\nRCPT TO:<a@blocked.test>\r\n\r\n",
    b"STARTTLS\r\n\x16\x03\x01\x02\x00RCPT TO:<a@blocked.test>\r\n",
    b"QUIT\r\nRCPT TO:<a@blocked.test>\r\n",
    b"RCPT TO:<a@blocked.test",  # no line end yet
    b'RCPT TO:<"a@blocked.test"@ok.test>\r\n',
    b"NOOP RCPT TO:<a@blocked.test>\r\n",
])
def test_not_blocked(stream):
    assert feed_all([stream]) is None
    assert feed_all([bytes([b]) for b in stream]) is None


def test_hit_names_rule_and_address():
    assert feed_all([b"RCPT TO:<x@Mx.Blocked.Test>\r\n"]) == ("blocked.test", "<x@Mx.Blocked.Test>")


def test_starttls_finishes_session_once_tls_starts():
    s = SmtpSession()
    s.feed(b"EHLO a\r\nSTARTTLS\r\n", RULES)
    assert not s.finished
    s.feed(b"\x16\x03\x01\x02\x00\x01", RULES)
    assert s.finished


def test_hit_reports_path_without_parameters():
    assert feed_all([b"MAIL FROM:<a@blocked.test> SIZE=9030\r\n"]) == ("blocked.test", "<a@blocked.test>")
