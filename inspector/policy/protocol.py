"""The Postfix SMTP access policy delegation protocol, sans I/O.

A request is a block of ``name=value`` lines ended by an empty line; the reply
is one ``action=...`` line and an empty line (Postfix SMTPD_POLICY_README,
"Protocol description").  Postfix keeps the connection open and sends the
next request on it; Exim's ``${readsocket}`` sends one request, half-closes
and reads until end of file, so a request may also end at end of file
(:meth:`RequestReader.eof`).

The reader holds at most ``max_line`` bytes of an unfinished line and at most
``max_request`` bytes and ``max_attributes`` lines of an unfinished request.
A request beyond a bound, a line without ``=``, an empty name or a request
without ``request=smtpd_access_policy`` is returned as a :class:`Request`
with ``error`` set (the caller answers it with ``DUNNO`` and counts it);
what follows it up to the next empty line is skipped, so the connection stays
in step with the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MAX_ATTRIBUTES", "MAX_LINE", "MAX_REQUEST", "Request", "RequestReader", "encode_reply"]

MAX_LINE = 16384  # bytes of one attribute line; Postfix's own SMTP line_length_limit is 2048
MAX_REQUEST = 131072  # bytes of one request
MAX_ATTRIBUTES = 512  # lines of one request (Postfix 3.7 sends about 30)
POLICY_REQUEST = "smtpd_access_policy"


@dataclass(frozen=True)
class Request:
    """One policy request: its attributes, or why it could not be read (``error``)."""

    attributes: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    size: int = 0  # bytes it took on the wire

    def get(self, name: str, default: str = "") -> str:
        """The value of attribute ``name`` (``default`` when absent)."""
        return self.attributes.get(name, default)


class RequestReader:
    """Splits a byte stream into :class:`Request` objects; see the module docstring."""

    def __init__(self, max_line: int = MAX_LINE, max_request: int = MAX_REQUEST,
                 max_attributes: int = MAX_ATTRIBUTES) -> None:
        self.max_line = max_line
        self.max_request = max_request
        self.max_attributes = max_attributes
        self._buffer = bytearray()
        self._attributes: dict[str, str] = {}
        self._lines = 0
        self._size = 0
        self._error: str | None = None  # set: skip to the end of this request
        self._skipping_line = False  # inside an over-long line (its start was dropped)

    @property
    def pending(self) -> bool:
        """True while part of a request has been read (the request deadline runs)."""
        return bool(self._buffer) or self._lines > 0 or self._skipping_line

    def feed(self, data: bytes) -> list[Request]:
        """Consume ``data``; return the requests it completed, in order."""
        out: list[Request] = []
        buf = self._buffer
        buf += data
        start = 0
        while True:
            if not self._lines and not self._skipping_line and self._error is None:
                request, start = self._whole(buf, start)
                if request is not None:
                    out.append(request)
                    continue
            eol = buf.find(b"\n", start)
            if eol < 0:
                break
            line = bytes(buf[start:eol])
            length = eol + 1 - start
            start = eol + 1
            if self._skipping_line:
                # the rest of an over-long line: it was already reported by _error
                self._skipping_line = False
                self._size += length
                continue
            request = self._line(line, length)
            if request is not None:
                out.append(request)
        del buf[:start]
        if len(buf) > self.max_line:
            # an over-long line without its end: drop what we have, skip the rest of it
            self._size += len(buf)
            del buf[:]
            self._skipping_line = True
            self._lines += 1
            if self._error is None:
                self._error = f"attribute line longer than {self.max_line} bytes"
        return out

    def _whole(self, buf: bytearray, start: int) -> tuple[Request | None, int]:
        """The fast path: a whole request at ``start``, within every bound, parsed at once.

        Returns (None, start) for anything else (an unfinished request, CR LF line
        ends, a bound exceeded, a line without ``=``), which the line-by-line path
        then reads, with the same result.
        """
        n = len(buf)
        while start < n and buf[start] == 0x0A:  # stray empty lines between requests
            start += 1
        end = buf.find(b"\n\n", start, start + self.max_request)
        if end < 0:
            return None, start
        block = bytes(buf[start:end])
        if b"\r" in block:
            return None, start
        text = block.decode("utf-8", "replace")
        lines = text.split("\n")
        if len(lines) > self.max_attributes or (len(block) > self.max_line and
                                                max(map(len, block.split(b"\n"))) > self.max_line):
            return None, start
        attributes: dict[str, str] = {}
        for line in lines:
            name, eq, value = line.partition("=")
            if not eq or not name:
                return None, start
            attributes.setdefault(name, value)  # the first value wins: Postfix never repeats an attribute
        size = end + 2 - start
        if attributes.get("request") != POLICY_REQUEST:
            return Request({}, f"not request={POLICY_REQUEST}", size), end + 2
        return Request(attributes, None, size), end + 2

    def eof(self) -> Request | None:
        """The end of the stream: an unfinished request is complete (Exim's half-close)."""
        if self._buffer and not self._skipping_line:
            line = bytes(self._buffer)
            del self._buffer[:]
            request = self._line(line, len(line))
            if request is not None:
                return request
        self._buffer.clear()
        self._skipping_line = False
        if self._lines or self._error is not None:
            return self._finish()
        return None

    def _line(self, line: bytes, length: int) -> Request | None:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if not self._lines and self._error is None:
                return None  # a stray empty line between requests
            return self._finish(length)
        self._size += length
        self._lines += 1
        if self._error is not None:
            return None
        if length > self.max_line + 1:  # a whole over-long line in one read (a split one is caught in feed)
            self._error = f"attribute line longer than {self.max_line} bytes"
        elif self._size > self.max_request:
            self._error = f"request longer than {self.max_request} bytes"
        elif self._lines > self.max_attributes:
            self._error = f"more than {self.max_attributes} attribute lines"
        else:
            eq = line.find(b"=")
            if eq < 0:
                self._error = "attribute line without '='"
            elif eq == 0:
                self._error = "attribute line with an empty name"
            else:
                name = line[:eq].decode("utf-8", "replace")
                # the first value wins: Postfix never repeats an attribute
                self._attributes.setdefault(name, line[eq + 1:].decode("utf-8", "replace"))
        return None

    def _finish(self, length: int = 0) -> Request:
        attributes, error, size = self._attributes, self._error, self._size + length
        self._attributes, self._error, self._lines, self._size = {}, None, 0, 0
        if error is None and attributes.get("request") != POLICY_REQUEST:
            error = f"not request={POLICY_REQUEST}"
        return Request({} if error else attributes, error, size)


def encode_reply(action: str) -> bytes:
    """``action=<action>`` and the empty line; line breaks in ``action`` become spaces."""
    text = action.replace("\r", " ").replace("\n", " ")
    return b"action=" + text.encode("utf-8", "replace") + b"\n\n"
