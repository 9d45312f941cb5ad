"""``inspector status``: one screen that answers "is it working?".

Asks the running service over its control socket (never the logs) and shows:
running or not, mode, queues and workers, packets/s and verdicts/s over the
last minute, fail-open passes and queue drops, active bans by reason, top
sources and blocked domains, and the rule set with when it was loaded.
``--watch`` redraws it every second (rich).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from .config import load_config
from .control import control_request
from .logs import status_lines
from .perms import NeedsRoot
from .queue_check import installed_queues, missing_queues
from .safetext import printable


def fetch(config_path: str | None) -> tuple[str, dict[str, Any] | None]:
    """The control socket's path and the service's status: None if no service answers there;
    ``{"ok": False, "cannot_ask": why}`` if one may run but cannot be asked (no permission)."""
    config = load_config(config_path)
    path = config.service.control_socket
    try:
        return path, control_request(path, {"cmd": "status"}, timeout=2.0)
    except NeedsRoot as e:
        return path, {"ok": False, "cannot_ask": str(e)}
    except (OSError, ValueError) as e:
        if Path(path).exists():  # something holds the socket but did not answer in time
            return path, {"ok": False, "cannot_ask": f"no answer on {path}: {type(e).__name__}: {e}"}
        return path, None


def _duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{s:02d}"


def render(path: str, st: dict[str, Any] | None, installed: set[int] | None = None) -> str:
    """The status screen as text (what ``--watch`` redraws); no terminal escapes from the service's
    data (a fleet peer's reason or host id, a rule, a recipient) get through
    (:func:`inspector.safetext.printable`).  ``installed``: the queues the installed rules use
    (None: unknown), so that an unbound one shows as an error."""
    return printable(_render(path, st, installed), keep="\n")


def _fleet_lines(fleet: Any) -> list[str]:
    """The fleet's line (and its last error), when the service runs one."""
    if not isinstance(fleet, dict):
        return []
    return [f"fleet: {'CONNECTED' if fleet.get('connected') else 'NOT CONNECTED'} as {fleet.get('host')}  "
            f"last id {fleet.get('last_id')}  lag {fleet.get('lag', 0):g}s  outbox {fleet.get('outbox', 0):,}"
            f"  published {fleet.get('published', 0):,}  received {fleet.get('received', 0):,}"
            f"  refused {fleet.get('refused', 0):,}"
            + (f"\n  last error: {fleet['last_error']}" if fleet.get("last_error") else "")]


def _render(path: str, st: dict[str, Any] | None, installed: set[int] | None) -> str:
    if st is not None and st.get("cannot_ask"):
        return (f"inspector: UNKNOWN: {st['cannot_ask']}\n"
                "  (it may be running: this is not the answer \"not running\")\n")
    if st is None or not st.get("ok"):
        return (f"inspector: NOT RUNNING (no answer on {path})\n"
                "  traffic to the protected ports passes uninspected if the rules use --queue-bypass\n"
                "  (scripts/setup-nfqueue.sh status shows the rules)\n")
    if st.get("paths") == ["policy"]:  # `inspector policy`: no packet path
        return "\n".join([
            f"inspector: RUNNING  pid {st['pid']}  up {_duration(st.get('uptime', 0))}  mode {st['mode'].upper()}"
            "  (policy path only: no packet inspection)",
            *storage_errors(st.get("storage") or {}),
            *_policy_lines(st.get("policy")),
            f"bans active: {st.get('bans_active', 0):,}"
            + ("  by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(st.get("bans_by_reason", {}).items()))
               if st.get("bans_by_reason") else ""),
            *(f"  {b['network']:<28} {b['reason']:<10} {_duration(b['seconds_left'])} left  {b.get('rule') or ''}"
              for b in st.get("recent_bans", [])),
            *_fleet_lines(st.get("fleet")),
            *status_lines(st.get("logs")),
        ]) + "\n"
    live = st.get("live", {})
    queues = st.get("queues", [])
    drops = sum(q["queue_dropped"] + q["user_dropped"] for q in queues)
    handed = sum(q["id_sequence"] for q in queues)
    seen = st.get("packets", 0)
    rules = st.get("rules") or {}
    lines = [
        f"inspector: RUNNING  pid {st['pid']}  up {_duration(st.get('uptime', 0))}  mode {st['mode'].upper()}"
        + ("  (reporting only, blocking nothing)" if st["mode"] == "alert" else ""),
        f"queues {st['queue']}..{st['queue'] + st.get('workers', 1) - 1} ({st.get('workers', 1)} worker"
        f"{'s' if st.get('workers', 1) != 1 else ''}), "
        f"bound: {', '.join(str(q['queue']) for q in queues if q['portid'])}"
        if queues else f"queue {st['queue']}: not bound!",
        f"last minute: {live.get('packets_per_s', 0):,.1f} packets/s, {live.get('verdicts_per_s', 0):,.1f} verdicts/s"
        f"   packets inspected {seen:,}",
        f"kernel queue: {drops:,} dropped (queue or socket full), "
        f"{max(0, handed - seen):,} fail-open passes (handed out but not received)",
        f"bans active: {st.get('bans_active', 0):,}"
        + ("  by reason: " + ", ".join(f"{k} {v:,}" for k, v in sorted(st.get("bans_by_reason", {}).items()))
           if st.get("bans_by_reason") else ""),
        *(f"  {b['network']:<28} {b['reason']:<10} {_duration(b['seconds_left'])} left  {b.get('rule') or ''}"
          for b in st.get("recent_bans", [])),
        "verdicts: " + (", ".join(f"{k} {v:,}" for k, v in sorted(live.get("reasons", {}).items())) or "none yet"),
        "top sources: " + (", ".join(f"{s} ({n})" for s, n in live.get("top_sources", [])[:5]) or "none"),
        "top blocked domains: " + (", ".join(f"{d} ({n})" for d, n in live.get("top_domains", [])[:5]) or "none"),
        f"rules: {rules.get('domains', '?'):,} domains, {rules.get('payload', 0)} payload strings, loaded "
        f"{rules.get('loaded_at', '?')}" if rules else "rules: ?",
        *status_lines(st.get("logs")),
        *_toolbox_lines(st),
        *_policy_lines(st.get("policy")),
    ]
    lines.extend(_fleet_lines(st.get("fleet")))
    lines[2:2] = storage_errors(st.get("storage") or {})
    lines[2:2] = [f"ERROR: queue {q} is not bound: the installed rules send packets to it, which pass "
                  "uninspected (--queue-bypass) or are dropped" for q in unbound_queues(st, installed)]
    return "\n".join(lines) + "\n"


def storage_errors(storage: dict[str, Any]) -> list[str]:
    """ERROR lines for writes that failed: the ban state, the event log (and events dropped)."""
    out = []
    state = storage.get("state") or {}
    if state.get("write_errors"):
        now_failing = state.get("failing") or state.get("pending")
        out.append(f"{'ERROR' if now_failing else 'warning'}: ban state {state.get('path')}: "
                   f"{state['write_errors']:,} failed writes, {state.get('pending', 0):,} changes waiting"
                   f" (last error: {state.get('last_error')})" + ("" if now_failing else "; written since"))
    events = storage.get("events") or {}
    if events.get("write_errors") or events.get("dropped"):
        now_failing = events.get("failing")
        out.append(f"{'ERROR' if now_failing else 'warning'}: event log {events.get('path')}: "
                   f"{events['write_errors']:,} failed writes, {events.get('pending', 0):,} events waiting, "
                   f"{events.get('dropped', 0):,} dropped (last error: {events.get('last_error')})"
                   + ("" if now_failing else "; written since"))
    return out


def unbound_queues(st: dict[str, Any] | None, installed: set[int] | None) -> list[int]:
    """Queues that the installed rules (or the service's own range) use but nobody binds."""
    if not st or not st.get("ok") or "queue" not in st:  # `inspector policy`: no queue
        return []
    bound = {q["queue"] for q in st.get("queues", []) if q.get("portid")}
    expected = set(installed or ()) | set(range(st["queue"], st["queue"] + st.get("workers", 1)))
    return missing_queues(expected, bound)


def _toolbox_lines(st: dict[str, Any]) -> list[str]:
    """One line each for the whitelist sources, the connection cap and the notifier, when they run."""
    out = []
    wl = st.get("whitelist")
    if isinstance(wl, dict):
        bad = [x["error"] for x in wl.get("files", []) + wl.get("hosts", []) if x.get("error")]
        out.append(f"whitelist from files/hosts: {wl.get('networks', 0)} networks "
                   f"({len(wl.get('files', []))} files, {len(wl.get('hosts', []))} hosts)"
                   + (f"; problem: {bad[0]}" if bad else ""))
    cl = st.get("connlimit")
    if isinstance(cl, dict):
        top = ", ".join(f"{t['network']}:{t['port']} ({t['connections']})" for t in cl.get("top", [])[:3])
        out.append(f"connlimit: {cl.get('bans', 0)} bans, {cl.get('polls', 0)} reads every {cl.get('interval')}s"
                   + (f", error: {cl['last_error']}" if cl.get("last_error") else "")
                   + (f"; most connections: {top}" if top else ""))
    nt = st.get("notify")
    if isinstance(nt, dict):
        out.append(f"notify: {nt.get('sent', 0)} sent, {nt.get('failed', 0)} failed"
                   + (f" (last: {nt['last_error']})" if nt.get("last_error") else "")
                   + (f", next report {nt['next_report']}" if nt.get("next_report") else ""))
    return out


def _policy_lines(policy: dict[str, Any] | None) -> list[str]:
    """The policy path's lines: where it listens, its answers, its bounds hit, its latency."""
    if not policy:
        return []
    c = policy.get("counts", {})
    lat = policy.get("latency_ms")
    bounds = {k: v for k, v in c.items() if k.startswith(("timeouts:", "refused:", "errors")) or k == "act-late"}
    return [
        f"policy path: {policy.get('listen')}  {policy.get('connections', 0)} MTA connections open, "
        f"{c.get('requests', 0):,} requests: {c.get('reject', 0):,} rejected, {c.get('dunno', 0):,} DUNNO, "
        f"{c.get('whitelisted', 0):,} whitelisted, {c.get('malformed', 0):,} malformed"
        + (f", {c.get('alert', 0):,} alerts" if c.get("alert") else ""),
        "  " + (f"latency p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms (last {lat['samples']})" if lat
                else "no requests yet")
        + ("; " + ", ".join(f"{k} {v:,}" for k, v in sorted(bounds.items())) if bounds else ""),
    ]


def main_status(config_path: str | None, watch: bool, as_json: bool) -> int:
    """``inspector status``: print the status screen once, as JSON, or redrawn every second (``watch``). Returns 0 if a
    service answered, 1 if it did but an installed queue is not bound, 3 if none answered, 4 if one may run but
    cannot be asked (no permission).
    """
    import json

    path, st = fetch(config_path)
    if st is not None and st.get("cannot_ask"):
        print(json.dumps(st) if as_json else render(path, st), end="\n" if as_json else "")
        return 4
    installed = installed_queues() if st else None
    unbound = unbound_queues(st, installed)
    if as_json:
        print(json.dumps(st if not st else {**st, "unbound_queues": unbound}))
        return (1 if unbound else 0) if st else 3
    if not watch:
        print(render(path, st, installed), end="")
        return (1 if unbound else 0) if st else 3
    try:
        from rich.live import Live
        from rich.text import Text
    except ImportError:  # pragma: no cover - rich is a dependency
        while True:
            print("\033[2J\033[H" + render(*fetch(config_path), installed), end="", flush=True)
            time.sleep(1)
    with Live(Text(render(path, st)), refresh_per_second=2, screen=sys.stdout.isatty()) as live:
        try:
            while True:
                time.sleep(1)
                live.update(Text(render(*fetch(config_path), installed)))
        except KeyboardInterrupt:
            pass
    return 0
