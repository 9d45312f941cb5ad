"""``inspector policy``: only the policy path, for a host that wants no packet inspection.

A :class:`~inspector.service.host.Host` without a packet side: it owns the ban
store and the ipset as ``inspector run`` does (bans restored at start, saved each
second, dropped in the kernel by the setup script's rules), answers ``status``,
``bans`` and ``unban`` on the control socket, follows ``[logs]`` if configured,
and runs the policy service (:func:`inspector.policy.attach`) as its side
component.  ``SIGHUP`` reloads the rules, ``SIGTERM``/``SIGINT`` stop it.
"""

from __future__ import annotations

import os
import sys
import time

from ..app import load
from ..config import Config, ConfigError
from ..events import now_iso
from ..rules import RuleError

__all__ = ["main_policy"]


def main_policy(config_path: str | None, rules_path: str | None) -> int:
    """Serve the policy path until SIGTERM/SIGINT; 0 on a clean stop, 1 if it cannot start."""
    from ..service import ServiceError
    from ..service.host import Host
    from ..service.loop import Loop

    try:
        config, rules = load(config_path, rules_path)
    except (ConfigError, RuleError) as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    if config.policy.listen is None:
        print("inspector: error: [policy] listen is not set (e.g. listen = \"127.0.0.1:10040\")", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("inspector: error: inspector policy needs root (CAP_NET_ADMIN) to manage the ban ipsets",
              file=sys.stderr)
        return 1
    clock = time.time
    loop = Loop(clock)
    try:
        host = Host(config, clock, loop)
    except ServiceError as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    host.packet_status = lambda now: {"paths": ["policy"]}

    def reload() -> None:
        try:
            new, new_rules = load(config_path, rules_path)
        except (ConfigError, RuleError) as e:
            host.events.emit({"event": "reload", "ok": False, "time": round(clock(), 3), "error": str(e),
                              "kept": "the rules and config in use"})
            return
        host.reload_logs(_same_service(new, host.config))
        host.events.emit({"event": "reload", "ok": True, "time": round(clock(), 3), "domains": len(new_rules.domains)})
    try:
        host.start()
    except ServiceError as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        host.close_components()
        host.save_final(clock())
        host.close()
        return 1
    loop.on_hup = reload
    loop.catch_signals()
    host.started = started = clock()
    host.events.emit({"event": "started", "time": round(started, 3), "at": now_iso(started), "pid": os.getpid(),
                      "paths": ["policy"], "policy": str(config.policy.listen), "mode": config.mode,
                      "bans_restored": host.restored, "domains": len(rules.domains)})
    print(f"inspector: answering policy requests on {config.policy.listen} ({config.mode} mode)", file=sys.stderr)
    loop.run()
    now = clock()
    policy = host.components["policy"].status() if "policy" in host.components else {}
    host.close_components()
    host.save_final(now)
    host.events.emit({"event": "stopped", "time": round(now, 3), "at": now_iso(now), "policy": policy})
    host.close()
    loop.close()
    return 0


def _same_service(new: Config, old: Config) -> Config:
    """``[service]`` and ``[policy]`` changes take effect on restart (sockets, files, the listen address)."""
    from dataclasses import replace

    return replace(new, service=old.service, policy=replace(new.policy, listen=old.policy.listen))
