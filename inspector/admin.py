"""``inspector bans``, ``ban`` and ``unban``: ask the running service, or act on the state directly.

``ban`` needs the running service: its ban pipeline knows what must never be banned (the
whitelist, the host's own addresses) and publishes to the fleet.  ``unban`` also works
without it, on the state file and the kernel set.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .bans import BanStore, StateError
from .config import Config, load_config
from .control import control_request
from .events import now_iso
from .firewall import FirewallError, IpsetFirewall, SetNames
from .manual import TargetError, ban_form, parse_duration, parse_target

__all__ = ["ban", "list_bans", "printable", "unban"]


def printable(text: object, keep: str = "") -> str:
    """``text`` safe for a terminal: every character that is not printable (control characters, C1
    codes such as CSI, bidirectional overrides), except those in ``keep``, written as its Python
    escape (``\\x1b``).  Reasons, rules and host ids may come from a fleet peer or a log line;
    printed raw they could recolour, retitle or rewrite the admin's terminal.  None gives ""."""
    if text is None:
        return ""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() or c in keep else repr(c)[1:-1] for c in s)


def _ask(path: str, request: dict[str, Any]) -> dict[str, Any] | None:
    """``control_request``, with a clear error (SystemExit 1) when the service answers badly or too slowly."""
    try:
        return control_request(path, request)
    except (OSError, ValueError) as e:
        print(f"inspector: error: the service on {path} did not answer properly: {type(e).__name__}: {e}",
              file=sys.stderr)
        raise SystemExit(1) from None


def list_bans(config_path: str | None, as_json: bool) -> int:
    """``inspector bans``: the active bans from the running service, else from the state file; one line (or, with
    ``as_json``, one JSON object) per ban. Returns the exit code (1: the state file is unreadable).
    """
    config = load_config(config_path)
    reply = _ask(config.service.control_socket, {"cmd": "bans"})
    if reply is not None:
        bans = reply.get("bans", [])
        source = "running service"
    else:
        now = time.time()
        store = BanStore(Path(config.service.state_file))
        try:
            store.load(now)
        except StateError as e:
            print(f"inspector: error: {e}", file=sys.stderr)
            return 1
        bans = [{"network": r.network, "reason": r.reason, "rule": r.rule, "seconds_left": int(r.expires - now),
                 "expires_at": now_iso(r.expires), "origin": r.origin} for r in store.active(now)]
        source = f"state file {config.service.state_file} (service not running)"
    if as_json:
        for b in bans:
            print(json.dumps(b))  # JSON escapes control characters itself
        return 0
    print(f"{len(bans)} active bans, from the {source}")
    for b in bans:
        left = int(b["seconds_left"])
        print(f"{printable(b['network']):<40} {printable(b['reason']):<10} {left // 3600:>3}h{left % 3600 // 60:02d}m"
              f" left  {printable(b.get('origin') or 'local'):<16} {printable(b.get('rule'))}")
    return 0


def ban(config_path: str | None, target: str, duration: str, reason: str | None) -> int:
    """``inspector ban TARGET``: each network of the target through the running service's pipeline."""
    config = load_config(config_path)
    try:
        networks = parse_target(target, config.ipv6_prefix)
        seconds = parse_duration(duration)
    except TargetError as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    reply = _ask(config.service.control_socket,
                 {"cmd": "ban", "networks": networks, "seconds": seconds, "reason": reason})
    if reply is None:
        print(f"inspector: error: no service answers on {config.service.control_socket}: manual bans go through "
              "the running service (it knows what must never be banned, and tells the fleet)", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"inspector: error: {printable(reply.get('error'))}", file=sys.stderr)
        return 1
    for network in reply.get("banned", []):
        print(f"banned {network} for {seconds}s")
    for refused in reply.get("refused", []):
        print(f"refused {printable(refused['network'])}: {printable(refused['why'])}", file=sys.stderr)
    return 0 if not reply.get("refused") else 1


def unban(config_path: str | None, target: str) -> int:
    """``inspector unban TARGET``: lift the bans of an address (an IPv6 address: its /64), a network or a range
    a-b (its networks) through the running service (and so the fleet), else directly in the state file and, as
    root, the kernel sets.  Returns the exit code (1: not a target, or the service refused)."""
    config = load_config(config_path)
    try:
        networks = [target] if "-" not in target else parse_target(target, config.ipv6_prefix)
        if "-" not in target:
            ipaddress.ip_network(target, strict=False)
    except (TargetError, ValueError):
        print(f"inspector: error: {target!r} is not an address, a network or a range a-b", file=sys.stderr)
        return 1
    code = 0
    for address in networks:
        code = max(code, _unban_one(config, address))
    return code


def _unban_one(config: Config, address: str) -> int:
    reply = _ask(config.service.control_socket, {"cmd": "unban", "network": address})
    if reply is not None:
        if not reply.get("ok"):
            print(f"inspector: error: {reply.get('error')}", file=sys.stderr)
            return 1
        covered = reply.get("covered_by") or []
        if covered:
            print(f"inspector: {printable(reply['network'])} was not banned itself, but the ban of "
                  f"{', '.join(map(printable, covered))} still drops it: unban that", file=sys.stderr)
            return 1
        print(f"unbanned {printable(reply['network'])}" + ("" if reply.get("was_banned") else " (it was not banned)"))
        return 0
    # no service: edit the state and the kernel set directly
    network = ban_form(address, config.ipv4_prefix, config.ipv6_prefix)
    store = BanStore(Path(config.service.state_file))
    try:
        store.load(time.time())
    except StateError as e:
        print(f"inspector: warning: {e}", file=sys.stderr)
    found = store.remove(network)
    store.save(time.time(), compact=True)
    in_kernel = False
    if os.geteuid() == 0:
        try:
            fw = IpsetFirewall(SetNames(config.service.ipset_v4, config.service.ipset_v6), config.service.maxelem,
                               config.ipv4_prefix, config.ipv6_prefix)
            in_kernel = fw.unban(network)
            fw.close()
        except FirewallError as e:
            print(f"inspector: warning: {e}", file=sys.stderr)
    print(f"unbanned {network}" + ("" if found or in_kernel else " (it was not banned)"))
    return 0
