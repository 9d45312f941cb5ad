"""Property tests: text the client chooses (a user name, a HELO, what the server quotes back) never
chooses the address a filter reads -- it is the daemon's own, or none at all.

The client's text is drawn from fragments of the daemons' own wording with other addresses in them.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from inspector.logs.filters import BUILTIN, NOT_ADDRESS, normalize_host

REAL = st.sampled_from(["203.0.113.5", "2001:db8:5::7", "::ffff:203.0.113.6"])
FAKE = st.sampled_from(["198.51.100.9", "192.0.2.1", "2001:db8:9::9", "127.0.0.1", "::1"])


def _fragments(templates: list[str]) -> st.SearchStrategy[str]:
    piece = st.one_of(st.sampled_from(templates), st.text("ab .()[]<>=,-_/", max_size=6))
    return st.lists(st.tuples(piece, FAKE), max_size=4).map(
        lambda parts: "".join(t.replace("ADDR", a) for t, a in parts))


SSHD_TEXT = _fragments([" from ADDR port 1 ssh2", " from ADDR", " port 22", " ssh2", "Failed password for ",
                        "invalid user ", " from ADDR port 2 ssh2 [preauth]", "Invalid user "])
ANY_TEXT = _fragments([" from ADDR port 1 ssh2", ": from ADDR port 1 ssh2", " ssh2: ", " from ADDR. ",
                       " from ADDR. AUTHENTICATE PLAIN: ", " from ADDR. LOGIN: ", ", rip=ADDR, lip=ADDR",
                       " [ADDR]:1: 535 Incorrect authentication data", " in /x.php on line 1 (POST /)",
                       " from ADDR in session x", "user=<", ">, "])


def _host(raw: str | None) -> str | None:
    return normalize_host(raw) if raw not in (None, NOT_ADDRESS) else raw


@settings(max_examples=400, deadline=None)
@given(real=REAL, user=SSHD_TEXT.filter(lambda u: ":" not in u), extra=ANY_TEXT, kind=st.integers(0, 2))
def test_sshd(real, user, extra, kind):
    # OpenSSH cuts a user name at ':' (the login style); what follows "ssh2: " may be the client's
    line = [f"sshd[1]: Failed password for invalid user {user} from {real} port 22 ssh2: {extra}",
            f"sshd[1]: Failed password for {user} from {real} port 22 ssh2",
            f"sshd[1]: Invalid user {user} from {real} port 22"][kind]
    assert _host(BUILTIN["sshd"].extract(line)) == normalize_host(real)


@settings(max_examples=400, deadline=None)
@given(real=REAL, user=ANY_TEXT, reply=ANY_TEXT)
def test_roundcube(real, user, reply):
    line = (f"[21-Nov-2026 10:00:00 +0100]: <ab> IMAP Error: Login failed for {user} against localhost from {real}. "
            f"AUTHENTICATE PLAIN: A0002 NO {reply} in /r/rcube_imap.php on line 211 (POST /?_task=login)")
    assert _host(BUILTIN["roundcube"].extract(line)) in (normalize_host(real), NOT_ADDRESS)


@settings(max_examples=400, deadline=None)
@given(real=REAL, user=ANY_TEXT)
def test_dovecot(real, user):
    line = (f"dovecot: imap-login: Aborted login (auth failed, 1 attempts in 2 secs): user=<{user}>, method=PLAIN, "
            f"rip={real}, lip=192.0.2.10, TLS, session=<k2Jx>")
    assert _host(BUILTIN["dovecot"].extract(line)) == normalize_host(real)


@settings(max_examples=400, deadline=None)
@given(real=REAL, helo=ANY_TEXT.map(lambda h: h.replace(" ", "")), setid=ANY_TEXT)
def test_exim(real, helo, setid):
    # Exim refuses a HELO with a space; set_id (the client's login name) comes after Exim's own text
    line = (f"2026-11-21 15:00:01 plain authenticator failed for ({helo}) [{real}]:54321: "
            f"535 Incorrect authentication data (set_id={setid})")
    assert _host(BUILTIN["exim"].extract(line)) == normalize_host(real)
