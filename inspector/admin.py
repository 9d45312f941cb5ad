"""``inspector bans`` and ``inspector unban``: ask the running service, or act on the state directly."""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from pathlib import Path


from .bans import BanStore, StateError
from .config import load_config
from .events import now_iso
from .firewall import FirewallError, IpsetFirewall, SetNames
from .nets import ban_network
from .control import control_request


def list_bans(config_path: str | None, as_json: bool) -> int:
    config = load_config(config_path)
    reply = control_request(config.service.control_socket, {"cmd": "bans"})
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
                 "expires_at": now_iso(r.expires)} for r in store.active(now)]
        source = f"state file {config.service.state_file} (service not running)"
    if as_json:
        for b in bans:
            print(json.dumps(b))
        return 0
    print(f"{len(bans)} active bans, from the {source}")
    for b in bans:
        left = int(b["seconds_left"])
        print(f"{b['network']:<40} {b['reason']:<10} {left // 3600:>3}h{left % 3600 // 60:02d}m left"
              f"  {b.get('rule') or ''}")
    return 0


def unban(config_path: str | None, address: str) -> int:
    config = load_config(config_path)
    try:
        ipaddress.ip_network(address, strict=False)
    except ValueError:
        print(f"inspector: error: {address!r} is not an address or network", file=sys.stderr)
        return 1
    reply = control_request(config.service.control_socket, {"cmd": "unban", "network": address})
    if reply is not None:
        if not reply.get("ok"):
            print(f"inspector: error: {reply.get('error')}", file=sys.stderr)
            return 1
        print(f"unbanned {reply['network']}" + ("" if reply.get("was_banned") else " (it was not banned)"))
        return 0
    # no service: edit the state and the kernel set directly
    network = ban_network(address, ipv6_prefix=config.ipv6_prefix, ipv4_prefix=config.ipv4_prefix)
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
