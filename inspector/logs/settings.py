"""The ``[logs]`` section: frozen settings and their parser (``config.py`` only calls :func:`parse_logs`).

Every key is checked here: an unknown key or a wrong type is an error that
names ``file:line`` (the caller's locator finds the line).  A source reads a
file, the systemd journal, or -- ``backend = "auto"``, the default, as
fail2ban 1.1 does -- the file when it exists and the journal otherwise.
Built-in filters know their daemons' units (:attr:`Filter.units`), so on a
stock Debian 12 without rsyslog ``[[logs.source]] filter = "sshd"`` is
enough: it reads ``_SYSTEMD_UNIT=ssh.service`` from the journal.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

__all__ = ["BACKENDS", "LogFilter", "LogSettings", "LogSource", "parse_logs"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
BACKENDS = ("auto", "file", "journal")


@dataclass(frozen=True)
class LogSource:
    """One followed log (``[[logs.source]]``): a file and/or journal matches, a filter, its limits.

    ``backend``: ``"file"`` reads ``path``; ``"journal"`` reads the journal
    entries ``journal`` matches (default: the filter's units); ``"auto"``
    reads ``path`` when it exists, else the journal (when there are matches;
    else it waits for the file).
    """

    filter: str
    path: str | None = None
    journal: tuple[str, ...] = ()  # journald matches, e.g. ("_SYSTEMD_UNIT=ssh.service",); "+" = or
    name: str = ""  # default: "<filter>:<path or journal>"
    maxretry: int = 5
    findtime: float = 600.0
    bantime: int = 86400
    backend: str = "auto"


@dataclass(frozen=True)
class LogFilter:
    """A user filter (``[[logs.filter]]``): a regex with a named ``host`` group."""

    name: str
    regex: str
    literal: str | None = None  # a string every failure line contains (a fast prefilter)


@dataclass(frozen=True)
class LogSettings:
    """The ``[logs]`` section: log sources, user filters, the log whitelist and ban policy."""

    sources: tuple[LogSource, ...] = ()
    filters: tuple[LogFilter, ...] = ()
    whitelist: tuple[Network, ...] = ()  # beyond loopback and the server's own addresses
    maxretry: int = 5  # defaults for the sources
    findtime: float = 600.0
    bantime: int = 86400
    bantime_max: int = 604800  # repeat offenders: each ban twice the last, up to this
    capacity: int = 100_000  # networks tracked
    poll_interval: float = 0.25
    from_start: bool = False  # read existing content at start (default: only new lines)
    hosts_deny: str | None = None  # also export bans to this file (TCP wrappers)
    hosts_deny_daemon: str = "ALL"  # "ALL: addr" lines; "" for bare addresses
    journal_directory: str | None = None  # read journal files here instead of the system journal


class Locator(Protocol):
    """Finds the line of a key in the TOML text (``config._Locator``)."""

    def line(self, table: str, key: str | None = None) -> int | None:
        """The line of ``key`` in ``[table]`` (of the ``[table]`` header when ``key`` is None), or None."""
    def nth(self, table: str, index: int, key: str | None = None) -> int | None:
        """The line of ``key`` in the ``index``-th (0-based) ``[[table]]`` entry, else of its header, or None."""


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_MATCH = re.compile(r"[A-Z0-9_]+=.*")
_PLAIN: dict[str, type | tuple[type, ...]] = {
    "whitelist": list, "maxretry": int, "findtime": (int, float), "bantime": int, "bantime_max": int,
    "capacity": int, "poll_interval": (int, float), "from_start": bool, "hosts_deny": str,
    "hosts_deny_daemon": str, "journal_directory": str, "source": list, "filter": list}
_SOURCE_KEYS: dict[str, type | tuple[type, ...]] = {
    "path": str, "journal": list, "filter": str, "name": str, "maxretry": int, "findtime": (int, float),
    "bantime": int, "backend": str}
_FILTER_KEYS: dict[str, type | tuple[type, ...]] = {"name": str, "regex": str, "literal": str}
MAX_BAN = 2_147_483  # ipset's largest timeout


def _kind(t: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table",
            bool: "true or false"}.get(t, t.__name__)


def _typed(value: Any, want: type | tuple[type, ...]) -> bool:
    kinds = want if isinstance(want, tuple) else (want,)
    if bool in kinds:
        return isinstance(value, bool)
    return not isinstance(value, bool) and isinstance(value, kinds)


def _expected(want: type | tuple[type, ...]) -> str:
    return " or ".join(_kind(k) for k in (want if isinstance(want, tuple) else (want,)))


def _check_keys(entry: dict[str, Any], known: dict[str, type | tuple[type, ...]],
                fail: Callable[[str, str], Exception]) -> None:
    """Unknown keys and wrong types in ``[logs]`` or one of its ``[[logs.*]]`` entries; ``fail(key, message)``
    makes the error."""
    for key, value in entry.items():
        want = known.get(key)
        if want is None:
            raise fail(key, f"unknown setting (known here: {', '.join(sorted(known))})")
        if not _typed(value, want):
            raise fail(key, f"expected {_expected(want)}, got {_kind(type(value))} {value!r}")


def parse_logs(logs: dict[str, Any], path: Path, where: Locator,
               error: Callable[[str], Exception] = ValueError) -> LogSettings:
    """``[logs]`` as read by ``tomllib`` -> :class:`LogSettings`; ``error(message)`` is raised, naming file:line."""
    from .filters import BUILTIN, FilterError, user_filter

    def fail(key: str | None, msg: str) -> Exception:
        line = where.line("logs", key) or where.line("logs") or 0
        loc = f"{path}:{line}" if line else str(path)
        return error(f"{loc}: logs{'.' + key if key else ''}: {msg}")

    def entry_fail(table: str, i: int, key: str | None, msg: str) -> Exception:
        line = where.nth(f"logs.{table}", i, key) or where.line("logs", table) or where.line("logs") or 0
        loc = f"{path}:{line}" if line else str(path)
        return error(f"{loc}: logs.{table}[{i + 1}]{'.' + key if key else ''}: {msg}")

    def bounded(value: Any, low: float, high: float, err: Callable[[str], Exception]) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise err(f"expected a number, got {value!r}")
        if not low <= value <= high:
            raise err(f"must be between {low} and {high}, not {value}")
        return value

    _check_keys(logs, _PLAIN, fail)

    out: dict[str, Any] = {}
    nets = []
    for entry in logs.get("whitelist", []):
        try:
            nets.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError:
            raise fail("whitelist", f"invalid network {entry!r}") from None
    out["whitelist"] = tuple(nets)
    out["maxretry"] = int(bounded(logs.get("maxretry", 5), 1, 1000, lambda m: fail("maxretry", m)))
    out["findtime"] = float(bounded(logs.get("findtime", 600), 1, 86400 * 30, lambda m: fail("findtime", m)))
    out["bantime"] = int(bounded(logs.get("bantime", 86400), 0, MAX_BAN, lambda m: fail("bantime", m)))
    out["bantime_max"] = int(bounded(logs.get("bantime_max", 604800), 1, MAX_BAN, lambda m: fail("bantime_max", m)))
    if "bantime" not in logs:
        out["bantime"] = min(out["bantime"], out["bantime_max"])  # a lower cap lowers the default too
    elif out["bantime"] > out["bantime_max"]:
        raise fail("bantime", f"{out['bantime']} is above bantime_max {out['bantime_max']}")
    if "capacity" in logs:
        out["capacity"] = bounded(logs["capacity"], 16, 10_000_000, lambda m: fail("capacity", m))
    if "poll_interval" in logs:
        out["poll_interval"] = float(bounded(logs["poll_interval"], 0.05, 10, lambda m: fail("poll_interval", m)))
    if "from_start" in logs:
        out["from_start"] = logs["from_start"]
    if "hosts_deny" in logs:
        if not logs["hosts_deny"].strip():
            raise fail("hosts_deny", "must be a file path (leave it out to export nothing)")
        out["hosts_deny"] = logs["hosts_deny"]
    if "hosts_deny_daemon" in logs:
        if not re.fullmatch(r"[A-Za-z0-9_.@-]{0,64}", logs["hosts_deny_daemon"]):
            raise fail("hosts_deny_daemon", "a daemon name such as ALL or sshd (or \"\" for bare addresses)")
        out["hosts_deny_daemon"] = logs["hosts_deny_daemon"]
    if "journal_directory" in logs:
        d = Path(logs["journal_directory"])
        out["journal_directory"] = str(d if d.is_absolute() else path.parent / d)

    filters: list[LogFilter] = []
    for i, f in enumerate(logs.get("filter", [])):
        if not isinstance(f, dict):
            raise entry_fail("filter", i, None, "must be a table: [[logs.filter]] name = \"...\" regex = '...'")
        _check_keys(f, _FILTER_KEYS, partial(entry_fail, "filter", i))
        for key in ("name", "regex"):
            if key not in f:
                raise entry_fail("filter", i, None, f"'{key}' is required")
        name = f["name"]
        if not _NAME.fullmatch(name):
            raise entry_fail("filter", i, "name", f"invalid name {name!r} (letters, digits, '-', '_', '.')")
        if name in BUILTIN:
            raise entry_fail("filter", i, "name", f"{name!r} is a built-in filter; choose another name")
        if any(x.name == name for x in filters):
            raise entry_fail("filter", i, "name", f"filter {name!r} is defined twice")
        try:
            user_filter(name, f["regex"], f.get("literal"))
        except FilterError as e:
            raise entry_fail("filter", i, "regex", str(e)) from None
        if f.get("literal") == "":
            raise entry_fail("filter", i, "literal", "must not be empty (leave it out for no prefilter)")
        filters.append(LogFilter(name, f["regex"], f.get("literal")))
    out["filters"] = tuple(filters)

    known_filters = sorted(BUILTIN) + [f.name for f in filters]
    sources: list[LogSource] = []
    for i, src in enumerate(logs.get("source", [])):
        if not isinstance(src, dict):
            raise entry_fail("source", i, None, "must be a table: [[logs.source]] path = \"...\" filter = \"...\"")
        _check_keys(src, _SOURCE_KEYS, partial(entry_fail, "source", i))
        if "filter" not in src:
            raise entry_fail("source", i, None, f"'filter' is required (one of: {', '.join(known_filters)})")
        if src["filter"] not in known_filters:
            raise entry_fail("source", i, "filter",
                             f"unknown filter {src['filter']!r} (known: {', '.join(known_filters)})")
        backend = src.get("backend", "auto")
        if backend not in BACKENDS:
            raise entry_fail("source", i, "backend", f"must be one of {', '.join(BACKENDS)}, not {backend!r}")
        log_path = None
        if "path" in src:
            p = Path(src["path"])
            log_path = str(p if p.is_absolute() else path.parent / p)
        journal: tuple[str, ...] = ()
        if "journal" in src:
            journal = tuple(src["journal"])
            if not journal or not all(isinstance(m, str) and (m == "+" or _MATCH.fullmatch(m)) for m in journal) \
                    or journal[0] == "+" or journal[-1] == "+":
                raise entry_fail("source", i, "journal", "expected matches such as "
                                 "[\"_SYSTEMD_UNIT=ssh.service\"] (\"+\" between alternatives)")
        units = BUILTIN[src["filter"]].journal_matches if src["filter"] in BUILTIN else ()
        if backend == "file" and log_path is None:
            raise entry_fail("source", i, "backend", "backend \"file\" needs path = \"/var/log/...\"")
        if backend == "journal" and not (journal or units):
            raise entry_fail("source", i, "backend" if "backend" in src else None,
                             f"filter {src['filter']!r} knows no systemd unit: give journal = [\"_SYSTEMD_UNIT=...\"]")
        if backend == "auto" and log_path is None and not (journal or units):
            raise entry_fail("source", i, None, f"needs path = \"/var/log/...\" (filter {src['filter']!r} knows no "
                                                "systemd unit to read from the journal) or journal = [...]")
        name = src.get("name") or f"{src['filter']}:{log_path or ','.join(journal or units)}"
        if any(s.name == name for s in sources):
            raise entry_fail("source", i, "name" if "name" in src else None, f"two sources named {name!r}")
        def limit_fail(key: str, i: int = i) -> Callable[[str], Exception]:
            return lambda msg: entry_fail("source", i, key, msg)

        maxretry = int(bounded(src.get("maxretry", out["maxretry"]), 1, 1000, limit_fail("maxretry")))
        findtime = float(bounded(src.get("findtime", out["findtime"]), 1, 86400 * 30, limit_fail("findtime")))
        bantime = int(bounded(src.get("bantime", out["bantime"]), 0, MAX_BAN, limit_fail("bantime")))
        if bantime > out["bantime_max"]:
            raise entry_fail("source", i, "bantime" if "bantime" in src else None,
                             f"bantime {bantime} is above [logs] bantime_max {out['bantime_max']}")
        sources.append(LogSource(src["filter"], log_path, journal, name, maxretry, findtime, bantime, backend))
    out["sources"] = tuple(sources)
    return LogSettings(**out)
