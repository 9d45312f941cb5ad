"""SMTP envelope parser over the reassembled client stream.

Only client command lines are read.  ``MAIL FROM`` and ``RCPT TO`` give an
address whose domain is looked up; message bodies (``DATA`` up to the lone
``.`` line, ``BDAT`` chunks) are skipped; ``STARTTLS`` and ``QUIT`` end the
inspection.  Lines may arrive in any split, several per segment (pipelining).
"""

from __future__ import annotations

import re

from .domains import DomainMatcher, normalize_domain

_ENVELOPE = re.compile(rb"(MAIL\s+FROM|RCPT\s+TO)\s*:(.*)", re.I | re.S)
_BDAT = re.compile(rb"BDAT\s+(\d+)", re.I)

COMMAND, BODY, CHUNK, OVER = 0, 1, 2, 3


def envelope_domain(path: str) -> str | None:
    """The domain of an SMTP ``Reverse-path`` / ``Forward-path`` argument.

    Accepts what lenient MTAs accept: ``<a@b>``, ``a@b`` without brackets,
    spaces after the colon, source routes (``<@relay,@relay2:a@b>``: the
    mailbox's domain counts), quoted local parts (``"x@y"@b``) and ESMTP
    parameters after the path.  The domain is what follows the last ``@``
    outside quotes, as Postfix and Exim parse it.
    """
    s = path.strip()
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

    __slots__ = ("mode", "partial", "remaining")

    def __init__(self) -> None:
        self.mode = COMMAND
        self.partial = b""
        self.remaining = 0  # bytes left in a BDAT chunk

    @property
    def finished(self) -> bool:
        return self.mode == OVER

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
            eol = data.find(b"\n", pos)
            if eol < 0:
                self.partial = data[pos:]
                return None
            line = data[pos:eol].strip()
            pos = eol + 1
            if mode == BODY:
                if line == b".":
                    self.mode = COMMAND
                continue
            hit = self._command(line, domains)
            if hit is not None:
                return hit
        return None

    def _command(self, line: bytes, domains: DomainMatcher) -> tuple[str, str] | None:
        verb = line[:4].upper()
        if verb == b"MAIL" or verb == b"RCPT":
            m = _ENVELOPE.match(line)
            if m is None:
                return None
            path = m.group(2).decode("latin-1")
            domain = envelope_domain(path)
            if domain is None:
                return None
            rule = domains.match(domain)
            if rule is not None:
                return rule, path.strip()
        elif verb == b"DATA":
            if line[4:].strip() == b"":
                self.mode = BODY
        elif verb == b"BDAT":
            m = _BDAT.match(line)
            if m is not None:
                self.remaining = int(m.group(1))
                if self.remaining:
                    self.mode = CHUNK
        elif verb == b"STAR":
            if line.upper() == b"STARTTLS":
                self.mode = OVER
        elif verb == b"QUIT":
            self.mode = OVER
        return None
