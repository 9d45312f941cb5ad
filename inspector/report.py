"""``inspector report``: a Logwatch-style summary of the event log.

Reads the JSON-lines event log the service writes (``[service] events``) and
counts, over a time window: blocks and bans by reason, the top sources and
their networks (/24 for IPv4, /64 for IPv6 — the seed's "same beginning"
advice), the top blocked domains and recipients, and log-source failures per
filter.  ``--html`` writes a self-contained page with an inline SVG chart of
blocks and bans over time (no external files, scripts or fonts).

Streaming: one pass, constant memory per distinct key; a line that is not
JSON is counted and skipped.
"""

from __future__ import annotations

import html
import ipaddress
import json
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from .safetext import printable

__all__ = ["Report", "build_report", "parse_since", "render_text", "render_html"]

TOP = 10


def parse_since(text: str, now: float) -> float:
    """``24h``, ``90m``, ``7d``, ``3600s`` or an ISO date/time: the start of the window."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if m:
        scale = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return now - float(m.group(1)) * scale
    from datetime import datetime

    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since: expected a duration like 24h, 90m, 7d or an ISO date, not {text!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@dataclass
class Report:
    """Counts over the event log between ``since`` and ``until`` (Unix seconds): blocks and bans by reason, top
    sources, networks, domains and recipients, log failures, errors, and time buckets for the chart.
    """
    since: float
    until: float
    events: int = 0
    skipped: int = 0
    blocks: Counter[str] = field(default_factory=Counter)  # verdicts by reason
    bans: Counter[str] = field(default_factory=Counter)  # bans by reason
    block_paths: Counter[str] = field(default_factory=Counter)  # blocks by who acted: packet, policy
    ban_paths: Counter[str] = field(default_factory=Counter)  # bans by who acted: packet, policy, log, ...
    alerts: int = 0
    sources: Counter[str] = field(default_factory=Counter)
    networks: Counter[str] = field(default_factory=Counter)
    domains: Counter[str] = field(default_factory=Counter)
    recipients: Counter[str] = field(default_factory=Counter)
    log_failures: Counter[str] = field(default_factory=Counter)  # by filter
    errors: Counter[str] = field(default_factory=Counter)
    reloads: int = 0
    buckets: dict[int, list[int]] = field(default_factory=dict)  # hour -> [blocks, bans]
    bucket_seconds: int = 3600

    def as_dict(self) -> dict[str, Any]:
        """The counts as JSON-ready data (``report --json``)."""
        return {
            "since": self.since, "until": self.until, "events": self.events, "skipped": self.skipped,
            "blocks": dict(self.blocks), "bans": dict(self.bans), "alerts": self.alerts,
            "blocks_by_path": dict(self.block_paths), "bans_by_path": dict(self.ban_paths),
            "top_sources": self.sources.most_common(TOP), "top_networks": self.networks.most_common(TOP),
            "top_domains": self.domains.most_common(TOP), "top_recipients": self.recipients.most_common(TOP),
            "log_failures": dict(self.log_failures), "errors": dict(self.errors), "reloads": self.reloads,
        }


def _network(addr: str) -> str:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False))


def build_report(lines: Iterable[str], since: float, until: float, bucket_seconds: int | None = None) -> Report:
    """Count the JSON event ``lines`` that fall between ``since`` and ``until``; lines that are not events are counted
    as skipped. ``bucket_seconds``: the chart's bucket width (default: from the span).
    """
    span = max(1.0, until - since)
    bucket = bucket_seconds or (3600 if span > 6 * 3600 else 300 if span > 3600 else 60)
    report = Report(since, until, bucket_seconds=bucket)
    loads = json.loads
    networks: dict[str, str] = {}
    for line in lines:
        try:
            event = loads(line)
            kind = event["event"]
            t = float(event.get("time", 0.0))
        except (ValueError, KeyError, TypeError):
            report.skipped += 1
            continue
        if t < since or t > until:
            continue
        report.events += 1
        if kind == "verdict":
            reason = event.get("reason") or "?"
            if reason == "banned":
                continue  # packets of sources already banned: counted by their ban
            report.blocks[reason] += 1
            report.block_paths[str(event.get("path") or "packet")] += 1
            if event.get("alert"):
                report.alerts += 1
            src = event.get("src")
            if src:
                report.sources[src] += 1
                net = networks.get(src)
                if net is None:
                    net = networks[src] = _network(src)
                report.networks[net] += 1
            if reason == "domain":
                if event.get("rule"):
                    report.domains[event["rule"]] += 1
                if event.get("match"):
                    report.recipients[str(event["match"]).strip("<>").lower()] += 1
            report.buckets.setdefault(int(t // bucket), [0, 0])[0] += 1
        elif kind == "ban":
            reason = str(event.get("reason") or "?")
            report.bans[reason] += 1
            report.ban_paths[str(event.get("path") or ("log" if reason.startswith("log:") else "packet"))] += 1
            report.buckets.setdefault(int(t // bucket), [0, 0])[1] += 1
            if reason.startswith("log:"):
                network = str(event.get("network", ""))
                report.sources[network.split("/")[0]] += 1
                report.networks[_network(network.split("/")[0])] += 1
        elif kind == "log-failures":
            for name, n in (event.get("counts") or {}).items():
                report.log_failures[str(name)] += int(n)
        elif kind == "error":
            report.errors[str(event.get("what", "?"))] += 1
        elif kind == "reload":
            report.reloads += 1
    return report


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def render_text(r: Report) -> str:
    """The report as text for the terminal (wire text escaped)."""
    out = [f"inspector report: {_when(r.since)} .. {_when(r.until)}", f"events read: {r.events}"
           + (f" ({r.skipped} unreadable lines skipped)" if r.skipped else "")]

    def section(title: str, items: Iterable[tuple[str, int]]) -> None:
        items = list(items)
        out.append("")
        out.append(title)
        if not items:
            out.append("  (none)")
        for name, n in items:
            out.append(f"  {n:>8}  {printable(name)}")

    section("blocks by reason", r.blocks.most_common())
    if r.alerts:
        out.append(f"  (of which {r.alerts} in alert mode: reported, not blocked)")
    section("bans by reason", r.bans.most_common())
    if (set(r.block_paths) | set(r.ban_paths)) - {"packet"}:
        section("blocks by path (packet: the inline filter; policy: the MTA's policy hook)",
                r.block_paths.most_common())
        section("bans by path", r.ban_paths.most_common())
    section("top sources", r.sources.most_common(TOP))
    section("top networks (/24, /64)", r.networks.most_common(TOP))
    section("top blocked domains", r.domains.most_common(TOP))
    section("top blocked recipients", r.recipients.most_common(TOP))
    if r.log_failures:
        section("log-source failures by filter", r.log_failures.most_common())
    if r.errors:
        section("service errors", r.errors.most_common())
    return "\n".join(out) + "\n"


def _chart(r: Report, width: int = 720, height: int = 220) -> str:
    """An SVG bar chart: blocks (red) and bans (blue) per time bucket."""
    first, last = int(r.since // r.bucket_seconds), int(r.until // r.bucket_seconds)
    slots = list(range(first, last + 1))[-200:]
    peak = max([1] + [max(v) for v in r.buckets.values()])
    left, bottom, top = 50, 30, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    bar = plot_w / max(1, len(slots))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="blocks and bans over time">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 10}" y2="{top + plot_h}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
             f'<text x="{left - 6}" y="{top + 10}" font-size="11" text-anchor="end">{peak}</text>',
             f'<text x="{left - 6}" y="{top + plot_h}" font-size="11" text-anchor="end">0</text>']
    for i, slot in enumerate(slots):
        blocks, bans = r.buckets.get(slot, (0, 0))
        x = left + i * bar
        for j, (value, color) in enumerate(((blocks, "#c0392b"), (bans, "#2c6fbb"))):
            h = plot_h * value / peak
            if h:
                parts.append(f'<rect class="bar" x="{x + j * bar / 2:.1f}" y="{top + plot_h - h:.1f}" '
                             f'width="{max(1.0, bar / 2 - 1):.1f}" height="{h:.1f}" fill="{color}"/>')
    for i, anchor in ((0, "start"), (len(slots) // 2, "middle"), (len(slots) - 1, "end")):
        if slots:
            label = time.strftime("%m-%d %H:%M", time.gmtime(slots[i] * r.bucket_seconds))
            x = left + (i + (1 if anchor == "end" else 0)) * bar
            parts.append(f'<text x="{x:.0f}" y="{height - 8}" font-size="11" text-anchor="{anchor}">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(r: Report) -> str:
    """The report as one self-contained HTML page with a chart."""
    def table(title: str, items: Iterable[tuple[str, int]]) -> str:
        rows = "".join(f"<tr><td>{html.escape(printable(k))}</td><td class=n>{n}</td></tr>" for k, n in items)
        return f"<h2>{html.escape(title)}</h2><table>{rows or '<tr><td>(none)</td><td></td></tr>'}</table>"

    body = [
        f"<h1>inspector report</h1><p>{_when(r.since)} &ndash; {_when(r.until)}; {r.events} events</p>",
        '<div id="chart">', _chart(r),
        '<p><span style="color:#c0392b">&#9632;</span> blocks '
        '<span style="color:#2c6fbb">&#9632;</span> bans, per '
        f"{r.bucket_seconds // 60} minutes</p></div>",
        table("Blocks by reason", r.blocks.most_common()),
        table("Bans by reason", r.bans.most_common()),
        table("Blocks by path", r.block_paths.most_common()),
        table("Bans by path", r.ban_paths.most_common()),
        table("Top sources", r.sources.most_common(TOP)),
        table("Top networks (/24, /64)", r.networks.most_common(TOP)),
        table("Top blocked domains", r.domains.most_common(TOP)),
        table("Top blocked recipients", r.recipients.most_common(TOP)),
    ]
    if r.log_failures:
        body.append(table("Log-source failures by filter", r.log_failures.most_common()))
    style = ("body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin-bottom:1em}"
             "td{padding:2px 12px;border-bottom:1px solid #ddd}td.n{text-align:right}h2{font-size:1.1em}")
    return (f"<!DOCTYPE html><html><head><meta charset=utf-8><title>inspector report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def main_report(events_path: str, since: str, html_path: str | None, as_json: bool) -> int:
    """``inspector report``: read the event log at ``events`` over the ``since`` window, print text or JSON, and write
    the HTML page if asked. Returns the exit code.
    """
    import sys

    now = time.time()
    try:
        start = parse_since(since, now)
    except ValueError as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    path = Path(events_path)
    try:
        with path.open(encoding="utf-8", errors="replace") as f:
            report = build_report(f, start, now)
    except OSError as e:
        print(f"inspector: error: cannot read {printable(path)}: {e.strerror or e}", file=sys.stderr)
        return 1
    if html_path:
        Path(html_path).write_text(render_html(report), encoding="utf-8")
    if as_json:
        print(json.dumps(report.as_dict()))
    else:
        print(render_text(report), end="")
    return 0
