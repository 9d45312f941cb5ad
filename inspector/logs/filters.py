"""Log filters: one log line in, the attacking address out.

Each built-in filter knows one daemon's failure lines.  A cheap literal
test (``in``) runs first, so most lines cost a substring search and nothing
more; the regex runs only on lines that pass it.  Where the daemon writes
attacker-chosen text (a user name) next to the address, the pattern is
anchored on the part the daemon writes itself, so a user name such as
``x from 192.0.2.1`` cannot make the filter blame somebody else.

:class:`LineMatcher` is the common part: literal test, rsyslog's
``message repeated N times: [ ... ]`` lines, address validation (IPv6 too,
``::ffff:a.b.c.d`` mapped to IPv4) and the timestamp, read by
:class:`inspector.logs.timestamps.TimeParser`.  Everything here is pure: the
year and the fallback time are passed in.

Over 400 lines, on purpose: every built-in filter is a short function with its
daemon's quirks and sample lines, kept together so that they are reviewed side
by side (the fixtures in ``tests/logs/fixtures/`` mirror them one to one).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .timestamps import TimeParser

__all__ = [
    "BUILTIN", "NOT_ADDRESS", "Failure", "Filter", "FilterError", "LineMatcher",
    "builtin_names", "get_filter", "normalize_host", "user_filter",
]

NOT_ADDRESS = "\x00"  # what extract() returns when the line matched but holds no usable address


class FilterError(ValueError):
    """An unknown filter name or an unusable user regex."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt (or ``count`` of them) read from a log line."""

    time: float
    host: str  # the address, normalized (IPv4-mapped IPv6 written as IPv4)
    filter: str
    line: str
    count: int = 1


@dataclass(frozen=True)
class Filter:
    """A named filter: literals (any of them must occur) and an extractor.

    ``extract(line)`` returns the address text, :data:`NOT_ADDRESS` when the
    line is a failure without a usable address, or ``None`` (not a failure).
    ``time`` optionally finds the timestamp text (user filters' ``time`` group).
    ``units``: the systemd units whose journal entries the filter reads when a
    source names no ``journal`` matches (alternatives: any of them).
    ``attempts(line)``: how many failed attempts the line reports (default 1).
    """

    name: str
    literals: tuple[str, ...]
    extract: Callable[[str], str | None]
    description: str = ""
    units: tuple[str, ...] = ()
    time: Callable[[str], str | None] | None = None
    attempts: Callable[[str], int] | None = None  # failures one line reports (Dovecot: "N attempts")

    @property
    def journal_matches(self) -> tuple[str, ...]:
        """``_SYSTEMD_UNIT=`` matches for :attr:`units` (journald's trusted field: no process can forge it)."""
        return tuple(f"_SYSTEMD_UNIT={u}" for u in self.units)

    def prefilter(self) -> Callable[[str], bool]:
        """The literal test as one fast callable."""
        lits = self.literals
        if not lits:
            return lambda s: True
        if len(lits) == 1:
            a = lits[0]
            return lambda s: a in s
        if len(lits) == 2:
            a, b = lits
            return lambda s: a in s or b in s
        if len(lits) == 3:
            a, b, c = lits
            return lambda s: a in s or b in s or c in s
        return lambda s: any(x in s for x in lits)


# -- addresses -------------------------------------------------------------------

@functools.lru_cache(maxsize=65536)
def normalize_host(text: str) -> str | None:
    """The address in ``text`` (brackets, zone index and ::ffff: mapping handled), or None."""
    t = text.strip().strip("[]")
    if "%" in t:
        t = t.split("%", 1)[0]
    try:
        addr = ipaddress.ip_address(t)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def _is_loopback(text: str) -> bool:
    host = normalize_host(text)
    return host is not None and ipaddress.ip_address(host).is_loopback


# -- built-in filters ------------------------------------------------------------

_ADDR = r"[0-9A-Fa-f:.]+"
# an address that ends where the address ends: "from 127.0.0.1." is 127.0.0.1 followed by a full stop
_IP = r"(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*[0-9A-Fa-f])"

# warning: unknown[203.0.113.5]: SASL LOGIN authentication failed: UGFzc3dvcmQ6
# (smtpd_client_port_logging adds ":port" after the bracket)
_POSTFIX = re.compile(
    r"warning: [^\s\[\]]+\[(" + _ADDR + r")\](?::\d+)?: SASL [-\w]+ authentication failed"
    r"(?::(?! Connection lost to authentication server| Invalid authentication mechanism)|\s*$)")


# The warning must start Postfix's own message: right after the syslog tag ("postfix/smtpd[PID]: ",
# the first "]: " of the line; rsyslog's "message repeated N times: [ " may come between), never
# further on, where a reject line quotes the client's MAIL FROM or HELO and "improper command
# pipelining" quotes its input: a client could write the whole warning there, with any address.
_POSTFIX_REPEAT = re.compile(r"message repeated \d+ times: \[ ")


def _postfix(line: str) -> str | None:
    tag = line.find("]: ")
    start = 0 if line.startswith("warning: ") else tag + 3 if tag >= 0 else -1
    if start < 0:
        return None
    repeat = _POSTFIX_REPEAT.match(line, start)
    m = _POSTFIX.match(line, repeat.end() if repeat else start)
    return m.group(1) if m else None


# imapd-ssl: LOGIN FAILED, user=a@example.com, ip=[::ffff:203.0.113.5]   (newer: , port=[54321])
# The user name comes first and is the client's: take the last ip=[...], anchored at the end.
_COURIER = re.compile(r"LOGIN FAILED, .*ip=\[([^\]]*)\](?:, port=\[\d+\])?\s*$")


def _courier(line: str) -> str | None:
    m = _COURIER.search(line)
    return m.group(1) if m else None


# errors.log (Roundcube >= 1.4):
#   [21-Nov-2026 19:32:28 +0100]: <1a2b3c4d> IMAP Error: Login failed for admin against localhost
#   from 203.0.113.5(X-Forwarded-For: 198.51.100.7). AUTHENTICATE PLAIN: A0002 NO ... in
#   /var/www/roundcube/program/lib/Roundcube/rcube_imap.php on line 211 (POST /?_task=login&_action=login)
# userlogins.log (log_logins = true):
#   [21-Nov-2026 19:32:28 +0100]: <1a2b3c4d> Failed login for admin from 203.0.113.5 in session x (error: 0)
# older: "FAILED login for user from ADDR", "IMAP Error: Login failed for user from ADDR".
# Roundcube writes "Login failed for USER[ against HOST] from ADDR[(headers)]. ERROR": the user name before
# its "from" is the client's, and the IMAP server's reply after it (ERROR) may quote the client's text too
# ("NO Login failed. user=admin from 127.0.0.1").  Roundcube's own "from" is the one its own words follow:
# ". AUTHENTICATE <mech>: " or ". LOGIN: " (rcube_imap_generic's error text), else the end of the message,
# " in session " or " in FILE on line N".  Two different addresses in such positions: ambiguous, no address.
_RC_FROM = re.compile(r" from (" + _IP + r")(?:\(([^()]*)\))?")
_RC_IMAP = re.compile(r"\. (?:AUTHENTICATE [-\w]+|LOGIN): ")
_RC_END = re.compile(r"\.?\s*$|\.? in session |\.? in \S+ on line \d+ \(|\. (?:Could not connect to |Empty startup)")
_RC_XREAL = re.compile(r"X-Real-IP: ?([^,\s]+)")
_RC_XFF = re.compile(r"X-Forwarded-For: ?([^()]*?)(?:,X-|$)")


def _roundcube_client(remote: str, forwarded: str | None) -> str:
    # behind a local reverse proxy REMOTE_ADDR is loopback: the proxy's own header names the
    # client (X-Real-IP, or the right-most X-Forwarded-For entry: the one the proxy appended).
    # From any other peer these headers are the client's own claims and are ignored.
    if forwarded and _is_loopback(remote):
        m = _RC_XREAL.search(forwarded)
        if m and normalize_host(m.group(1)):
            return m.group(1)
        m = _RC_XFF.search(forwarded)
        if m:
            entries = [e.strip() for e in m.group(1).split(",") if e.strip()]
            if entries and normalize_host(entries[-1]):
                return entries[-1]
    return remote


def _roundcube(line: str) -> str | None:
    imap: list[re.Match[str]] = []
    other: list[re.Match[str]] = []
    for m in _RC_FROM.finditer(line):
        end = m.end()
        if _RC_IMAP.match(line, end):
            imap.append(m)
        elif _RC_END.match(line, end):
            other.append(m)
    chosen = imap or other
    if not chosen:
        return None
    end = chosen[-1].end()
    if not imap and (line.startswith(". Could not connect to ", end) or line.startswith(". Empty startup", end)):
        return None  # the IMAP server was down: nobody's password was wrong
    found = {_roundcube_client(m.group(1), m.group(2)) for m in chosen}
    if len(found) > 1:
        return NOT_ADDRESS  # the client's text imitates Roundcube's: no address to trust
    return found.pop()


# Apache 2.4: [Sat Nov 21 19:32:28.123456 2026] [core:error] [pid 1234:tid 5678] [client 203.0.113.5:51234]
#             AH00128: File does not exist: /var/www/html/wp-login.php
# Apache 2.2: [Sat Nov 21 19:32:28 2026] [error] [client 203.0.113.5] File does not exist: /var/www/phpMyAdmin
# Every line of an error.log has "[client ": plain string tests first, a regex only on the refused path.
_APACHE_EXPLOITS = ("() {", "ignoring function definition attempt", "error importing function definition",
                    "invalid URI path")
# AH00126 (core, 2.4): a request path that climbs above the root ("../" past "/", or encoded)
_APACHE_INVALID_URI = "Invalid URI in request "
# Apache 2.2 mod_cgi: "script '/var/www/wp-login.php' not found or unable to stat"
_APACHE_SCRIPT22 = re.compile(r"script '([^']*)' not found or unable to stat")
_APACHE_REFUSALS = ("File does not exist: ", "client denied by server configuration: ",
                    "script not found or unable to stat: ", "Cannot serve directory ")
_APACHE_ADMIN = re.compile(
    r"/(?:wp-login\.php|wp-admin|xmlrpc\.php|phpmyadmin[\w.-]*|pma|myadmin|mysql|mysqldumper|phppgadmin|adminer"
    r"|admin(?:istrat(?:or|ion))?|cgi-bin|cgi-sys|cgi-mod|ftpmanager|trackback|setup\.php|manager/html"
    r"|\.env|\.git|vendor/phpunit|boaform|hnap1)(?![\w-])|\.sql$", re.I)


def _apache(line: str) -> str | None:
    # 2.4 behind mod_remoteip: "[client ADDR:port]" is the client the module resolved; lines that
    # carry only the connection's peer write "[remote ADDR:port]"
    # carry only the connection's peer write "[remote ADDR:port]".  Both sit in the prefix, before
    # the message (which quotes the client's request): the first of them is Apache's.
    i = line.find("[client ")
    r = line.find("[remote ", 0, i if i >= 0 else len(line))
    if r >= 0:
        i = r
    elif i < 0:
        return None
    j = line.find("] ", i)
    if j < 0:
        return None
    if r >= 0 and line.startswith("[client ", j + 2):  # "[remote PEER] [client CLIENT]": the client
        i, j = j + 2, line.find("] ", j + 2)
        if j < 0:
            return None
    client, message = line[i + 8:j], line[j + 2:]
    if any(x in message for x in _APACHE_EXPLOITS) or ("%2" in message and "/.%2e/" in message.lower()):
        pass
    elif _APACHE_INVALID_URI in message:
        uri = message[message.find(_APACHE_INVALID_URI) + len(_APACHE_INVALID_URI):]
        if "/.." not in uri and "%2e" not in uri.lower():
            return None
    else:
        for refusal in _APACHE_REFUSALS:
            k = message.find(refusal)
            if k >= 0:
                path = message[k + len(refusal):]
                break
        else:
            m = _APACHE_SCRIPT22.search(message)
            if m is None:
                return None
            path = m.group(1)
        # the referer is the client's to choose; only the path Apache refused counts
        path = path.split(", referer: ", 1)[0].rstrip()
        if _APACHE_ADMIN.search(path) is None:
            return None
    # 2.4 always appends ":port", to IPv6 too (without brackets); 2.2 writes the address alone
    head, _, port = client.rpartition(":")
    if head and port.isdigit() and normalize_host(head) is not None \
            and (normalize_host(client) is None or "] [pid " in line):
        return head
    return client


# proftpd[8516] ftp.example.com (host.example.net[203.0.113.5]): USER bob (Login failed): Incorrect password.
# proftpd[8426] ftp.example.com (host[203.0.113.5]): USER x: no such user found from host [203.0.113.5] to ...
# proftpd[8477] ftp.example.com (host[203.0.113.5]): SECURITY VIOLATION: root login attempted.
# The session prefix "(name[addr])" is ProFTPD's; the user name after it is the client's.
_PROFTPD = re.compile(r"proftpd\[\d+\]:? \S+ \([^\s\[\]()]*\[(" + _ADDR + r")\]\)(?::| -) (.*)$")


def _proftpd(line: str) -> str | None:
    m = _PROFTPD.search(line)
    if m is None:
        return None
    msg = m.group(2)
    if msg.startswith("USER "):
        if "(Login failed): Incorrect password" in msg or ": no such user found from " in msg:
            return m.group(1)
        return None
    if msg.startswith("SECURITY VIOLATION: ") and "oot login attempted" in msg:
        return m.group(1)
    return None


# sshd[1234]: Failed password for root from 203.0.113.5 port 51234 ssh2
# sshd[1234]: Failed password for invalid user admin from 2001:db8::5 port 51234 ssh2
# sshd[1234]: Invalid user admin from 203.0.113.5 port 51234
# (OpenSSH >= 9.8 logs as sshd-session).  OpenSSH's auth_log() writes
# "Failed %s for %s%.100s from %.200s port %d ssh2%s%s": the user name comes first and is the
# client's, and ": <extra>" after "ssh2" may hold the client's text too (a key comment, a GSSAPI
# principal).  A user name cannot hold ':' (auth2.c cuts the login style off there), so the first
# " ssh2: " ends sshd's own part; within it the last "from ADDR port N" is sshd's.
_SSHD_START = re.compile(r"Failed (?:password|keyboard-interactive/pam) for (?:invalid user )?|Invalid user ")
_SSHD_FROM = re.compile(r" from (\S+?)(?: port \d+)?(?: ssh\d?)?(?: \[preauth\])?\s*$")


# The failure must start sshd's own message, right after its syslog tag ("sshd[PID]: ", OpenSSH
# >= 9.8 "sshd-session[PID]: "; the leftmost one is sshd's, the client's text comes after it), or
# the line (an unwrapped "message repeated" line).  Further on it is the client's text: sshd logs a
# client's SSH_MSG_DISCONNECT text ("Received disconnect from A port P:11: TEXT [preauth]"), where
# a client could write "Failed password for x from ANY-ADDRESS port 22 ssh2".
_SSHD_TAG = re.compile(r"(?:^|\s)sshd[\w-]*(?:\[\d+\])?: ")


def _sshd(line: str) -> str | None:
    m = _SSHD_START.match(line)
    if m is None:
        tag = _SSHD_TAG.search(line)
        m = _SSHD_START.match(line, tag.end()) if tag else None
    if m is None:
        return None
    start = m.end()
    cut = line.find(" ssh2: ", start)
    rest = line[start:cut + 5] if cut >= 0 else line[start:]
    f = _SSHD_FROM.search(rest)
    return f.group(1) if f else None


# dovecot: imap-login: Aborted login (auth failed, 1 attempts in 2 secs): user=<admin>, method=PLAIN,
#   rip=203.0.113.5, lip=192.0.2.10, TLS, session=<k2Jx>
# dovecot: pop3-login: Disconnected (auth failed, 3 attempts in 12 secs): user=<a>, method=PLAIN, rip=..., ...
# dovecot: imap-login: Login aborted: Connection closed (auth failed, 1 attempts in 2 secs) (auth_failed):
#   user=<a>, method=PLAIN, rip=203.0.113.5, lip=..., session=<..>          (Dovecot >= 2.3.21)
# login_log_format_elements puts user=<%u> (the client's) before rip=%r; what follows rip (lip, mpid, TLS,
# session) is Dovecot's own: the last ", rip=ADDR," is Dovecot's.  The auth process's own lines
# ("auth: pam(user,ADDR): ... failed") describe the same attempts and are not counted twice.
_DOVECOT = re.compile(r"-login: (?:Aborted login|Disconnected|Login aborted)\b[^()]*\(auth failed, (\d+) attempts?")
_DOVECOT_RIP = re.compile(r", rip=(" + _IP + r")(?=,|\s*$)")


def _dovecot(line: str) -> str | None:
    m = _DOVECOT.search(line)
    if m is None:
        return None
    rips = _DOVECOT_RIP.findall(line, m.end())
    return rips[-1] if rips else NOT_ADDRESS


def _dovecot_attempts(line: str) -> int:
    # one connection may try several passwords (Dovecot's "3 attempts"): each counts, as each sshd line does
    m = _DOVECOT.search(line)
    return min(int(m.group(1)), 100) if m else 1


# Exim mainlog (log_selector defaults; +incoming_interface adds I=[..]:port):
# 2026-11-21 10:00:00 dovecot_plain authenticator failed for (ylmf-pc) [203.0.113.5]:54321:
#   535 Incorrect authentication data (set_id=admin)
# 2026-11-21 10:00:00 login authenticator failed for host.example.net (helo) [2001:db8::5]:4000
#   I=[192.0.2.10]:587: 535 Incorrect authentication data
# Exim writes "[ADDR]:port" after the reverse-DNS name and "(HELO)", both the client's; a HELO
# holds no space (Exim refuses one), so "(...) " ends it and the next "[ADDR]" is Exim's.
_EXIM = re.compile(r" authenticator failed for (?:[^\s()\[\]]+ )?(?:\([^ ]*\) )?\[(" + _IP + r")\](?::\d+)?"
                   r"(?: I=\[[^\]\s]*\](?::\d+)?)?: 535 Incorrect authentication data")


# The authenticator's name must start Exim's own message: after an optional syslog prefix
# ("Nov 21 15:01:00 host exim[PID]: "), Exim's timestamp (log_timezone adds the offset) and pid
# (+pid).  Further on a line may quote the client's text (a reject line's F=<"...">, an invalid EHLO
# argument, a syntax error's input), where a client could write the whole failure with any address.
_EXIM_HEAD = re.compile(
    r"(?:(?:[A-Z][a-z]{2} +\d{1,2} \d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT[\d:.]+(?:Z|[-+]\d\d:?\d\d)?) \S+ "
    r"[^\s\[\]:]+(?:\[\d+\])?: )?"
    r"(?:\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d{3})?(?: [-+]\d{4})? )?(?:\[\d+\] )?"
    r"[^\s=<>\"\[\]()]+(?=" + _EXIM.pattern + ")")


def _exim(line: str) -> str | None:
    head = _EXIM_HEAD.match(line)
    if head is None:
        return None
    m = _EXIM.match(line, head.end())
    return m.group(1) if m else None


BUILTIN: dict[str, Filter] = {f.name: f for f in (
    Filter("postfix-sasl", ("authentication failed",), _postfix,
           "Postfix smtpd: SASL authentication failed (mail.log)", ("postfix@-.service", "postfix.service")),
    Filter("courier", ("LOGIN FAILED, ",), _courier,
           "Courier imapd/pop3d (and -ssl): LOGIN FAILED (mail.log)",
           ("courier-imap.service", "courier-imap-ssl.service", "courier-pop.service", "courier-pop-ssl.service")),
    Filter("roundcube", ("ogin failed for ", "ailed login for ", "FAILED login for "), _roundcube,
           "Roundcube errors.log / userlogins.log: Login failed"),
    Filter("apache-probe", ("[client ", "[remote "), _apache,
           "Apache error.log: exploit probes (shellshock, path traversal) and admin-page scans"),
    Filter("proftpd", ("proftpd[",), _proftpd,
           "ProFTPD: Incorrect password, no such user found, root login attempted", ("proftpd.service",)),
    Filter("sshd", ("Failed ", "Invalid user "), _sshd,
           "OpenSSH: Failed password (also for invalid users), Invalid user", ("ssh.service", "sshd.service")),
    Filter("dovecot", ("(auth failed, ",), _dovecot,
           "Dovecot imap-login/pop3-login: Aborted login / Disconnected (auth failed ...), rip=",
           ("dovecot.service",), attempts=_dovecot_attempts),
    Filter("exim", ("authenticator failed for ",), _exim,
           "Exim: authenticator failed for ... 535 Incorrect authentication data (mainlog)",
           ("exim4.service", "exim.service")),
)}


def builtin_names() -> list[str]:
    """The names of the built-in filters, sorted."""
    return sorted(BUILTIN)


def user_filter(name: str, regex: str, literal: str | None = None) -> Filter:
    """A filter from a config regex with a named ``host`` group (and optionally ``time``).

    Raises :class:`FilterError` naming what is wrong.
    """
    try:
        pattern = re.compile(regex)
    except re.error as e:
        raise FilterError(f"invalid regex: {e}") from None
    if "host" not in pattern.groupindex:
        raise FilterError("the regex needs a named group (?P<host>...)")
    search = pattern.search

    def extract(line: str) -> str | None:
        m = search(line)
        if m is None:
            return None
        return m.group("host") or NOT_ADDRESS

    when = None
    if "time" in pattern.groupindex:
        def when(line: str) -> str | None:
            m = search(line)
            return m.group("time") if m else None
    return Filter(name, (literal,) if literal else (), extract, "user filter", time=when)


def get_filter(name: str, user: Iterable[Filter] = ()) -> Filter:
    """The user filter or built-in filter called ``name``; :class:`FilterError` lists the known ones."""
    users = list(user)
    for f in users:
        if f.name == name:
            return f
    found = BUILTIN.get(name)
    if found is None:
        mine = sorted(u.name for u in users)
        raise FilterError(f"unknown filter {name!r} (built-in: {', '.join(builtin_names())}"
                          + (f"; from the config: {', '.join(mine)})" if mine else ")"))
    return found


# -- the common line path ----------------------------------------------------------

# rsyslog's reduction of repeated lines; it starts the message (right after the syslog tag, the first
# "]: " of the line, or the line itself): found further on it is the client's text (a user name, a
# quoted sender), which would otherwise choose the text the filter reads and multiply its count.
_REPEATED = re.compile(r"message repeated (\d+) times: \[ ?(.*?)\]?\s*$")


class LineMatcher:
    """One filter plus a time parser: ``match(line, now)`` → Failure, NOT_ADDRESS or None.

    ``counts`` holds ``not-address`` (a failure line whose host is not an
    address, e.g. a name logged with sshd's ``UseDNS yes``) and ``no-time``
    (the fallback time was used).
    """

    def __init__(self, filt: Filter, parser: TimeParser | None = None) -> None:
        self.filter = filt
        self.parser = parser or TimeParser()
        self.prefilter = filt.prefilter()
        self.not_address = 0
        self.no_time = 0

    def match(self, line: str, now: float, fallback: float | None = None) -> Failure | None | str:
        """Failure for a failure line, :data:`NOT_ADDRESS` for one without a usable address, else None.

        ``now`` resolves syslog's missing year; ``fallback`` (default: ``now``)
        is the time of a line without a readable timestamp.
        """
        if not self.prefilter(line):
            return None
        filt = self.filter
        text, count = line, 1
        if "message repeated " in line:
            tag = line.find("]: ")
            m = _REPEATED.match(line, tag + 3 if tag >= 0 else 0)
            if m:
                count, text = int(m.group(1)), m.group(2)
        raw = filt.extract(text)
        if raw is None:
            return None
        host = normalize_host(raw) if raw is not NOT_ADDRESS else None
        if host is None:
            self.not_address += 1
            return NOT_ADDRESS
        if filt.attempts is not None:
            count *= max(1, filt.attempts(text))
        stamp = None
        if filt.time is not None:
            t_text = filt.time(line)
            if t_text:
                stamp = self.parser.parse(t_text, now)
        if stamp is None:
            stamp = self.parser.parse(line, now)
        if stamp is None:
            self.no_time += 1
            stamp = now if fallback is None else fallback
        return Failure(stamp, host, filt.name, line, count)
