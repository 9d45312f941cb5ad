"""``inspector scan``: a filter and the log policy over a whole log file, offline.

What ``fail2ban-regex`` is to fail2ban and ``replay`` is to captures: test a
filter on last week's log before enabling it.  Prints one JSON object per
failure found, one ``{"ban": {...}}`` per ban the policy would issue (at the
line that completes the count), then ``{"summary": {...}}``.  Reads plain or
gzip-compressed files.  Times come from the lines; a failure line without
a readable time takes the previous failure's (the file's mtime at first).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import IO, Any

from ..progress import Progress
from ..safetext import printable
from .filters import NOT_ADDRESS, Failure, Filter, FilterError, LineMatcher, get_filter, user_filter
from .follow import MAX_LINE, TOO_LONG, LineSplitter
from .policy import Limits, LogPolicy, Whitelist, local_addresses
from .timestamps import TimeParser

__all__ = ["ScanResult", "scan_file", "main_scan"]

_READ = 1 << 20


@dataclass
class ScanResult:
    """What ``inspector scan`` found in one file: lines, failure lines and failures, what was skipped and why, the bans
    the policy would issue, failures per host, CPU and wall seconds, and the error that ended the scan, if any.
    """
    lines: int = 0
    matched: int = 0  # failure lines (a "message repeated N times" line is one)
    failures: int = 0  # failures (such a line counts N)
    whitelisted: int = 0
    too_long: int = 0
    not_address: int = 0
    no_time: int = 0
    bans: list[dict[str, Any]] = field(default_factory=list)
    hosts: Counter[str] = field(default_factory=Counter)
    cpu: float = 0.0
    wall: float = 0.0
    error: str | None = None

    def summary(self, top: int = 10) -> dict[str, Any]:
        """The summary line's data, with the ``top`` hosts by failures."""
        return {
            "lines": self.lines,
            "matched": self.matched,
            "failures": self.failures,
            "whitelisted": self.whitelisted,
            "skipped": {"too_long": self.too_long, "not_address": self.not_address},
            "no_time": self.no_time,
            "hosts": len(self.hosts),
            "top_hosts": [{"host": h, "failures": n} for h, n in self.hosts.most_common(top)],
            "bans": len(self.bans),
            "seconds": round(self.wall, 3),
            "cpu_seconds": round(self.cpu, 3),
            "lines_per_s": round(self.lines / self.cpu) if self.cpu > 0 else 0,
        }


def _iso(t: float, cache: dict[int, str]) -> str:
    sec = int(t)
    base = cache.get(sec)
    if base is None:
        if len(cache) > 4096:
            cache.clear()
        base = cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    frac = t - sec
    return base + (f".{round(frac * 1e6):06d}".rstrip("0") if frac else "") + "Z"


def scan_file(path: str, filt: Filter, limits: Limits, policy: LogPolicy, out: IO[str] | None = None,
              year: int | None = None, utc: bool = False, max_line: int = MAX_LINE) -> ScanResult:
    """Scan ``path``; write JSON lines to ``out`` (if given)."""
    result = ScanResult()
    started, cpu0 = time.perf_counter(), time.process_time()
    with contextlib.ExitStack() as files:
        try:
            f = files.enter_context(open(path, "rb"))
        except OSError as e:
            result.error = f"{path}: cannot read: {e.strerror or e}"
            return result
        mtime = fallback = os.fstat(f.fileno()).st_mtime
        raw: IO[bytes] = f
        magic = f.read(2)
        f.seek(0)
        if magic == b"\x1f\x8b":
            raw = gzip.GzipFile(fileobj=f)  # type: ignore[assignment]
        matcher = LineMatcher(filt, TimeParser(year, utc))
        match = matcher.match
        splitter = LineSplitter(max_line, mark=True)
        name = filt.name
        write = out.write if out is not None else None
        dumps = json.dumps
        lineno = 0
        seconds: dict[int, str] = {}
        bar = Progress.for_file("scan", path, every=1)
        try:
            while True:
                chunk = raw.read(_READ)
                bar.update(f.tell(), lineno)
                lines = splitter.feed(chunk) if chunk else splitter.flush()
                for line in lines:
                    lineno += 1
                    if line is TOO_LONG:
                        continue
                    hit = match(line, mtime, fallback)
                    if hit is None or hit is NOT_ADDRESS:
                        continue
                    assert isinstance(hit, Failure)
                    fallback = hit.time
                    result.matched += 1
                    result.failures += hit.count
                    result.hosts[hit.host] += hit.count
                    white = policy.is_whitelisted(hit.host)
                    if white:
                        result.whitelisted += hit.count
                    if write is not None:
                        rec: dict[str, Any] = {"time": round(hit.time, 6), "at": _iso(hit.time, seconds),
                                               "filter": name, "host": hit.host,
                                               "network": policy.network(hit.host), "lineno": lineno, "line": line}
                        if hit.count != 1:
                            rec["count"] = hit.count
                        if white:
                            rec["whitelisted"] = True
                        write(dumps(rec) + "\n")
                    ban = policy.failure(name, name, limits, hit.host, hit.time, line, hit.count)
                    if ban is not None:
                        b = ban.as_dict()
                        del b["source"]
                        b["at"] = _iso(ban.time, seconds)
                        b["lineno"] = lineno
                        result.bans.append(b)
                        if write is not None:
                            write(dumps({"ban": b}) + "\n")
                if not chunk:
                    break
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            result.error = f"{path}: read error after line {lineno}: {e}"
        finally:
            bar.done()
    result.lines = lineno  # TOO_LONG placeholders included
    result.too_long = splitter.too_long
    result.not_address = matcher.not_address
    result.no_time = matcher.no_time
    result.cpu = time.process_time() - cpu0
    result.wall = time.perf_counter() - started
    return result


def main_scan(path: str, filter_name: str, config_path: str | None, year: int | None, utc: bool = False,
              top: int = 10, maxretry: int | None = None, findtime: float | None = None,
              bantime: int | None = None, out: IO[str] | None = None) -> int:
    """``inspector scan``: run filter ``filter_name`` and the ban policy (the config's, or the overrides given) over
    the log at ``path``; one JSON line per ban, then a summary line, to ``out`` (default stdout). Returns the exit
    code (1: unknown filter, 2: the file could not be read to the end).
    """
    from ..config import load_config

    out = out if out is not None else sys.stdout
    config = load_config(config_path)
    settings = config.logs
    users = [user_filter(f.name, f.regex, f.literal) for f in settings.filters]
    try:
        filt = get_filter(filter_name, users)
    except FilterError as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    source = next((s for s in settings.sources if s.filter == filter_name), None)
    limits = Limits(
        maxretry if maxretry is not None else (source.maxretry if source else settings.maxretry),
        findtime if findtime is not None else (source.findtime if source else settings.findtime),
        bantime if bantime is not None else (source.bantime if source else settings.bantime),
    )
    whitelist = Whitelist([*config.whitelist, *settings.whitelist, *local_addresses()])
    policy = LogPolicy(whitelist, settings.bantime_max, config.ipv4_prefix, config.ipv6_prefix, settings.capacity)
    result = scan_file(path, filt, limits, policy, out, year, utc)
    summary = result.summary(top)
    summary["filter"] = filt.name
    summary["policy"] = {"maxretry": limits.maxretry, "findtime": limits.findtime, "bantime": limits.bantime,
                         "bantime_max": policy.bantime_max}
    if result.error:
        summary["error"] = result.error
    out.write(json.dumps({"summary": summary}) + "\n")
    out.flush()
    if result.error:
        print(f"inspector: error: {printable(result.error)}", file=sys.stderr)
        return 2
    return 0
