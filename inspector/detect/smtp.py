"""SMTP envelope parser over the reassembled client stream.

Only client command lines are read.  ``MAIL FROM`` and ``RCPT TO`` give an
address whose domain is looked up; message bodies (``DATA`` up to the lone
``.`` line, ``BDAT`` chunks) are skipped; ``QUIT`` ends the inspection, and so
does ``STARTTLS`` once the client starts a TLS handshake (a refused STARTTLS
leaves the session in plain text, and so does the parser).  Lines may arrive
in any split, several per segment (pipelining).

From the client side alone the parser cannot see the server's replies, so it
follows what the server must do: a ``DATA`` before any ``RCPT`` is refused
(RFC 5321 §3.3), and what follows it is read as commands.
"""

from __future__ import annotations

import re

from .domains import DomainMatcher, normalize_domain

_ENVELOPE = re.compile(rb"(MAIL\s+FROM|RCPT\s+TO)\s*:(.*)", re.I | re.S)
_BDAT = re.compile(rb"BDAT\s+(\d+)", re.I)

COMMAND, BODY, CHUNK, OVER, TLS_PENDING = 0, 1, 2, 3, 4
_TLS_HANDSHAKE = 0x16  # the first byte of a TLS record carrying a ClientHello


def envelope_domain(path: str) -> str | None:
    """The domain of an SMTP ``Reverse-path`` / ``Forward-path`` argument.

    Accepts what lenient MTAs accept: ``<a@b>``, ``a@b`` without brackets,
    spaces after the colon, source routes (``<@relay,@relay2:a@b>``: the
    mailbox's domain counts), quoted local parts (``"x@y"@b``) and ESMTP
    parameters after the path.  The domain is what follows the last ``@``
    outside quotes, as Postfix and Exim parse it.
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
    if s.startswith('"'):
        i, n = 1, len(s)
        while i < n and s[i] != '"':
            i += 2 if s[i] == "\\" else 1
        s = s[i + 1:]
    at = s.rfind("@")
    if at < 0:
        return None
    return normalize_domain(s[at + 1:])


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


class SmtpSession:
    """Per-flow SMTP command state; :meth:`feed` returns the first blocked address."""

    __slots__ = ("mode", "partial", "remaining", "recipients")

    def __init__(self) -> None:
        self.mode = COMMAND
        self.partial = b""
        self.remaining = 0  # bytes left in a BDAT chunk
        self.recipients = 0  # RCPT commands since the transaction began

    @property
    def finished(self) -> bool:
        return self.mode == OVER

    @property
    def in_message(self) -> bool:
        """Inside a message (DATA or BDAT): what follows is the body."""
        return self.mode == BODY or self.mode == CHUNK

    def feed(self, data: bytes, domains: DomainMatcher) -> tuple[str, str] | None:
        """Consume stream bytes; return ``(rule, address)`` on a blocked domain."""
        if self.partial:
            data = self.partial + data
            self.partial = b""
        pos, n = 0, len(data)
        while pos < n:
            mode = self.mode
            if mode == CHUNK:
                take = min(self.remaining, n - pos)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self.mode = COMMAND
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
            if eol < 0:
                self.partial = data[pos:]
                return None
            line = data[pos:eol]
            pos = eol + 1
            if mode == BODY:
                # only a lone "." ends the data (CRLF or, as MTAs accept, a bare LF)
                if line == b"." or line == b".\r":
                    self.mode = COMMAND
                    self.recipients = 0
                continue
            hit = self._command(line.strip(), domains)
            if hit is not None:
                return hit
        return None

    def _command(self, line: bytes, domains: DomainMatcher) -> tuple[str, str] | None:
        verb = line[:4].upper()
        if verb == b"MAIL" or verb == b"RCPT":
            m = _ENVELOPE.match(line)
            if m is None:
                return None
            if verb == b"RCPT":
                self.recipients += 1
            else:
                self.recipients = 0
            path = m.group(2).decode("utf-8", "replace")
            domain = envelope_domain(path)
            if domain is None:
                return None
            rule = domains.match(domain)
            if rule is not None:
                return rule, _path_only(path)
        elif verb == b"DATA":
            if line[4:].strip() == b"" and self.recipients:
                self.mode = BODY
        elif verb == b"BDAT":
            m = _BDAT.match(line)
            if m is not None:
                self.remaining = int(m.group(1))
                if self.remaining:
                    self.mode = CHUNK
        elif verb == b"STAR":
            if line.upper() == b"STARTTLS":
                self.mode = TLS_PENDING
        elif verb == b"QUIT":
            self.mode = OVER
        elif verb == b"RSET":
            self.recipients = 0
        return None


def _path_only(arg: str) -> str:
    """The path of a MAIL/RCPT argument without its ESMTP parameters (for reports)."""
    s = arg.strip()
    if s.startswith("<"):
        return s[:_close_bracket(s[1:]) + 2]
    return s.split(None, 1)[0] if s else s
