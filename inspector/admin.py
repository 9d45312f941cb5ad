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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from .bans import BanStore, StateError
from .config import Config, load_config
from .control import control_request, control_stream
from .events import now_iso
from .firewall import FirewallError, IpsetFirewall, SetNames
from .manual import TargetError, ban_form, parse_duration, parse_target
from .perms import NeedsRoot, needs_root_message
from .safetext import printable

T = TypeVar("T")

__all__ = ["ban", "list_bans", "printable", "unban"]


class _Failed(Exception):
    """A control request failed; its one-line error is already printed."""


def _ask(call: Callable[[], T], failure: str, hint: str = "") -> T:
    """``call()`` (a control request), with its errors as one line on stderr and :class:`_Failed`:
    "needs root" as it is, a socket or protocol error after ``failure`` (and ``hint``)."""
    try:
        return call()
    except NeedsRoot as e:
        print(f"inspector: error: {e}", file=sys.stderr)
    except (OSError, ValueError) as e:
        print(f"inspector: error: {failure}: {e}" + (f" ({hint})" if hint else ""), file=sys.stderr)
    raise _Failed


def list_bans(config_path: str | None, as_json: bool) -> int:
    """``inspector bans``: the active bans as the running service streams them (any number), else from the state
    file; one line (or, with ``as_json``, one JSON object) per ban, wire text escaped. Returns the exit code (1 with
    a one-line error: no permission, the state file is unreadable, the list was cut off).
    """
    config = load_config(config_path)
    try:
        answer = _ask(lambda: control_stream(config.service.control_socket, {"cmd": "bans"}),
                      f"cannot ask the service on {config.service.control_socket}")
    except _Failed:
        return 1
    bans: Iterable[dict[str, Any]]
    if answer is not None:
        header, items = answer
        if not header.get("ok"):
            print(f"inspector: error: {printable(header.get('error'))}", file=sys.stderr)
            return 1
        bans = items if header.get("stream") else header.get("bans", [])
        count = header.get("count", "?")
        source = "running service"
    else:
        now = time.time()
        store = BanStore(Path(config.service.state_file))
        try:
            store.load(now)
        except StateError as e:
            print(f"inspector: error: {e}", file=sys.stderr)
            return 1
        except PermissionError:
            message = needs_root_message("cannot read the ban state", config.service.state_file)
            print(f"inspector: error: {message}", file=sys.stderr)
            return 1
        active = store.active(now)
        count = len(active)
        bans = ({"network": r.network, "reason": r.reason, "rule": r.rule, "seconds_left": int(r.expires - now),
                 "expires_at": now_iso(r.expires), "origin": r.origin} for r in active)
        source = f"state file {config.service.state_file} (service not running)"
    try:
        if as_json:
            for b in bans:
                sys.stdout.write(json.dumps(b) + "\n")
            return 0
        print(f"{count} active bans, from the {source}")
        for b in bans:
            left = int(b["seconds_left"])
            sys.stdout.write(f"{printable(b['network']):<40} {printable(b['reason']):<10} {left // 3600:>3}h"
                             f"{left % 3600 // 60:02d}m left  {printable(b.get('origin') or 'local'):<16} "
                             f"{printable(b.get('rule') or '')}\n")
    except (OSError, ValueError) as e:
        if isinstance(e, BrokenPipeError):
            raise
        print(f"inspector: error: the list was cut off: {e}", file=sys.stderr)
        return 1
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
    request = {"cmd": "ban", "networks": networks, "seconds": seconds, "reason": reason}
    try:
        reply = _ask(lambda: control_request(config.service.control_socket, request, timeout=10),
                     f"the service on {config.service.control_socket} did not answer")
    except _Failed:
        return 1
    if reply is None:
        print(f"inspector: error: no service answers on {config.service.control_socket}: manual bans go through "
              "the running service (it knows what must never be banned, and tells the fleet)", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(f"inspector: error: {printable(reply.get('error'))}", file=sys.stderr)
        return 1
    for network in reply.get("banned", []):
        print(f"banned {printable(network)} for {seconds}s")
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
    try:
        reply = _ask(lambda: control_request(config.service.control_socket, {"cmd": "unban", "network": address},
                                             timeout=10),
                     f"the service on {config.service.control_socket} did not answer", "nothing was changed here; "
                     "try again")
    except _Failed:
        return 1
    if reply is not None:
        if not reply.get("ok"):
            print(f"inspector: error: {printable(reply.get('error'))}", file=sys.stderr)
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
    store = BanStore(Path(config.service.state_file), config.files)
    try:
        store.load(time.time())
        found = store.remove(network)
        store.save(time.time(), compact=True)
    except StateError as e:
        print(f"inspector: warning: {e}", file=sys.stderr)
        found = store.remove(network)
    except PermissionError:
        message = needs_root_message("cannot change the ban state", config.service.state_file)
        print(f"inspector: error: {message}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"inspector: error: cannot save the ban state {store.path}: {e.strerror or e}", file=sys.stderr)
        return 1
    in_kernel = False
    if os.geteuid() != 0:
        print("inspector: warning: needs root: the kernel's ban set was not changed (run as root)", file=sys.stderr)
    else:
        try:
            fw = IpsetFirewall(SetNames(config.service.ipset_v4, config.service.ipset_v6), config.service.maxelem,
                               config.ipv4_prefix, config.ipv6_prefix)
            in_kernel = fw.unban(network)
            fw.close()
        except FirewallError as e:
            print(f"inspector: warning: {e}", file=sys.stderr)
    print(f"unbanned {network}" + ("" if found or in_kernel else " (it was not banned)"))
    return 0
