"""Text from the wire, made safe to show an operator.

Recipients, domains, log lines and host names are chosen by whoever sends the
packet or writes the log line.  Printed raw, an ESC starts a terminal control
sequence (colours, cursor moves, hidden text, a retitled window), a CR
overwrites the line the operator is reading, and a bidi override (U+202E)
reverses what follows.  :func:`printable` is the one function every
human-facing output (``report`` text and HTML, ``status``, ``bans``, ``scan``)
passes such strings through: it keeps printable characters and writes every
other one as a visible escape, the way Python writes them in a literal
(``\\x1b``, ``\\r``, ``\\u202e``), and doubles a backslash so that an escape
in the output is never ambiguous.

Escaped: Unicode categories Cc (C0 and C1 controls, DEL), Cf (format: bidi
embeddings, overrides and isolates, zero-width characters, the BOM), Zl and Zp
(line and paragraph separators), Zs other than the plain space, Co (private
use), Cs (lone surrogates, as ``errors="surrogateescape"`` leaves them) and
Cn (unassigned).  Source: Unicode Standard Annex #9 (bidi), ECMA-48 (C0/C1).
"""

from __future__ import annotations

import unicodedata

__all__ = ["printable"]

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Zs", "Co", "Cs", "Cn"})


_SHORT = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(ch: str) -> str:
    short = _SHORT.get(ch)
    if short is not None:
        return short
    if ch == " " or unicodedata.category(ch) not in _ESCAPED_CATEGORIES:
        return ch
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(value: object, keep: str = "") -> str:
    """``value`` as a string with every non-printable character escaped (see the module), except
    the characters in ``keep`` (``"\\n"`` for a whole screen of lines); None gives "".

    Printable ASCII other than the backslash is returned unchanged, so addresses, domains and
    numbers print as they are.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text
    return "".join(ch if ch in keep else _escape(ch) for ch in text)
