"""``inspector policy``: only the policy path, for a host that wants no packet inspection.

It owns the ban state and the ipset as ``inspector run`` does (bans restored at
start, saved each second, dropped in the kernel by the setup script's rules),
answers ``status``, ``bans`` and ``unban`` on the control socket, reloads the
rules on ``SIGHUP`` and stops on ``SIGTERM``/``SIGINT``.
"""

from __future__ import annotations

import ipaddress
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..app import load
from ..bans import BanStore
from ..config import Config, ConfigError
from ..engine import ban_network_for
from ..events import EventSink, now_iso
from ..rules import RuleError
from . import PolicyService

__all__ = ["main_policy", "whitelist_of"]


def whitelist_of(config: Config) -> Callable[[str], bool]:
    """``address in [whitelist] cidrs`` as a predicate (the packet path's whitelist)."""
    nets = config.whitelist

    def whitelisted(address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in nets if net.version == ip.version)
    return whitelisted


class _Tagged:
    """Adds ``path`` to the events of one path (the ban events of the shared pipeline)."""

    def __init__(self, sink: EventSink, path: str) -> None:
        self.sink = sink
        self.path = path

    def emit(self, event: dict[str, Any]) -> None:
        self.sink.emit(event if "path" in event else {**event, "path": self.path})


def main_policy(config_path: str | None, rules_path: str | None) -> int:
    """Serve the policy path until SIGTERM/SIGINT; 0 on a clean stop, 1 if it cannot start."""
    from ..runner import issue_ban
    from ..service import (
        ServiceError,
        _Fanout,
        ban_summary,
        close_control,
        lift_ban,
        open_control_socket,
        open_firewall,
        open_sinks,
        restore_bans,
        save_bans,
        serve_control,
    )

    try:
        config, rules = load(config_path, rules_path)
    except (ConfigError, RuleError) as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    if config.policy.listen is None:
        print("inspector: error: [policy] listen is not set (e.g. listen = \"127.0.0.1:10040\")", file=sys.stderr)
        return 1
    clock = time.time
    try:
        if os.geteuid() != 0:
            raise ServiceError("inspector policy needs root (CAP_NET_ADMIN) to manage the ban ipsets")
        sinks, log_file = open_sinks(config)
        events = _Fanout(sinks)
        firewall = open_firewall(config)
        control = open_control_socket(config.service.control_socket)
    except ServiceError as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    store = BanStore(Path(config.service.state_file))
    lock = threading.Lock()  # the store and the ipset socket: the policy thread bans, this one saves
    restored = restore_bans(store, firewall, events, clock())
    tagged = _Tagged(events, "policy")
    dirty = [False]

    def ban(network: str, seconds: int, rule: str, now: float) -> bool:
        with lock:
            dirty[0] = True
            return issue_ban(store, firewall, tagged, network, seconds, "domain", rule, None, now)

    service = PolicyService(config.policy, rules.domains, whitelist_of(config),
                            lambda a: ban_network_for(a, config.ipv4_prefix, config.ipv6_prefix),
                            ban, config.ban_domain, events, clock, alert=config.alert)
    try:
        service.start()
    except OSError as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        close_control(control, config.service.control_socket)
        firewall.close()
        return 1
    started = clock()
    state = {"stop": False, "reload": False}
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, lambda s, f: state.__setitem__("stop", True))
    signal.signal(signal.SIGINT, lambda s, f: state.__setitem__("stop", True))
    signal.signal(signal.SIGHUP, lambda s, f: state.__setitem__("reload", True))

    def control_handler(request: dict[str, Any]) -> dict[str, Any]:
        now = clock()
        cmd = request.get("cmd")
        with lock:
            if cmd == "status":
                return {"ok": True, "pid": os.getpid(), "mode": config.mode, "paths": ["policy"],
                        "uptime": round(now - started, 1), **ban_summary(store, now),
                        "policy": service.status(), "rules": {"domains": len(service.decider.domains())}}
            if cmd == "bans":
                return {"ok": True, "bans": [{"network": r.network, "reason": r.reason, "rule": r.rule,
                                              "seconds_left": int(r.expires - now), "expires_at": now_iso(r.expires)}
                                             for r in store.active(now)]}
            if cmd == "unban":
                return lift_ban(str(request.get("network")), config, store, firewall, None, events, now,
                                lambda n: None, lambda: _ignore(save_bans(store, now, True, None, events)))
        return {"ok": False, "error": f"unknown command {cmd!r}"}

    events.emit({"event": "started", "time": round(started, 3), "at": now_iso(started), "pid": os.getpid(),
                 "paths": ["policy"], "policy": str(config.policy.listen), "mode": config.mode,
                 "bans_restored": restored, "domains": len(rules.domains)})
    print(f"inspector: answering policy requests on {config.policy.listen} ({config.mode} mode)", file=sys.stderr)
    watch = [wake_r] + ([control] if control is not None else [])
    while not state["stop"]:
        try:
            ready, _, _ = select.select(watch, [], [], 1.0)
        except InterruptedError:
            ready = []
        if wake_r in ready:
            os.read(wake_r, 512)
        if control is not None and control in ready:
            serve_control(control, control_handler)
        if state["reload"]:
            state["reload"] = False
            try:
                _, new_rules = load(config_path, rules_path)
                service.swap_domains(new_rules.domains)
                events.emit({"event": "reload", "ok": True, "time": round(clock(), 3),
                             "domains": len(new_rules.domains)})
            except (ConfigError, RuleError) as e:
                events.emit({"event": "reload", "ok": False, "time": round(clock(), 3), "error": str(e),
                             "kept": "the rules in use"})
        if dirty[0]:
            with lock:
                dirty[0] = not save_bans(store, clock(), None, None, events)
    service.close()
    now = clock()
    with lock:
        save_bans(store, now, True, None, events)
    events.emit({"event": "stopped", "time": round(now, 3), "at": now_iso(now), "policy": service.status()})
    close_control(control, config.service.control_socket)
    firewall.close()
    if log_file is not None:
        log_file.close()
    return 0


def _ignore(_: object) -> None:
    """Drop a result (a save failure is already an event)."""
