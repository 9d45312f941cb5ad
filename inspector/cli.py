"""The ``inspector`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from . import __version__
from .config import ConfigError
from .rules import RuleError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML configuration (default: built-in defaults)")
    p.add_argument("--rules", metavar="PATH", help="rule file or directory (default: the config's, else ./rules)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``inspector`` command and its subcommands."""
    parser = argparse.ArgumentParser(prog="inspector", description="Inline packet inspector for mail and SSH servers.")
    parser.add_argument("--version", action="version", version=f"inspector {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check", help="validate config and rules, print a summary")
    _common(p)

    p = sub.add_parser("replay", help="run the engine over a pcap/pcapng capture")
    p.add_argument("capture")
    _common(p)
    p.add_argument("--alert", action="store_true", help="alert mode: report, accept everything")

    p = sub.add_parser("scan", help="run a log filter and the ban policy over a log file (offline)")
    p.add_argument("logfile", help="a log file (plain or .gz)")
    p.add_argument("--filter", required=True, metavar="NAME",
                   help="postfix-sasl, courier, roundcube, apache-probe, proftpd, sshd, or a [[logs.filter]]")
    p.add_argument("--config", metavar="FILE", help="TOML configuration (user filters, whitelist, policy)")
    p.add_argument("--year", type=int, metavar="Y", help="year of syslog timestamps (default: from the file's mtime)")
    p.add_argument("--utc", action="store_true", help="timestamps without a zone are UTC (default: local time)")
    p.add_argument("--top", type=int, default=10, metavar="N", help="hosts listed in the summary")
    p.add_argument("--maxretry", type=int, metavar="N", help="override the policy's maxretry")
    p.add_argument("--findtime", type=float, metavar="S", help="override the policy's findtime")
    p.add_argument("--bantime", type=int, metavar="S", help="override the policy's bantime")

    p = sub.add_parser("run", help="run the inline filter service on an NFQUEUE (root)")
    _common(p)
    p.add_argument("--queue", type=int, metavar="N", help="NFQUEUE number (default: [service] queue, 0)")
    p.add_argument("--ban-time", type=int, metavar="SECONDS", help="ban duration for every reason")
    p.add_argument("--workers", type=int, metavar="N",
                   help="worker processes on queues N..N+workers-1 (default: as the installed rules spread them)")
    p.add_argument("--alert", action="store_true", help="alert mode: report what would be done, accept everything")

    p = sub.add_parser("policy", help="serve only the MTA policy path ([policy] listen; bans through the ipset)")
    _common(p)

    p = sub.add_parser("bans", help="list current bans with the time left")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per ban")

    p = sub.add_parser("unban", help="lift a ban (kernel, state file, running service and fleet)")
    p.add_argument("address", help="an address, a network or a range a-b (an IPv6 address lifts its /64 ban)")
    p.add_argument("--config", metavar="FILE")

    p = sub.add_parser("ban", help="ban an address, a network or a range a-b (through the running service and fleet)")
    p.add_argument("target", help="198.51.100.7, 198.51.100.0/24, 198.51.100.10-198.51.100.20 or IPv6 alike")
    p.add_argument("--time", default="1d", help="duration: 3600, 30m, 12h, 1d, 2w (default 1d)")
    p.add_argument("--reason", metavar="TEXT", help="a note kept with the ban (shown by 'inspector bans')")
    p.add_argument("--config", metavar="FILE")

    p = sub.add_parser("status", help="is it working? the running service at a glance")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--watch", action="store_true", help="redraw every second")
    p.add_argument("--json", action="store_true", help="the raw status as JSON")

    p = sub.add_parser("report", help="summary of the event log (blocks, bans, top sources and domains)")
    p.add_argument("--config", metavar="FILE")
    p.add_argument("--events", metavar="FILE", help="the event log (default: the config's [service] events)")
    p.add_argument("--since", default="24h", help="window: 24h, 90m, 7d or an ISO date (default 24h)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with a chart")
    p.add_argument("--json", action="store_true", help="the counts as JSON instead of text")
    p.add_argument("--notify", action="store_true", help="send the text report through the [notify] channels")

    p = sub.add_parser("bench", help="benchmark the engine on a synthetic mixed workload")
    p.add_argument("--packets", type=int, default=1_000_000)
    p.add_argument("--sources", type=int, default=100_000, help="distinct flood sources")
    p.add_argument("--domains", type=int, default=2, help="size of the blocked-domain list")
    p.add_argument("--seed", type=int, default=1)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``inspector`` command line with ``argv`` (default: ``sys.argv``); returns the exit code (1: config or
    rule error, 130: interrupted, 141: the reader of stdout went away).
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "replay":
            from .app import build_engine
            from .replay import main_replay

            overrides = {"mode": "alert"} if args.alert else {}
            engine = build_engine(args.config, args.rules, **overrides)
            return main_replay(engine, args.capture)
        if args.command == "scan":
            from .logs.scan import main_scan

            return main_scan(args.logfile, args.filter, args.config, args.year, args.utc, args.top,
                             args.maxretry, args.findtime, args.bantime)
        if args.command == "run":
            return run_service(args.config, args.rules, {"queue": args.queue, "ban_time": args.ban_time,
                                                          "alert": args.alert, "workers": args.workers})
        if args.command == "policy":
            from .policy.main import main_policy

            return main_policy(args.config, args.rules)
        if args.command == "bans":
            from .admin import list_bans

            return list_bans(args.config, args.json)
        if args.command == "unban":
            from .admin import unban

            return unban(args.config, args.address)
        if args.command == "ban":
            from .admin import ban

            return ban(args.config, args.target, args.time, args.reason)
        if args.command == "status":
            from .status import main_status

            return main_status(args.config, args.watch, args.json)
        if args.command == "report":
            from .config import load_config
            from .report import main_report

            config = load_config(args.config)
            events = args.events or config.service.events
            if args.notify:
                from .notify import send_report_now

                return send_report_now(config.notify, events, args.since)
            return main_report(events, args.since, args.html, args.json)
        if args.command == "bench":
            from .bench import main_bench

            return main_bench(args.packets, args.sources, args.domains, args.seed)
    except (ConfigError, RuleError) as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    except PermissionError as e:  # anything not caught nearer: one line, never a traceback
        from .perms import NeedsRoot, needs_root_message

        message = str(e) if isinstance(e, NeedsRoot) else needs_root_message("cannot access", e.filename or "?")
        print(f"inspector: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 2


def run_service(config_path: str | None, rules_path: str | None, overrides: dict[str, Any]) -> int:
    """``inspector run``: choose the mode (one process, or a supervisor with workers: ``--workers``,
    ``[service] workers``, else as many as the installed rules spread over), start it, run it.
    Returns the exit code (1 when it cannot start, with the reason on stderr)."""
    from .app import load
    from .firewall import detect_queues
    from .service import ServiceError
    from .service.single import Service
    from .service.supervisor import Supervisor

    try:
        config, _ = load(config_path, rules_path)
    except (ConfigError, RuleError) as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    workers = overrides.get("workers") or config.service.workers
    if not workers:  # auto: as many as the installed rules spread over (setup-nfqueue.sh --workers)
        found = detect_queues()
        if found is not None and overrides.get("queue") is None:
            overrides = {**overrides, "queue": found[0]}
        workers = found[1] if found is not None else 1
    from .queue_check import installed_queues, refusal

    first = int(overrides["queue"]) if overrides.get("queue") is not None else config.service.queue
    why = refusal(installed_queues(), first, workers)
    if why:  # every installed queue is bound, or none: an unbound one passes uninspected (issue 11)
        print(f"inspector: error: {why}", file=sys.stderr)
        return 1
    service: Service | Supervisor
    service = Supervisor(config_path, rules_path, overrides, workers) if workers > 1 else \
        Service(config_path, rules_path, overrides)
    try:
        service.start()
    except ServiceError as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    queue = int(overrides["queue"]) if overrides.get("queue") is not None else config.service.queue
    print(f"inspector: running on queue {queue}" + (f"..{queue + workers - 1} ({workers} workers)" if workers > 1
          else "") + f" ({service.config.mode} mode)", file=sys.stderr)
    return service.run()


def _check(args: argparse.Namespace) -> int:
    from .app import load
    from .rules import DOMAIN, PAYLOAD

    started = time.perf_counter()
    config, rules = load(args.config, args.rules)
    took = time.perf_counter() - started
    print(f"config: {config.source or 'built-in defaults'}")
    print(f"mode: {config.mode}")
    print(f"ports: smtp {list(config.smtp_ports)}, other {list(config.other_ports)}")
    print(f"stream depth: {config.depth} bytes; flows: max {config.max_flows}, idle {config.flow_idle:g}s")
    for r in config.rates:
        ports = "all protected ports" if r.ports is None else f"ports {list(r.ports)}"
        print(f"rate: more than {r.limit} new connections in {r.window:g}s on {ports} -> ban {r.ban}s")
    print(f"rate capacity: {config.rate_capacity} sources; IPv6 counted per /{config.ipv6_prefix}")
    print(f"bans: domain {config.ban_domain}s, payload {config.ban_payload}s, tcp-flags {config.ban_flags}s")
    print(f"whitelist: {', '.join(map(str, config.whitelist)) or '(none)'}")
    if config.whitelist_files:
        from .whitelist_sources import WhitelistSourceError, read_whitelist_file

        try:
            counts = [f"{f} ({len(read_whitelist_file(f))} entries)" for f in config.whitelist_files]
        except WhitelistSourceError as e:  # changed since the config was loaded
            raise ConfigError(str(e)) from None
        print("whitelist files: " + ", ".join(counts))
    if config.whitelist_hosts:
        print(f"whitelist hosts: {', '.join(config.whitelist_hosts)} (resolved every {config.whitelist_resolve:g}s)")
    if config.connlimit is not None:
        cl = config.connlimit
        for port in cl.ports or config.ports:
            cr = cl.rule_for(port)
            print(f"connlimit: more than {cr.limit} established connections from one source to port {port} "
                  f"-> ban {cr.ban}s (checked every {cl.interval:g}s)")
    if config.notify is not None:
        n = config.notify
        channels = [f"{len(n.urls)} Apprise URL(s)"] * bool(n.urls)
        channels += [f"sendmail to {', '.join(n.mail_to)}"] * bool(n.sendmail)
        print(f"notify: {' and '.join(channels)}; report {n.report}"
              f"{' at ' + n.report_at if n.report == 'daily' else ''}; ban notices "
              f"{f'at most {n.ban_limit} per {n.ban_window}s' if n.bans else 'off'}")
    policy = config.policy
    print(f"policy path: {policy.listen}, reply {policy.reply!r}, request timeout {policy.limits.request_timeout:g}s, "
          f"users {', '.join(policy.users) or 'anyone'}" if policy.listen else "policy path: off ([policy] listen)")
    if policy.listen and policy.unknown_users():
        print(f"  WARNING: no such user here: {', '.join(policy.unknown_users())} (its requests are refused, and the "
              "MTA then applies its default action: DUNNO)")
    print(f"fleet: {config.fleet.describe()}" if config.fleet.enabled else "fleet: off ([fleet] url)")
    for rf in rules.files:
        extra = f" ports {list(rf.ports)}" if rf.ports else ""
        print(f"rules: {rf.path} ({rf.scope}{extra})")
    print(f"blocked domains: {rules.counts.get(DOMAIN, 0)} (duplicates: {rules.duplicates}); "
          f"payload strings: {rules.counts.get(PAYLOAD, 0)}")
    if config.logs.sources:
        from .logs import check_lines

        print("\n".join(check_lines(config.logs)))
    print(f"loaded in {took:.3f}s")
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
