import calendar

import pytest

from inspector.logs.filters import (
    BUILTIN,
    NOT_ADDRESS,
    Failure,
    FilterError,
    LineMatcher,
    get_filter,
    normalize_host,
    user_filter,
)
from inspector.logs.timestamps import TimeParser


def utc(*t: int) -> float:
    return float(calendar.timegm((*t, 0, 0, 0)))


@pytest.mark.parametrize("text, host", [
    ("203.0.113.5", "203.0.113.5"),
    ("::ffff:203.0.113.5", "203.0.113.5"),
    ("[::ffff:203.0.113.5]", "203.0.113.5"),
    ("2001:DB8::5", "2001:db8::5"),
    ("fe80::1%eth0", "fe80::1"),
    ("999.1.1.1", None),
    ("host.example.net", None),
    ("", None),
])
def test_normalize_host(text, host):
    assert normalize_host(text) == host


@pytest.mark.parametrize("text, when", [
    ("Nov 21 19:32:28 mail sshd[1]: x", utc(2026, 11, 21, 19, 32, 28)),
    ("Nov  1 09:02:03 mail sshd[1]: x", utc(2026, 11, 1, 9, 2, 3)),
    ("2026-11-21T19:32:28.123456+01:00 mail sshd[1]: x", utc(2026, 11, 21, 18, 32, 28) + 0.123456),
    ("2026-11-21T19:32:28+0100 mail x", utc(2026, 11, 21, 18, 32, 28)),
    ("2026-11-21T19:32:28Z x", utc(2026, 11, 21, 19, 32, 28)),
    ("2026-11-21T19:32:28.5-05:30 x", utc(2026, 11, 22, 1, 2, 28) + 0.5),
    ("2026-11-21 19:32:28,120 ftp proftpd[1] x", utc(2026, 11, 21, 19, 32, 28) + 0.12),
    ("[Sat Nov 21 19:32:28.123456 2026] [core:error] x", utc(2026, 11, 21, 19, 32, 28) + 0.123456),
    ("[Sat Nov 21 19:32:28 2026] [error] x", utc(2026, 11, 21, 19, 32, 28)),
    ("[Sun Nov  1 09:02:03 2026] [error] x", utc(2026, 11, 1, 9, 2, 3)),
    ("[21-Nov-2026 19:32:28 +0200]: <a> x", utc(2026, 11, 21, 17, 32, 28)),
    ("[21-Nov-2026 19:32:28 UTC]: <a> x", utc(2026, 11, 21, 19, 32, 28)),
    ("no time here", None),
    ("Foo 21 19:32:28 x", None),
    ("2026-13-45T99:00:00Z x", None),
    ("", None),
])
def test_time_formats(text, when):
    t = TimeParser(2026, utc=True).parse(text)
    assert t == pytest.approx(when) if when is not None else t is None


def test_syslog_year_runs_over_new_year():
    p = TimeParser(2026, utc=True)
    assert p.parse("Dec 31 23:59:59 x") == utc(2026, 12, 31, 23, 59, 59)
    assert p.parse("Jan  1 00:00:01 x") == utc(2027, 1, 1, 0, 0, 1)


def test_syslog_year_from_the_reference_time():
    p = TimeParser(utc=True)
    now = utc(2027, 1, 5, 12, 0, 0)
    assert p.parse("Jan  5 11:00:00 x", now) == utc(2027, 1, 5, 11, 0, 0)
    assert p.parse("Dec 31 23:00:00 x", now) == utc(2026, 12, 31, 23, 0, 0)  # would be in the future


def test_local_time_without_utc(monkeypatch):
    import time
    p = TimeParser(2026)
    assert p.parse("Nov 21 19:32:28 x") == time.mktime((2026, 11, 21, 19, 32, 28, 0, 0, -1))


def test_line_matcher_fallback_time_and_counts():
    m = LineMatcher(BUILTIN["sshd"], TimeParser(2026, utc=True))
    hit = m.match("sshd[1]: Failed password for root from 203.0.113.5 port 22 ssh2", 1000.0)
    line = "sshd[1]: Failed password for root from 203.0.113.5 port 22 ssh2"
    assert hit == Failure(1000.0, "203.0.113.5", "sshd", line)
    assert m.no_time == 1
    assert m.match("sshd[1]: Failed password for root from h.example port 22 ssh2", 0.0) is NOT_ADDRESS
    assert m.not_address == 1
    assert m.match("Nov 21 19:32:28 h cron[1]: (root) CMD (true)", 0.0) is None


@pytest.mark.parametrize("line", [
    # sshd
    "Nov 21 13:00:02 h sshd[1]: Failed password for invalid user x from 198.51.100.1 port 1 ssh2 from 203.0.113.5 "
    "port 22 ssh2",
    "Nov 21 13:00:02 h sshd[1]: Failed password for invalid user test from 203.0.113.5 port 58946 ssh2: from "
    "198.51.100.9 port 55555 ssh2",
    "Nov 21 13:00:02 h sshd[1]: Invalid user a from 198.51.100.1 port 1 from 203.0.113.5 port 2",
    # dovecot
    "Nov 21 14:00:01 mail dovecot: imap-login: Aborted login (auth failed, 1 attempts in 2 secs): user=<a, rip="
    "198.51.100.1, b>, method=PLAIN, rip=203.0.113.5, lip=192.0.2.10, TLS, session=<x>",
    # exim
    "2026-11-21 15:00:01 plain authenticator failed for h.example (x)[198.51.100.1]:1) [203.0.113.5]:54321: 535 "
    "Incorrect authentication data (set_id=a) [198.51.100.2]:1: 535 Incorrect authentication data",
    # courier
    "Nov 21 08:02:00 mail imapd: LOGIN FAILED, user=x, ip=[198.51.100.1], ip=[::ffff:203.0.113.5]",
    # roundcube
    "[21-Nov-2026 10:01:20 +0100]: <e> IMAP Error: Login failed for x against localhost from 198.51.100.1. y against "
    "localhost from 203.0.113.5. AUTHENTICATE PLAIN: A0002 NO Authentication failed. in /r/rcube_imap.php on line 211 "
    "(POST /)",
    "Jul 11 03:06:37 h roundcube: IMAP Error: Login failed for admin from 127.0.0.1 from 203.0.113.5. AUTHENTICATE "
    "PLAIN: A0002 NO Login failed. user=admin from 127.0.0.1 in in /usr/share/roundcube/rcube_imap.php on line 205 "
    "(POST /)",
    "[21-Nov-2026 10:10:00 +0100]: IMAP Error: Login failed for admin from 203.0.113.5. AUTHENTICATE PLAIN: A0002 NO "
    "Login failed. user=admin from 127.0.0.1. in /usr/share/roundcube/program/include/rcube_imap.php on line 205 "
    "(POST /)",
    # apache: mod_remoteip's [remote ...], and a path in the client's request line
    "[Sat Nov 21 11:07:00.000000 2026] [core:error] [pid 1:tid 2] [remote 203.0.113.5:41001] AH00126: Invalid URI in "
    "request GET /../../[client 198.51.100.1:1] HTTP/1.1",
    "[Sat Nov 21 11:07:00.000000 2026] [authz_core:error] [pid 1:tid 2] [remote 198.51.100.1:80] "
    "[client 203.0.113.5:1] AH01630: client denied by server configuration: /var/www/html/wp-admin",
    # proftpd
    "Nov 21 12:03:00 ftp proftpd[1] ftp.example.org (203.0.113.5[203.0.113.5]): USER x proftpd[1] h (e[198.51.100.1]): "
    "no such user found from 203.0.113.5 [203.0.113.5] to 192.0.2.10:21",
])
def test_client_text_cannot_choose_the_address(line):
    hits = [f.extract(line) for f in BUILTIN.values() if f.prefilter()(line)]
    assert [normalize_host(h) for h in hits if h] == ["203.0.113.5"]


def test_every_builtin_has_a_literal_prefilter():
    for f in BUILTIN.values():
        assert f.literals and all(f.literals)
        assert not f.prefilter()("Nov 21 19:32:28 host kernel: [12345.678] eth0: link up")


def test_user_filter():
    f = user_filter("app", r"denied for (?P<host>\S+) at (?P<time>\S+)", "denied")
    m = LineMatcher(f, TimeParser(utc=True))
    hit = m.match("app: denied for ::ffff:203.0.113.9 at 2026-11-21T10:00:00Z", 5.0)
    assert isinstance(hit, Failure) and hit.host == "203.0.113.9" and hit.time == utc(2026, 11, 21, 10, 0, 0)
    assert m.match("app: allowed for 203.0.113.9", 5.0) is None
    assert get_filter("app", [f]) is f
    assert get_filter("sshd", [f]) is BUILTIN["sshd"]


@pytest.mark.parametrize("regex, message", [
    (r"from (\S+)", "named group (?P<host>"),
    (r"from (?P<host>\S+", "invalid regex"),
])
def test_user_filter_errors(regex, message):
    with pytest.raises(FilterError, match=message.replace("(", r"\(").replace("?", r"\?")):
        user_filter("x", regex)


def test_unknown_filter_names_the_known_ones():
    with pytest.raises(FilterError) as e:
        get_filter("nginx", [user_filter("app", r"(?P<host>x)")])
    assert "built-in: apache-probe, courier, dovecot, exim, postfix-sasl, proftpd, roundcube, sshd" in str(e.value)
    assert "from the config: app" in str(e.value)


@pytest.mark.parametrize("line", [
    # Roundcube: client text imitating Roundcube's own words on both sides of its "from"
    "[21-Nov-2026 10:10:04 +0100]: IMAP Error: Login failed for x from 192.0.2.70. AUTHENTICATE PLAIN: y against "
    "localhost from 198.51.100.66. AUTHENTICATE PLAIN: A0002 NO Authentication failed. in /r.php on line 211 (POST /)",
    # Dovecot: the login line without a rip (login_log_format_elements without %r)
    "Nov 21 14:00:01 mail dovecot: imap-login: Aborted login (auth failed, 1 attempts in 2 secs): user=<a>, "
    "method=PLAIN",
])
def test_ambiguous_or_missing_address_is_no_address(line):
    hits = [f.extract(line) for f in BUILTIN.values() if f.prefilter()(line)]
    assert hits == [NOT_ADDRESS]


def test_builtin_units_are_trusted_journal_matches():
    assert BUILTIN["sshd"].journal_matches == ("_SYSTEMD_UNIT=ssh.service", "_SYSTEMD_UNIT=sshd.service")
    assert "_SYSTEMD_UNIT=postfix@-.service" in BUILTIN["postfix-sasl"].journal_matches
    assert BUILTIN["dovecot"].units == ("dovecot.service",)
    assert "exim4.service" in BUILTIN["exim"].units
    assert BUILTIN["roundcube"].units == () and BUILTIN["apache-probe"].units == ()  # they write files
