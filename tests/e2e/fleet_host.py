"""One fleet host for the end-to-end tests: the fleet client, a ban pipeline and a real
:class:`~inspector.firewall.IpsetFirewall` in the network namespace it is started in.

Run as ``python -m tests.e2e.fleet_host --url URL --host ID --state DIR [--whitelist CIDR]...``
(in a host namespace).  It reads one JSON request per line on stdin and answers one JSON
line on stdout:

* ``{"cmd": "ban", "nets": [...], "seconds": N, "pace": S}``: issue each through the pipeline
  (``pace`` seconds apart); answers each ban's issue time and how long ``issue`` took;
* ``{"cmd": "unban", "net": X}``; ``{"cmd": "applied"}``: when each peer ban reached the
  kernel set (the time right after the netlink add returned); ``{"cmd": "kernel"}``: the
  set's entries; ``{"cmd": "status"}``: the fleet's status section; ``{"cmd": "stop"}``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from inspector.bans import BanRecord, BanStore
from inspector.firewall import IpsetFirewall
from inspector.fleet import FleetBan, FleetClient, FleetSettings


class Ban:
    """The pipeline's ban (the shared contract's fields)."""

    def __init__(self, network: str, seconds: int, reason: str, rule: str | None = None, path: str = "packet",
                 origin: str | None = None) -> None:
        self.network, self.seconds, self.reason, self.rule, self.path, self.origin = \
            network, seconds, reason, rule, path, origin


def own_addresses() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = json.loads(subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout)
    return [ipaddress.ip_network(a["local"]) for link in out for a in link.get("addr_info", [])]


class HostPipeline:
    """Thread-safe: protected networks refused, then the store, the kernel set, the listeners."""

    def __init__(self, firewall: IpsetFirewall, store: BanStore, whitelist: list[str]) -> None:
        self.firewall = firewall
        self.store = store
        self.protected = [ipaddress.ip_network(w) for w in whitelist]
        self.own = own_addresses()
        self.listeners: list[Callable[[str, Any], None]] = []
        self.applied: dict[str, float] = {}
        self.refused: list[str] = []
        self.lock = threading.Lock()

    def protects(self, network: str) -> str | None:
        net = ipaddress.ip_network(network, strict=False)
        if any(net.overlaps(p) for p in self.protected):
            return "whitelist"
        if any(net.overlaps(p) for p in self.own):
            return "own address"
        return None

    def issue(self, ban: Ban, now: float) -> bool:
        if self.protects(ban.network):
            with self.lock:
                self.refused.append(ban.network)
            return False
        with self.lock:
            self.store.add(BanRecord(ban.network, now + ban.seconds, ban.reason, ban.rule, now))
            self.firewall.ban(ban.network, ban.seconds)
            if ban.path == "fleet":
                self.applied[ban.network] = time.time()
        for listener in self.listeners:
            listener("ban", ban)
        return True

    def lift(self, network: str, now: float, path: str = "manual") -> bool:
        with self.lock:
            self.store.remove(network)
            found = self.firewall.unban(network)
        for listener in self.listeners:
            listener("unban", network)
        return found


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--host", required=True)
    ap.add_argument("--state", required=True)
    ap.add_argument("--keep", type=int, default=3600)
    ap.add_argument("--whitelist", action="append", default=[])
    args = ap.parse_args()
    state = Path(args.state)
    state.mkdir(parents=True, exist_ok=True)
    firewall = IpsetFirewall()
    firewall.ensure_sets()
    store = BanStore(state / "bans.json")
    store.load(time.time())
    pipeline = HostPipeline(firewall, store, args.whitelist)
    out_lock = threading.Lock()

    def reply(obj: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def issue(b: FleetBan, now: float) -> bool:
        return pipeline.issue(Ban(b.network, b.seconds, b.reason, b.rule, "fleet", b.origin), now)

    client = FleetClient(FleetSettings(url=args.url, host=args.host, keep=args.keep), state / "bans.json.fleet",
                         issue, lambda n, now: pipeline.lift(n, now, "fleet"), lambda e: None)
    pipeline.listeners.append(client.on_local)
    client.start()
    reply({"ready": True})
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "ban":
            issued = []
            for net in req["nets"]:
                t = time.time()
                p = time.perf_counter()
                ok = pipeline.issue(Ban(net, int(req.get("seconds", 3600)), "manual", req.get("rule"), "manual"), t)
                issued.append((net, t, time.perf_counter() - p, ok))
                if req.get("pace"):
                    time.sleep(req["pace"])
            reply({"issued": issued})
        elif cmd == "unban":
            reply({"lifted": pipeline.lift(req["net"], time.time())})
        elif cmd == "applied":
            with pipeline.lock:
                reply({"applied": dict(pipeline.applied), "refused": list(pipeline.refused)})
        elif cmd == "kernel":
            with pipeline.lock:
                reply({"kernel": [n for n, _ in firewall.bans()]})
        elif cmd == "status":
            reply({"status": client.status()})
        elif cmd == "stop":
            break
    client.close()
    store.save(time.time(), compact=True)
    firewall.close()
    reply({"stopped": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
