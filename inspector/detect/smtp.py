"""SMTP over the reassembled client stream, read the way Postfix reads it.

Only the client→server direction is seen, so the session state is what the
server *must* have done with each command, following RFC 5321 and Postfix 3.7
(``smtpd``), checked against a real Postfix by ``tests/e2e/test_differential.py``:

* Lines end at LF; trailing CRs are stripped (Postfix's ``smtp_get``); a command
  line longer than ``line_length_limit`` (2048) is cut there, the rest skipped.
* A command's words are what Postfix's tokenizer makes of it (``smtpd_token.c``): they are
  separated by any ``ISSPACE`` byte (space, tab, VT, FF, CR), and a NUL ends the line as a C
  string: ``RCPT<VT>TO:<...>`` is a RCPT and ``DATA<FF>`` or ``DATA<NUL>x`` a DATA.
* ``MAIL FROM:`` opens a transaction unless one is open (a nested MAIL is refused,
  503) or a BDAT transfer is in progress; ``RCPT TO:`` counts only inside a
  transaction (RCPT before MAIL is refused, 503), and ``RCPT TO:<>`` and broken paths
  are refused (501); unknown ESMTP parameters are refused (555).
* ``DATA`` (no argument) is accepted only with an accepted recipient and no BDAT in
  the transaction; then the body runs to the end-of-data line, which is a line that
  is ``.`` once its trailing CRs are stripped and LF ends it: ``<CRLF>.<CRLF>``, and
  also the forms Postfix 3.7 accepts by default, ``<LF>.<LF>``, ``<LF>.<CRLF>``,
  ``<CRLF>.<CR><CR><LF>`` (``smtpd_forbid_bare_newline = no``).  After it, commands
  again: every transaction of the session is read.
* ``BDAT n [LAST]``: the next n bytes are a chunk, skipped whether the command is
  accepted or refused (RFC 3030 §2); a LAST chunk ends the transaction.  A malformed
  BDAT makes Postfix hang up (521).
* ``RSET`` and ``HELO``/``EHLO`` with an argument end the transaction; ``QUIT``
  ends the session; ``STARTTLS`` ends the inspection once a TLS handshake follows.
* Envelope addresses go through Postfix's default rewriting before their domain
  is looked up (:func:`routed_domains`: ``allow_percent_hack``, ``swap_bangpath``,
  ``resolve_dequoted``), and domains through IDNA 2008 / UTS #46.

What the client side cannot tell (a recipient refused by a policy, an unknown
user) the server's replies tell, where they are seen (:meth:`SmtpSession.server`:
a DATA starts a body only at the server's own 354, read only from line starts the
server's own LF proved).  Without them a DATA the model accepts is taken as
accepted.  When it is unsure of a transaction's state (a command whose acceptance
depends on configuration), envelope addresses are still checked and DATA is read
as a command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import idna

from .domains import DomainMatcher, normalize_domain, to_ascii

__all__ = ["SmtpSettings", "SmtpSession", "envelope_domain", "envelope_address", "routed_domains",
           "COMMAND", "BODY", "CHUNK", "OVER", "TLS_PENDING", "PENDING"]

# PENDING: a DATA the model accepts was read while the server's replies are watched; the next bytes are
# body only once the server's own 354 says so (see SmtpSession.server)
COMMAND, BODY, CHUNK, OVER, TLS_PENDING, PENDING = 0, 1, 2, 3, 4, 5
_TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello

# "MAIL FROM:" / "RCPT TO:" as Postfix tokenises them: the colon belongs to FROM/TO
# the bytes Postfix's tokenizer separates words with (smtpd_token.c: ISSPACE; LF ends the line)
_WS = b" \t\x0b\x0c\r"
_SEPARATORS = frozenset({b"", b" ", b"\t", b"\x0b", b"\x0c", b"\r"})  # what may follow a verb ("": nothing)
_ENVELOPE = re.compile(rb"(MAIL[ \t\x0b\x0c\r]+FROM|RCPT[ \t\x0b\x0c\r]+TO):(.*)", re.I | re.S)
# the common case, decided without the general parser: a plain local part (nothing Postfix rewrites)
# at an ASCII domain, in brackets, no parameters
_SIMPLE = re.compile(rb"(?:MAIL[ \t\x0b\x0c\r]+FROM|RCPT[ \t\x0b\x0c\r]+TO):[ \t\x0b\x0c\r]*"
                     rb"<([A-Za-z0-9._+=-]+@([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*))>", re.I)
_BDAT = re.compile(rb"BDAT[ \t\x0b\x0c\r]+(\d+)(?:[ \t\x0b\x0c\r]+(LAST))?", re.I)
_ESMTP = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:=\S*)?")
# every command smtpd knows (smtpd.c, smtpd_cmd_table); others draw "502 not recognized"
_VERBS = frozenset({b"HELO", b"EHLO", b"XCLIENT", b"XFORWARD", b"STARTTLS", b"AUTH", b"MAIL", b"RCPT",
                    b"DATA", b"BDAT", b"RSET", b"NOOP", b"VRFY", b"ETRN", b"QUIT"})
# the first four letters of the verbs that change the session's state
_VERBS4 = frozenset({b"MAIL", b"RCPT", b"DATA", b"BDAT", b"RSET", b"HELO", b"EHLO", b"STAR", b"QUIT"})
# transaction state: none, maybe open (the parser cannot tell), surely open
_NONE, _MAYBE, _OPEN = 0, 1, 2
# the server's reply to a DATA whose every recipient it refused (Postfix smtpd.c, data_cmd and bdat_cmd;
# no other command sends it): the one refusal of a DATA the engine can attribute (see SmtpSession.server)
_NO_VALID_RECIPIENTS = b"554 5.5.1 Error: no valid recipients"


@dataclass(frozen=True)
class SmtpSettings:
    """How the protected MTA reads SMTP (the ``[smtp]`` section); defaults are Postfix 3.7's.

    ``allow_percent_hack``, ``swap_bangpath``, ``resolve_dequoted``: Postfix parameters of the
    same names (address rewriting, ``postconf(5)``); ``line_length_limit``: Postfix's
    ``line_length_limit`` (bytes); ``message_size_limit``: Postfix's (bytes; a larger
    ``MAIL ... SIZE=`` is refused); ``hard_error_limit``: ``smtpd_hard_error_limit``;
    ``local_domains``: the server's own domains (Postfix's ``mydestination``, the domains
    whose address the rewriting strips), ``"*"`` = any domain may be (the default: the wire
    cannot tell, so every domain an address may be rewritten to is looked up); address
    literals (``[192.0.2.1]``) always count as possibly the server's own.
    """

    allow_percent_hack: bool = True
    swap_bangpath: bool = True
    resolve_dequoted: bool = True
    line_length_limit: int = 2048
    message_size_limit: int = 10240000
    hard_error_limit: int = 20
    local_domains: tuple[str, ...] = ("*",)


DEFAULT_SETTINGS = SmtpSettings()

SMTP_KEYS: dict[str, type] = {"allow_percent_hack": bool, "swap_bangpath": bool, "resolve_dequoted": bool,
                              "line_length_limit": int, "message_size_limit": int, "hard_error_limit": int,
                              "local_domains": list}


def parse_smtp_section(table: dict[str, object]) -> SmtpSettings:
    """The ``[smtp]`` table as :class:`SmtpSettings`; raises ``KeyError``/``ValueError`` naming the key."""
    values: dict[str, object] = {}
    for key, value in table.items():
        kind = SMTP_KEYS.get(key)
        if kind is None:
            raise KeyError(key)
        if kind is list:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"{key}: must be a list of domain names (or [\"*\"])")
            try:
                values[key] = tuple(v if v == "*" else to_ascii(v.rstrip(".")) for v in value)
            except (idna.IDNAError, UnicodeError) as e:
                raise ValueError(f"{key}: invalid domain ({e})") from None
            continue
        if kind is bool and not isinstance(value, bool):
            raise ValueError(f"{key}: must be true or false")
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"{key}: must be an integer")
        if kind is int and not 1 <= value <= 1 << 40:  # type: ignore[operator]
            raise ValueError(f"{key}: must be between 1 and {1 << 40}")
        values[key] = value
    return SmtpSettings(**values)  # type: ignore[arg-type]


# ---- addresses ---------------------------------------------------------------------------------------------

def envelope_address(path: str) -> str | None:
    """The mailbox of an SMTP ``Reverse-path`` / ``Forward-path`` argument, or None.

    Accepts what Postfix accepts: ``<a@b>``, ``a@b`` without brackets, spaces after
    the colon, source routes (``<@relay,@relay2:a@b>``: the mailbox counts), quoted
    local parts, RFC 5322 comments, ESMTP parameters after the path.  ``<>`` gives
    ``""``.
    """
    s = path.strip()
    if "(" in s:
        s = _strip_comments(s)
    if s.startswith("<"):
        s = s[1:]
        close = _close_bracket(s)
        s = s[:close].strip()
    else:
        s = s.split(None, 1)[0] if s else s
    if s.startswith("@"):
        colon = s.find(":")
        if colon < 0:
            return None
        s = s[colon + 1:]
    return s


def envelope_domain(path: str) -> str | None:
    """The domain of an envelope path as written (after the last ``@`` outside quotes), normalised."""
    addr = envelope_address(path)
    if not addr:
        return None
    at = _last_at(addr)
    if at < 0:
        return None
    return normalize_domain(addr[at + 1:])


def routed_domains(address: str, settings: SmtpSettings = DEFAULT_SETTINGS, limit: int = 8) -> list[str]:
    """Every domain Postfix may deliver ``address`` to, normalised; the written one first.

    Postfix's ``trivial-rewrite`` (``rewrite.c`` canonicalisation, ``resolve.c``):
    an address without ``@`` becomes ``user@site`` from ``site!user``
    (``swap_bangpath``; the first ``!``) or from ``user%site`` (``allow_percent_hack``;
    the last ``%``); when the domain after ``@`` is the server's own (a name in
    ``mydestination``, its address literal), it is stripped and the local part is
    rewritten again, a quoted one unquoted first (``resolve_dequoted``).  Which domains
    are the server's own cannot be known from the wire, so every domain is taken as
    possibly local: the result holds each domain along the way, and a blocked one among
    them blocks.  ``v%example.com@[192.0.2.1]``, ``example.com!v@[192.0.2.1]`` and
    ``example.com!v`` all give ``example.com``.
    """
    out: list[str] = []
    addr = address
    local_domains = settings.local_domains
    anywhere = "*" in local_domains
    for _ in range(limit):
        at = _last_at(addr)
        if at >= 0:
            raw = addr[at + 1:].strip()
            d = normalize_domain(raw)
            if d is not None and d not in out:
                out.append(d)
            if not raw or not (raw[0] == "[" or anywhere or (d is not None and d in local_domains)):
                break  # a remote domain: Postfix routes the address there as it is
            local = addr[:at]
            if settings.resolve_dequoted and len(local) >= 2 and local[0] == '"' and local[-1] == '"':
                local = local[1:-1].replace('\\"', '"')
            addr = local
            continue
        # site!user (swap_bangpath: the first "!") and user%site (allow_percent_hack: the last "%")
        if settings.swap_bangpath and "!" in addr:
            site, _, user = addr.partition("!")
        elif settings.allow_percent_hack and "%" in addr:
            user, _, site = addr.rpartition("%")
        else:
            break
        if not site or not user:
            break
        addr = f"{user}@{site}"
    return out


def _last_at(addr: str) -> int:
    """Index of the last ``@`` outside a quoted local part, or -1."""
    if addr.startswith('"'):
        i, n = 1, len(addr)
        while i < n and addr[i] != '"':
            i += 2 if addr[i] == "\\" else 1
        rest = addr.rfind("@", i + 1)
        return rest
    return addr.rfind("@")


def _strip_comments(s: str) -> str:
    """Remove RFC 5322 comments (nested parentheses outside quoted strings),
    as Postfix's address parser does: ``x@(c)example.com`` is ``x@example.com``."""
    out = []
    depth = 0
    quoted = False
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and (quoted or depth):
            if not depth:
                out.append(s[i:i + 2])
            i += 2
            continue
        if depth:
            depth += 1 if c == "(" else -1 if c == ")" else 0
        elif c == '"':
            quoted = not quoted
            out.append(c)
        elif c == "(" and not quoted:
            depth = 1
        else:
            out.append(c)
        i += 1
    return "".join(out)


def _close_bracket(s: str) -> int:
    """Index of the ``>`` ending a path, skipping quoted strings."""
    quoted = False
    i, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == ">" and not quoted:
            return i
        i += 1
    return n


_MAIL_PARAMS = {"BODY": ("7BIT", "8BITMIME"), "RET": ("FULL", "HDRS"), "SMTPUTF8": None, "ENVID": "*", "SIZE": "#"}
_RCPT_PARAMS = {"ORCPT": "*", "NOTIFY": "notify"}
_NOTIFY = {"SUCCESS", "FAILURE", "DELAY"}


def _surely_valid(arg: str, rcpt: bool, settings: SmtpSettings) -> bool:
    """Does Postfix surely accept this MAIL/RCPT argument's syntax (strict_rfc821_envelopes = no)?

    A subset of what it accepts: a path in ``<>`` (or a bare address), nothing but
    well-known ESMTP parameters with valid values after it.  False means "refused or
    not sure", never "accepted".
    """
    s = arg.strip()
    if not s:
        return False
    if s.startswith("<"):
        close = _close_bracket(s[1:])
        if close >= len(s) - 1:
            return False  # no closing bracket: 501
        path, rest = s[1:close + 1], s[close + 2:]
        if rest and not rest[0].isspace():
            return False  # "<a@b>x": 501
    else:
        path, _, rest = s.partition(" ")
    path = path.strip()
    if rcpt and not path:
        return False  # RCPT TO:<>: 501
    if any(c.isspace() for c in path if c not in '"') and '"' not in path:
        return False
    if path and not path.isascii():
        return False  # UTF-8 needs SMTPUTF8 on MAIL: not modelled, so not sure
    if path.endswith("@"):
        return False  # "v@": 501
    for param in rest.split():
        if not _ESMTP.fullmatch(param):
            return False
        name, _, value = param.partition("=")
        allowed = (_RCPT_PARAMS if rcpt else _MAIL_PARAMS).get(name.upper(), False)
        if allowed is False:
            return False  # 555 unsupported option
        if allowed == "#":
            if not value.isdigit() or int(value) > settings.message_size_limit:
                return False
        elif allowed == "notify":
            words = {w.upper() for w in value.split(",")}
            if not (words == {"NEVER"} or (words and words <= _NOTIFY)):
                return False
        elif (isinstance(allowed, tuple) and value.upper() not in allowed) or (allowed is None and value):
            return False
    return True


# ---- the session ----------------------------------------------------------------------------------------

class SmtpSession:
    """Per-flow SMTP state; :meth:`feed` returns the first blocked address as ``(rule, path)``.

    ``mode`` is COMMAND, BODY (a DATA body), CHUNK (a BDAT chunk), TLS_PENDING, OVER or PENDING
    (a DATA waits for the server's verdict, read in its replies: :meth:`server`).
    For the kernel's in-body filter (``decide = "early"``): :attr:`unsure` is
    set when a body resumed after a gap (unseen bytes) at a ``.`` line that may or may
    not have been the end of data; see :meth:`skip`.

    ``replies``: the server's replies are watched (the kernel queues them while :attr:`watching`:
    the reply mark): a DATA then starts a body only at the server's own ``354``, so a DATA the
    server refused for policy (an unknown user, relay denied: invisible on the client side) is
    never taken for the start of a body.  Without it a DATA the model accepts is taken as accepted.
    """

    __slots__ = ("mode", "partial", "remaining", "txn", "rcpts", "bdat", "settings", "at_line_start",
                 "unsure", "errors", "chunk_last", "kernel_body", "resumed", "skipped",
                 "replies", "watching", "kernel_replies", "datas", "pipelined", "srv_next", "srv_sync",
                 "srv_head", "srv_cont", "bdats")

    def __init__(self, settings: SmtpSettings = DEFAULT_SETTINGS, midstream: bool = False,
                 replies: bool = False) -> None:
        """``midstream``: the flow was picked up after its start (an inspector restart): whether a
        transaction is open is unknown, so envelope addresses are checked and no DATA starts a body
        until the state is known (RSET, EHLO, an end of data).  ``replies``: the server's replies
        will be seen (see the class docstring and :meth:`server`)."""
        self.settings = settings
        self.mode = COMMAND
        self.partial = b""
        self.remaining = 0     # bytes left in a BDAT chunk
        self.chunk_last = False
        self.txn = _MAYBE if midstream else _NONE  # transaction: none, maybe open, open
        self.rcpts = 0         # recipients surely accepted in an open transaction
        self.bdat = False      # a BDAT transfer is in progress (MAIL/RCPT/DATA refused)
        self.at_line_start: bool | None = True  # body: the next byte starts a line (None: unknown)
        self.unsure = False    # commands after a "." line that may have been body (see skip())
        self.errors = 0        # lines Postfix refuses, while unsure
        self.kernel_body = False  # the engine told the kernel "in body" (ACCEPT_BODY) and not yet undone
        self.resumed = False   # commands resumed after a kernel-filtered body (ACCEPT_RESUME) at least once
        self.skipped: list[tuple[int, int]] | None = None  # body stretches skipped unseen (stream offsets)
        # the server's side (replies watched): see server()
        self.replies = replies
        self.watching = False  # a RCPT or DATA was read: the server's replies are wanted (the reply mark)
        self.kernel_replies = False  # the engine told the kernel to queue the server's packets (ACCEPT_REPLIES)
        self.datas = 0         # DATA commands the server may have accepted whose reply is not yet attributed
        self.pipelined = 0     # client bytes came after a pending DATA before its reply (RFC 2920 §3.1)
        self.bdats = False     # a BDAT was read: a "no valid recipients" may be its reply, not a DATA's
        self.srv_next: int | None = None  # the next server sequence number expected (None: none seen yet)
        self.srv_sync = False  # an LF was seen in contiguous server bytes: line starts are known
        self.srv_head = b""    # the start of the current server line (up to len(_NO_VALID_RECIPIENTS) bytes)
        self.srv_cont = False  # the last server line was a continuation ("250-..."): the next is no reply's first

    @property
    def finished(self) -> bool:
        return self.mode == OVER

    @property
    def in_message(self) -> bool:
        """Inside a message (DATA or BDAT): what follows is the body."""
        return self.mode == BODY or self.mode == CHUNK

    @property
    def in_body(self) -> bool:
        """In a DATA body with nothing pending that could end it: the next bytes that matter
        are an LF followed by ``.``, or a segment starting with ``.`` (the kernel filter)."""
        return self.mode == BODY and not self.partial

    @property
    def wants_replies(self) -> bool:
        """Should the kernel queue the server's packets now (the reply mark)?  From a RCPT (or a DATA)
        on until a body starts (at its ``354`` nothing before it is outstanding, and the server sends
        nothing until the body's end); after the end of data, from the next RCPT or DATA on: every
        DATA turns it on itself, so no DATA's reply goes unseen."""
        return self.watching and self.mode != BODY and self.mode != OVER

    def server(self, seq: int, payload: bytes) -> bool:
        """Server bytes: a segment at sequence number ``seq`` of the server's stream.  True when the
        session entered the body (a pending DATA's ``354``).

        **A server line counts only if it starts right after an LF seen in contiguous server bytes.**
        The start of the first segment seen is not a line start: a client that shrinks its receive
        window can make the server cut a reply anywhere, for instance inside a refused recipient's
        echoed address (``550 5.1.1 <"x354 End data..."@...>``), and its ACK numbers are its own.
        Only an LF the server sent proves a boundary (Postfix never echoes CR or LF).  A gap in the
        server's sequence numbers (bytes the engine did not see) loses that proof until the next LF;
        retransmitted bytes are skipped (the server's stream never changes).

        Replies come in the order of the commands (RFC 5321 §4.1.1, RFC 2920 §3.1).  Only a DATA gets
        ``354``, so a ``354`` answers the oldest DATA not yet answered (:attr:`datas`), and the
        session enters the body only when that DATA is the pending one (PENDING: no client byte came
        after it).  The one refusal attributed is Postfix's ``554 5.5.1 Error: no valid recipients``
        (sent only to DATA and BDAT: so not once a BDAT was read); any other refusal leaves the DATA
        unanswered, and while one is, no ``354`` starts a body (commands are read: it costs packets,
        never lets one pass).  A refusal taken for the wrong DATA would let a held-back 354 answer a
        later one, so only a reply no other command gets is attributed.
        """
        n = len(payload)
        nxt = self.srv_next
        end = (seq + n) & 0xFFFFFFFF
        if nxt is not None:
            ahead = (seq - nxt) & 0xFFFFFFFF
            if ahead >= 0x80000000:  # it starts before the next expected byte: only its new part counts
                back = (nxt - seq) & 0xFFFFFFFF
                if back >= n:
                    return False  # a retransmission: nothing new
                payload = payload[back:]
            elif ahead:
                self.srv_sync = False  # bytes went by unseen: the next line start is unknown
        else:
            self.srv_sync = False
        self.srv_next = end
        pos, n = 0, len(payload)
        if not self.srv_sync:
            lf = payload.find(b"\n")
            if lf < 0:
                return False
            self.srv_sync, self.srv_head, self.srv_cont = True, b"", False
            pos = lf + 1
        entered = False
        limit = len(_NO_VALID_RECIPIENTS)
        while pos < n:
            lf = payload.find(b"\n", pos)
            head = self.srv_head
            if len(head) < limit:
                head = self.srv_head = head + payload[pos:min(n if lf < 0 else lf, pos + limit - len(head))]
            if lf < 0:
                break
            pos = lf + 1
            self.srv_head = b""
            first = not self.srv_cont
            self.srv_cont = head[3:4] == b"-"
            if not first or len(head) < 4 or not head[:3].isdigit():
                continue
            if entered:
                # a reply after the 354 in the same segment: the server did not stay in a body
                entered = False
                self.mode = COMMAND
                self.watching = True
            if head[:3] == b"354" and head[3:4] in (b" ", b"-"):
                if not self.datas:
                    continue  # answers no DATA the engine read: ignored
                self.datas -= 1
                if not self.datas and self.mode == PENDING:
                    self.mode = BODY
                    self.at_line_start = True
                    self.watching = False  # until the next RCPT (see wants_replies)
                    entered = True
            elif head.rstrip(b"\r") == _NO_VALID_RECIPIENTS and self.datas and not self.bdats:
                self.datas -= 1
                if not self.datas and self.mode == PENDING:
                    self.mode = COMMAND
                    self.rcpts = 0  # the server accepted none: a DATA again draws the same refusal
        return entered

    def skip(self, gap: int) -> None:
        """``gap`` bytes of the stream went by unseen (the kernel kept body segments).

        Only valid in BODY: the next byte's line position is unknown, so a ``.`` line
        right after the gap may or may not end the data (see :meth:`feed`).
        """
        if gap > 0 and self.mode == BODY:
            self.partial = b""
            self.at_line_start = None

    def feed(self, data: bytes, domains: DomainMatcher) -> tuple[str, str] | None:
        """Consume stream bytes; return ``(rule, address)`` on a blocked domain."""
        if self.partial:
            data = self.partial + data
            self.partial = b""
        pos, n = 0, len(data)
        while pos < n:
            mode = self.mode
            if mode == PENDING:
                # client bytes after a DATA before its reply (RFC 2920 §3.1: a client waits for it):
                # commands are read; that DATA stays unanswered, so no body starts until it is
                self.mode = COMMAND
                self.pipelined += 1
                continue
            if mode == CHUNK:
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.mode = COMMAND
                    if self.chunk_last:
                        self._reset()
                continue
            if mode == OVER:
                return None
            if mode == TLS_PENDING:
                if data[pos] == _TLS_HANDSHAKE:
                    self.mode = OVER
                    return None
                self.mode = COMMAND  # STARTTLS was refused: the session goes on in plain text
                continue
            eol = data.find(b"\n", pos)
            if mode == BODY:
                start = self.at_line_start
                if start is False or data[pos:pos + 1] != b".":
                    # only a line that starts with "." can end the body: jump to the next "\n."
                    dot = data.find(b"\n.", pos)
                    if dot < 0:
                        self.at_line_start = data[n - 1:n] == b"\n"
                        return None
                    pos = dot + 1
                    self.at_line_start = start = True
                    eol = data.find(b"\n", pos)
                if eol < 0:
                    rest = data[pos:]
                    if start is not False and rest[:1] == b"." and rest.rstrip(b"\r") == b".":
                        self.partial = rest  # may still become the end-of-data line
                    else:
                        self.at_line_start = False
                    return None
                line = data[pos:eol]
                pos = eol + 1
                self.at_line_start = True
                if start is not False and len(line) <= self.settings.line_length_limit \
                        and line.rstrip(b"\r") == b".":
                    self._reset()
                    self.mode = COMMAND
                    if start is None:
                        self.unsure = True  # the "." may have been mid-line: see _unsure_line
                        self.errors = 0
                continue
            if eol < 0:
                self.partial = data[pos:]
                return None
            line = data[pos:eol][: self.settings.line_length_limit]
            if b"\0" in line:
                line = line[:line.index(b"\0")]  # the tokenizer reads a C string
            line = line.strip(_WS)
            pos = eol + 1
            if self.unsure and self._unsure_line(line):
                continue
            hit = self._command(line, domains)
            if hit is not None:
                return hit
            if self.mode == BODY:
                self.at_line_start = True
        return None

    def _unsure_line(self, line: bytes) -> bool:
        """After a gap and a ``.`` line: was that the end of data?  If this line is one
        Postfix would hang up on (a first character that is not a letter:
        ``smtpd_forbidden_commands``), or after ``smtpd_hard_error_limit`` refused lines,
        it was not: back to the body.  True when the line was taken as body."""
        first = line[:1]
        verb = line.split(None, 1)[0].upper() if line else b""
        if first and not first.isalpha() or verb in (b"GET", b"POST", b"CONNECT"):
            self._back_to_body()
            return True
        if verb not in _VERBS:
            self.errors += 1
            if self.errors >= self.settings.hard_error_limit:
                self._back_to_body()
            return True
        return False

    def _back_to_body(self) -> None:
        self.unsure = False
        self.mode = BODY
        self.watching = False
        self.at_line_start = True
        # the transaction the body belongs to is still open: its end-of-data resets it
        self.txn, self.rcpts = _OPEN, 1

    def _reset(self) -> None:
        self.txn = _NONE
        self.rcpts = 0
        self.bdat = False
        self.chunk_last = False

    def _command(self, line: bytes, domains: DomainMatcher) -> tuple[str, str] | None:
        verb = line[:4].upper()
        if verb not in _VERBS4:
            return None  # not a command that changes state (NOOP, VRFY, unknown...)
        sep = line[4:5]
        if sep in _SEPARATORS:
            has_arg = bool(line[5:].strip(_WS))
        elif verb == b"STAR" and line[:8].upper() == b"STARTTLS" and line[8:9] in _SEPARATORS:
            verb, has_arg = b"STARTTLS", bool(line[9:].strip(_WS))
        else:
            return None  # "MAILX ...", "DATAx": another verb, unknown to Postfix
        if verb == b"MAIL" or verb == b"RCPT":
            self.unsure = False
            if verb == b"RCPT" and self.replies:
                self.watching = True  # its reply's LF precedes a DATA's reply: see server()
            return self._envelope(verb, line, domains)
        if verb == b"DATA":
            accepted = not has_arg and self.txn == _OPEN and self.rcpts and not self.bdat
            if self.replies and not self.bdat:
                # every DATA the server reads as a command draws a reply that must be attributed (the model
                # may be wrong about a refusal: one that draws a 354 or "no valid recipients" is counted too)
                self.watching = True
                self.datas += 1
                if accepted:
                    self.mode = PENDING  # commands until the server's 354 (server())
                    self.unsure = False
            elif accepted:
                self.mode = BODY
                self.at_line_start = True
                self.unsure = False
        elif verb == b"BDAT":
            self.bdats = True
            m = _BDAT.fullmatch(line)
            if m is None:
                return None  # Postfix hangs up (521): nothing after it counts; read on as commands
            accepted = self.txn == _OPEN and self.rcpts > 0
            self.remaining = int(m.group(1))
            self.chunk_last = m.group(2) is not None
            if accepted:
                self.bdat = True
            else:
                # refused, its chunk skipped all the same; Postfix refuses MAIL/RCPT/DATA until RSET:
                # not modelled, so "maybe a transaction" (addresses checked, no body)
                self.txn = _MAYBE
                self.rcpts = 0
                self.chunk_last = False
            self.unsure = False
            if self.remaining:
                self.mode = CHUNK
            elif self.chunk_last:
                self._reset()
        elif verb == b"RSET":
            if not has_arg:
                self._reset()
        elif verb == b"HELO" or verb == b"EHLO":
            if has_arg:
                self._reset()
        elif verb == b"STARTTLS":
            if not has_arg:
                self.mode = TLS_PENDING
        elif verb == b"QUIT":
            self.mode = OVER
        return None

    def _envelope(self, verb: bytes, line: bytes, domains: DomainMatcher) -> tuple[str, str] | None:
        rcpt = verb == b"RCPT"
        if self.bdat:
            return None  # "MAIL/RCPT after BDAT": refused
        if rcpt and self.txn == _NONE:
            return None  # "need MAIL command": refused
        if not rcpt and self.txn == _OPEN:
            return None  # "nested MAIL command": refused
        simple = _SIMPLE.fullmatch(line)
        if simple is not None:  # the common <local@domain> with nothing to rewrite: surely accepted
            if rcpt:
                if self.txn == _OPEN:
                    self.rcpts += 1
            else:
                self.txn = _OPEN if self.txn == _NONE else _MAYBE
                self.rcpts = 0
            rule = domains.match(simple.group(2).decode("ascii").lower())
            if rule is not None:
                return rule, "<" + simple.group(1).decode("ascii") + ">"
            return None
        m = _ENVELOPE.fullmatch(line)
        if m is None:
            return None  # "Syntax: MAIL FROM:<address>": refused
        path = m.group(2).decode("utf-8", "replace")
        sure = _surely_valid(path, rcpt, self.settings)
        if rcpt:
            if sure and self.txn == _OPEN:
                self.rcpts += 1
        else:
            self.txn = _OPEN if sure and self.txn == _NONE else _MAYBE
            self.rcpts = 0
        addr = envelope_address(path)
        if not addr:
            return None
        for domain in routed_domains(addr, self.settings):
            rule = domains.match(domain)
            if rule is not None:
                return rule, _path_only(path)
        return None


def _path_only(arg: str) -> str:
    """The path of a MAIL/RCPT argument without its ESMTP parameters (for reports)."""
    s = arg.strip()
    if s.startswith("<"):
        return s[:_close_bracket(s[1:]) + 2]
    return s.split(None, 1)[0] if s else s
