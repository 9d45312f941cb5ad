"""Raw byte strings anywhere in the first bytes of a stream, case-insensitive.

The seeds' ``iptables -m string`` done right: matched over the reassembled
stream, so a string split across segments (or sent a byte per segment, or
out of order) is still found, and case does not matter.
"""

from __future__ import annotations

import ahocorasick


class PayloadMatcher:
    """An Aho-Corasick automaton over lower-cased patterns."""

    __slots__ = ("_automaton", "tail", "_empty")

    def __init__(self, patterns: list[bytes]) -> None:
        automaton = ahocorasick.Automaton()
        longest = 1
        for p in patterns:
            text = p.lower().decode("latin-1")
            automaton.add_word(text, p.decode("latin-1"))
            longest = max(longest, len(text))
        self._empty = not patterns
        if patterns:
            automaton.make_automaton()
        self._automaton = automaton
        self.tail = longest - 1  # bytes to carry over between chunks

    def __len__(self) -> int:
        return len(self._automaton)

    def scan(self, carry: str, data: bytes) -> tuple[str | None, str]:
        """Scan ``carry + data``; return ``(pattern or None, new carry)``."""
        if self._empty:
            return None, ""
        text = carry + data.lower().decode("latin-1")
        for _end, pattern in self._automaton.iter(text):
            return pattern, ""
        return None, text[-self.tail:] if self.tail else ""
