import pytest

from inspector.detect.domains import DomainMatcher
from inspector.detect.smtp import BODY, COMMAND, SmtpSession, SmtpSettings, envelope_domain, routed_domains

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


M = b"MAIL FROM:<a@ok.test>\r\n"


@pytest.mark.parametrize("stream", [
    M + b"RCPT TO:<a@blocked.test>\r\n",
    M + b"rcpt to:<a@BLOCKED.test>\r\n",
    M + b"Rcpt To: <a@mx.blocked.test>\r\n",
    b"MAIL FROM:<spam@blocked.test> SIZE=10\r\n",
    b"MAIL   FROM:spam@blocked.test\r\n",
    b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@ok.test>\r\nRCPT TO:<c@blocked.test>\r\nDATA\r\n",
    M + b"RCPT TO:<a@blocked.test.>\r\n",
    M + b"RCPT TO:<a@x.zip>\r\n",
    M + b"RCPT TO:<a@blocked.test>\n",
    b"DATA\r\nhello\r\n.\r\nMAIL FROM:<a@blocked.test>\r\n",
    b"BDAT 5 LAST\r\nRCPT MAIL FROM:<a@blocked.test>\r\n",
    b"STARTTLS\r\n" + M + b"RCPT TO:<a@blocked.test>\r\n",  # STARTTLS refused: plain text goes on
    b"MAIL FROM:<a@ok.test>\r\nDATA\r\nRCPT TO:<a@blocked.test>\r\n",  # DATA before RCPT is refused
    M + b"RCPT TO:<x@blocked.test(comment)>\r\n",
    M + b"RCPT TO:<x@(comment (nested))blocked.test>\r\n",
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
    assert feed_all([M + b"RCPT TO:<x@Mx.Blocked.Test>\r\n"]) == ("blocked.test", "<x@Mx.Blocked.Test>")


def test_starttls_finishes_session_once_tls_starts():
    s = SmtpSession()
    s.feed(b"EHLO a\r\nSTARTTLS\r\n", RULES)
    assert not s.finished
    s.feed(b"\x16\x03\x01\x02\x00\x01", RULES)
    assert s.finished


def test_hit_reports_path_without_parameters():
    assert feed_all([b"MAIL FROM:<a@blocked.test> SIZE=9030\r\n"]) == ("blocked.test", "<a@blocked.test>")


# ---- issue 12: the state is what Postfix accepted (kind 2) ------------------------------------------------

E = b"EHLO c\r\n"
MSG = b"DATA\r\nSubject: t\r\n\r\nhi\r\n.\r\n"
RULES_EX = DomainMatcher({"example.com": 0, "xn--strae-oqa.example": 0})


def feed_ex(stream: bytes, step: int | None = None) -> tuple[str, str] | None:
    s = SmtpSession()
    chunks = [stream] if step is None else [stream[i:i + step] for i in range(0, len(stream), step)]
    for c in chunks:
        hit = s.feed(c, RULES_EX)
        if hit:
            return hit
    return None


KIND2_BLOCKED = [
    # RCPT TO:<> (501), DATA refused: the next lines are commands
    E + M + b"RCPT TO:<>\r\nDATA\r\nRCPT TO:<v@example.com>\r\n" + MSG,
    # RCPT before MAIL (503), DATA (503), then a transaction
    E + b"RCPT TO:<x@ok.test>\r\nDATA\r\n" + M + b"RCPT TO:<v@example.com>\r\n" + MSG,
    # DATA with an argument (501)
    E + M + b"RCPT TO:<x@ok.test>\r\nDATA x\r\nRCPT TO:<v@example.com>\r\n",
    # a refused RCPT (bad syntax, unknown option) does not make DATA accepted
    E + M + b"RCPT TO:<x@ok.test>x\r\nDATA\r\nRCPT TO:<v@example.com>\r\n",
    E + M + b"RCPT TO:<x@ok.test> FOO=1\r\nDATA\r\nRCPT TO:<v@example.com>\r\n",
    E + M + b"RCPT TO : <x@ok.test>\r\nDATA\r\nRCPT TO:<v@example.com>\r\n",
    # a broken MAIL opens no transaction, for sure: DATA is refused
    E + b"MAIL FROM:<a@ok.test\r\nRCPT TO:<x@ok.test>\r\nDATA\r\n" + M + b"RCPT TO:<v@example.com>\r\n",
    # RSET / EHLO end the transaction
    E + M + b"RCPT TO:<x@ok.test>\r\nRSET\r\nDATA\r\n" + M + b"RCPT TO:<v@example.com>\r\n",
    E + M + b"RCPT TO:<x@ok.test>\r\nEHLO again\r\nDATA\r\n" + M + b"RCPT TO:<v@example.com>\r\n",
    # a transaction after BDAT LAST
    E + M + b"RCPT TO:<x@ok.test>\r\nBDAT 4 LAST\r\nabcd" + M + b"RCPT TO:<v@example.com>\r\n",
    # a refused BDAT: its chunk is skipped, the rest is commands
    E + b"BDAT 4\r\nabcd" + M + b"RCPT TO:<v@example.com>\r\n",
]

KIND2_PASSED = [
    # a nested MAIL (503) does not reset the transaction: the accepted DATA has a body
    E + M + b"RCPT TO:<v@ok.test>\r\nMAIL FROM:<b@ok.test>\r\nDATA\r\nRCPT TO:<v@example.com>\r\n.\r\n",
    # a RCPT before MAIL is refused: its domain is not looked up
    E + b"RCPT TO:<v@example.com>\r\nQUIT\r\n",
    # RCPT after BDAT in the same transaction is refused
    E + M + b"RCPT TO:<x@ok.test>\r\nBDAT 2\r\nabRCPT TO:<v@example.com>\r\n",
    # RSET with an argument is refused: the transaction (and its DATA) stand
    E + M + b"RCPT TO:<x@ok.test>\r\nRSET x\r\nDATA\r\nRCPT TO:<v@example.com>\r\n",
    # the body of an accepted DATA is body
    E + M + b"RCPT TO:<x@ok.test>\r\nDATA\r\nMAIL FROM:<a@ok.test>\r\nRCPT TO:<v@example.com>\r\n",
]


@pytest.mark.parametrize("stream", KIND2_BLOCKED)
def test_kind2_refused_commands_do_not_drive_state(stream):
    for step in (None, 1, 7):
        assert feed_ex(stream, step) is not None, f"step {step}"


@pytest.mark.parametrize("stream", KIND2_PASSED)
def test_kind2_accepted_state_is_kept(stream):
    for step in (None, 1, 7):
        assert feed_ex(stream, step) is None, f"step {step}"


# ---- kind 3: Postfix's address rewriting --------------------------------------------------------------------

@pytest.mark.parametrize("address, domains", [
    ("v%example.com@[192.0.2.25]", ["example.com"]),
    ("example.com!v@[192.0.2.25]", ["example.com"]),
    ("example.com!v", ["example.com"]),
    ("v%example.com", ["example.com"]),
    ("v%example.com%example.org@[192.0.2.25]", ["example.org", "example.com"]),
    ("example.org!example.com!v", ["example.org", "example.com"]),
    ("V%EXAMPLE.COM@mx.ok.test", ["mx.ok.test", "example.com"]),
    ('"v@example.com"@[192.0.2.25]', ["example.com"]),
    ("v@example.org", ["example.org"]),
    ("postmaster", []),
])
def test_kind3_routed_domains(address, domains):
    assert routed_domains(address) == domains


def test_kind3_local_domains_stop_the_rewriting_at_a_remote_domain():
    only_literals = SmtpSettings(local_domains=())
    assert routed_domains("example.org!example.com!v", only_literals) == ["example.org"]
    assert routed_domains("v%example.com%example.org@[192.0.2.25]", only_literals) == ["example.org"]
    assert routed_domains("v%example.com@[192.0.2.25]", only_literals) == ["example.com"]
    mine = SmtpSettings(local_domains=("mx.ok.test",))
    assert routed_domains("v%example.com@MX.ok.test", mine) == ["mx.ok.test", "example.com"]
    assert routed_domains("v%example.com@other.test", mine) == ["other.test"]


def test_kind3_rewriting_follows_the_settings():
    off = SmtpSettings(allow_percent_hack=False, swap_bangpath=False, resolve_dequoted=False)
    assert routed_domains("v%example.com@[192.0.2.25]", off) == []
    assert routed_domains("example.com!v", off) == []
    assert routed_domains('"v@example.com"@ok.test', off) == ["ok.test"]


@pytest.mark.parametrize("rcpt", [b"<v%example.com@[192.0.2.25]>", b"<example.com!v@[192.0.2.25]>",
                                  b"<example.com!v>", b"<v%EXAMPLE.com>", b"<v%example.com@[IPv6:2001:db8::25]>"])
def test_kind3_rewritten_recipients_block(rcpt):
    assert feed_ex(E + M + b"RCPT TO:" + rcpt + b"\r\n") == ("example.com", rcpt.decode())


# ---- kind 4: IDNA 2008 / UTS #46 ---------------------------------------------------------------------------

@pytest.mark.parametrize("rcpt, blocked", [
    ("<v@straße.example>", True),
    ("<v@STRAßE.example>", True),
    ("<v@xn--strae-oqa.example>", True),
    ("<v@XN--STRAE-OQA.EXAMPLE>", True),
    ("<v@strasse.example>", False),
])
def test_kind4_idna2008(rcpt, blocked):
    stream = E + b"MAIL FROM:<a@ok.test> SMTPUTF8\r\nRCPT TO:" + rcpt.encode() + b"\r\n"
    assert (feed_ex(stream) is not None) == blocked


# ---- kind 5: every transaction; the end-of-data line as Postfix reads it --------------------------------------

SECOND = M + b"RCPT TO:<v@example.com>\r\n"


@pytest.mark.parametrize("end", [b"\r\n.\r\n", b"\n.\n", b"\n.\r\n", b"\r\n.\r\r\n", b"\r\n.\r\r\r\r\n"])
def test_kind5_end_of_data_forms(end):
    stream = E + M + b"RCPT TO:<x@ok.test>\r\nDATA\r\nSubject: t\r\n\r\nhi" + end + SECOND
    for step in (None, 1, 3):
        assert feed_ex(stream, step) is not None


@pytest.mark.parametrize("not_end", [b"\r\n..\r\n", b"\r.\r", b"\r\n. \r\n", b"\r\n .\r\n", b"\r\n.x\r\n"])
def test_kind5_not_end_of_data(not_end):
    stream = E + M + b"RCPT TO:<x@ok.test>\r\nDATA\r\nSubject: t\r\n\r\nhi" + not_end + SECOND
    for step in (None, 1, 3):
        assert feed_ex(stream, step) is None


def test_kind5_bdat_then_second_transaction():
    chunk = b"Subject: t\r\n\r\nhi\r\n"
    stream = E + M + b"RCPT TO:<x@ok.test>\r\nBDAT %d LAST\r\n" % len(chunk) + chunk + SECOND
    assert feed_ex(stream) is not None
    assert feed_ex(stream, 1) is not None


def test_kind5_long_dot_line_is_not_the_end():
    # Postfix reads a body line in records of line_length_limit bytes: "." + 3000 CRs is no end
    stream = E + M + b"RCPT TO:<x@ok.test>\r\nDATA\r\n.\r" + b"\r" * 3000 + b"\n" + SECOND
    assert feed_ex(stream) is None


def test_in_body_and_partial_dot_line():
    s = SmtpSession()
    s.feed(E + M + b"RCPT TO:<x@ok.test>\r\nDATA\r\nhello\r\n", RULES_EX)
    assert s.in_body
    s.feed(b"more text\r\n.", RULES_EX)
    assert s.mode == BODY and not s.in_body, "a '.' that may end the data: the next segment is needed"
    s.feed(b"\r\n", RULES_EX)
    assert s.mode == COMMAND


def test_skip_then_dot_line_is_unsure_until_postfix_would_have_hung_up():
    # after unseen bytes, ".\r\n" may have been mid-line ("Regards" + ".\r\n"): read on as commands
    # until a line Postfix would hang up on (a non-letter first) shows it was body
    s = SmtpSession()
    s.feed(E + M + b"RCPT TO:<x@ok.test>\r\nDATA\r\nhello\r\n", RULES_EX)
    s.skip(1000)
    s.feed(b".\r\nBob\r\n", RULES_EX)
    assert s.mode == COMMAND and s.unsure
    s.feed(b"-- \r\n", RULES_EX)
    assert s.mode == BODY and not s.unsure


def test_skip_then_dot_line_then_commands_are_read():
    s = SmtpSession()
    s.feed(E + M + b"RCPT TO:<x@ok.test>\r\nDATA\r\nhello\r\n", RULES_EX)
    s.skip(1000)
    assert s.feed(b".\r\nNOOP\r\n" + SECOND, RULES_EX) == ("example.com", "<v@example.com>")


def test_skip_then_unknown_lines_go_back_to_body_after_the_error_limit():
    s = SmtpSession(SmtpSettings(hard_error_limit=3))
    s.feed(E + M + b"RCPT TO:<x@ok.test>\r\nDATA\r\nhello\r\n", RULES_EX)
    s.skip(10)
    s.feed(b".\r\nfoo\r\nbar\r\n", RULES_EX)
    assert s.mode == COMMAND
    s.feed(b"baz\r\n", RULES_EX)
    assert s.mode == BODY


def test_smtp_section_parses_and_names_bad_keys(tmp_path):
    from inspector.config import ConfigError, load_config

    p = tmp_path / "c.toml"
    p.write_text('[smtp]\nallow_percent_hack = false\nlocal_domains = ["Mx.Straße.example", "ok.test"]\n')
    s = load_config(p).smtp
    assert not s.allow_percent_hack and s.swap_bangpath
    assert s.local_domains == ("mx.xn--strae-oqa.example", "ok.test")
    p.write_text("[smtp]\nlocal_domains = [1]\n")
    with pytest.raises(ConfigError, match=r"c.toml:2: smtp.local_domains"):
        load_config(p)
    p.write_text("[smtp]\n\nswap_bang_path = true\n")
    with pytest.raises(ConfigError, match=r"c.toml:3: smtp.swap_bang_path: unknown"):
        load_config(p)


@pytest.mark.parametrize("rule", ["faß.example", "FASS.example", "xn--fa-hia.example"])
def test_kind4_rules_in_u_label_or_a_label_form(rule, tmp_path):
    from inspector.rules import DOMAIN, RuleFile, load_rules

    (tmp_path / "r.txt").write_text(rule + "\n", encoding="utf-8")
    domains = load_rules([RuleFile(tmp_path / "r.txt", DOMAIN)]).domains
    real = E + b"MAIL FROM:<a@ok.test> SMTPUTF8\r\nRCPT TO:<v@fa\xc3\x9f.example>\r\n"
    other = E + M + b"RCPT TO:<v@fass.example>\r\n"
    sharp = rule != "FASS.example"
    assert (SmtpSession().feed(real, domains) is not None) == sharp, "faß.example is xn--fa-hia.example"
    assert (SmtpSession().feed(other, domains) is not None) == (not sharp), "fass.example is another domain"
