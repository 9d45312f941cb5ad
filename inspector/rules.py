"""Rule files: blocked domains (scope ``domain``) and byte strings (scope ``payload``).

One entry per line; ``#`` starts a comment; blank lines are ignored.
Errors name ``file:line`` and what is wrong, and loading stops at the first
file with errors: a broken rule file never half-loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import idna

from .detect.domains import DomainMatcher, to_ascii
from .detect.payload import PayloadMatcher

__all__ = ["RuleError", "RuleFile", "RuleSet", "load_rules", "rule_files_in"]

DOMAIN, PAYLOAD = "domain", "payload"
SCOPES = (DOMAIN, PAYLOAD)
_LABEL = r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[\\nrt])")
_ESCAPED = re.compile(rb"(?:[^\\]|\\(?:x[0-9a-fA-F]{2}|[\\nrt]))*", re.S)
MIN_PAYLOAD, MAX_PAYLOAD = 4, 255


class RuleError(ValueError):
    """A rule file that cannot be used; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class RuleFile:
    """One rule file: its path, its scope (domain list or payload strings) and, for payload strings, the ports they
    apply to (None: every non-SMTP protected port).
    """
    path: Path
    scope: str = DOMAIN
    ports: tuple[int, ...] | None = None  # payload scope: ports it applies to (None: all non-SMTP)


@dataclass(frozen=True)
class RuleSet:
    """Rules parsed once and frozen; reload builds a new one and swaps it in."""

    domains: DomainMatcher
    payload: dict[int | None, PayloadMatcher]  # port (None: default) -> matcher
    files: tuple[RuleFile, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0

    def payload_for(self, port: int) -> PayloadMatcher | None:
        """The payload matcher for a destination ``port`` (its own, else the one for every port; None when there are no
        payload rules).
        """
        return self.payload.get(port) or self.payload.get(None)


def rule_files_in(path: Path) -> list[RuleFile]:
    """The rule files a ``--rules`` path names.

    A file is a domain list unless its name ends in ``.payload``; a directory
    contributes its ``*.txt`` and ``*.domains`` files (domain lists) and its
    ``*.payload`` files (payload strings, for every non-SMTP protected port).
    """
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".txt", ".domains", ".payload"))
        return [RuleFile(p, PAYLOAD if p.suffix == ".payload" else DOMAIN) for p in files]
    if not path.exists():
        raise RuleError(f"{path}: no such rule file or directory")
    return [RuleFile(path, PAYLOAD if path.suffix == ".payload" else DOMAIN)]


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    try:
        text = path.read_bytes()
    except OSError as e:
        raise RuleError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as e:
        line = text[: e.start].count(b"\n") + 1
        raise RuleError(f"{path}:{line}: not valid UTF-8") from None
    for number, raw in enumerate(decoded.splitlines(), 1):
        hash_at = raw.find("#")
        entry = (raw if hash_at < 0 else raw[:hash_at]).strip()
        if entry:
            yield number, entry


def parse_domain(entry: str) -> str:
    """Validate and normalise one domain rule; raise ValueError with the reason."""
    d = entry.rstrip(".")
    if not d.isascii() or "xn--" in d.lower():
        # a U-label rule is stored as its A-label (UTS #46 mapping, IDNA 2008, as the envelope
        # side); an A-label rule must be valid IDNA 2008 (the same check, which decodes it)
        try:
            d = to_ascii(d) if not d.isascii() else to_ascii(idna.decode(d.lower()))
        except (idna.IDNAError, UnicodeError, ValueError) as e:
            raise ValueError(f"invalid internationalised domain {entry!r} (IDNA 2008 / UTS #46: {e})") from None
    d = d.lower()
    if d.startswith("@"):
        raise ValueError(f"invalid domain {entry!r} (write the domain alone: {d[1:]!r} blocks it and its subdomains)")
    if d.startswith("*.") or d.startswith("."):
        raise ValueError(f"invalid domain {entry!r} (no wildcard needed: {d.lstrip('*.')!r} blocks its subdomains)")
    if len(d) > 253 or not _DOMAIN.fullmatch(d):
        raise ValueError(f"invalid domain {entry!r}")
    return d


def parse_payload(entry: str) -> bytes:
    """Decode one payload rule (``\\xNN``, ``\\n``, ``\\r``, ``\\t``, ``\\\\`` escapes)."""
    raw = entry.encode("utf-8")
    if not _ESCAPED.fullmatch(raw):
        raise ValueError(f"invalid escape in {entry!r} (use \\xNN, \\n, \\r, \\t or \\\\)")
    value = _ESCAPE.sub(_unescape, raw)
    if len(value) < MIN_PAYLOAD:
        raise ValueError(f"payload string {entry!r} is shorter than {MIN_PAYLOAD} bytes and would match too much")
    if len(value) > MAX_PAYLOAD:
        raise ValueError(f"payload string is longer than {MAX_PAYLOAD} bytes")
    return value


def _unescape(m: re.Match[bytes]) -> bytes:
    code = m.group(1)
    if code[:1] == b"x":
        return bytes([int(code[1:], 16)])
    return {b"\\": b"\\", b"n": b"\n", b"r": b"\r", b"t": b"\t"}[code]


def load_rules(files: Iterable[RuleFile]) -> RuleSet:
    """Parse rule files into a frozen :class:`RuleSet`; raise :class:`RuleError`."""
    files = tuple(files)
    table: dict[str, int] = {}
    payload_lists: dict[int | None, list[bytes]] = {}
    duplicates = 0
    check = _DOMAIN.fullmatch
    for index, rf in enumerate(files):
        if rf.scope not in SCOPES:
            raise RuleError(f"{rf.path}: unknown scope {rf.scope!r} (expected one of {', '.join(SCOPES)})")
        if rf.scope == DOMAIN:
            setdefault = table.setdefault
            before, entries = len(table), 0
            for number, entry in _lines(rf.path):
                d = entry.lower()
                # fast path for plain ASCII names; anything else (U-labels, A-labels) gets the full check
                if len(d) > 253 or not check(d) or "xn--" in d:
                    try:
                        d = parse_domain(entry)
                    except ValueError as e:
                        raise RuleError(f"{rf.path}:{number}: {e}") from None
                entries += 1
                setdefault(d, index)
            duplicates += entries - (len(table) - before)
        else:
            for port in rf.ports or (None,):
                bucket = payload_lists.setdefault(port, [])
                for number, entry in _lines(rf.path):
                    try:
                        bucket.append(parse_payload(entry))
                    except ValueError as e:
                        raise RuleError(f"{rf.path}:{number}: {e}") from None
    # port-specific lists also carry the default ones
    default = payload_lists.get(None, [])
    payload = {port: PayloadMatcher(sorted(set(p + (default if port is not None else []))))
               for port, p in payload_lists.items()}
    counts = {DOMAIN: len(table), PAYLOAD: len({p for lst in payload_lists.values() for p in lst})}
    return RuleSet(DomainMatcher(table), payload, files, counts, duplicates)
