"""One fleet host for the end-to-end tests: the fleet client, the ban pipeline and a real
:class:`~inspector.firewall.IpsetFirewall` in the network namespace it is started in (the
service's parts without the packet path; ``test_fleet_service.py`` runs ``inspector run``).

Run as ``python -m tests.e2e.fleet_host --url URL --host ID --state DIR [--whitelist CIDR]...``
(in a host namespace).  It reads one JSON request per line on stdin and answers one JSON
line on stdout:

* ``{"cmd": "ban", "nets": [...], "seconds": N, "pace": S}``: issue each through the pipeline
  (``pace`` seconds apart); answers each ban's issue time and how long ``issue`` took;
* ``{"cmd": "unban", "net": X}``; ``{"cmd": "applied"}``: when each peer ban reached the
  kernel set (the time right after the netlink add returned) and the refused networks;
  ``{"cmd": "status"}``: the fleet's status section; ``{"cmd": "stop"}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from inspector.bans import BanStore
from inspector.firewall import IpsetFirewall
from inspector.fleet import FleetBan, FleetClient, FleetSettings
from inspector.nets import Whitelist, own_addresses
from inspector.respond.bans import Ban, BanPipeline


class Events:
    """Keeps the refusals (the pipeline's ``ban-refused`` events), in order."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    def emit(self, event: dict[str, Any]) -> None:
        if event.get("event") == "ban-refused":
            self.refused.append(str(event["network"]))


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
    events = Events()
    pipeline = BanPipeline(BanStore(state / "bans.json"), firewall, events, Whitelist(args.whitelist),
                           own_addresses())
    pipeline.restore(time.time())
    applied: dict[str, float] = {}

    def note(kind: str, what: Ban | str) -> None:  # after the kernel add: when a peer's ban took effect
        if kind == "ban" and isinstance(what, Ban) and what.path == "fleet":
            applied[what.network] = time.time()

    pipeline.add_listener(note)
    out_lock = threading.Lock()

    def reply(obj: dict[str, Any]) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def issue(b: FleetBan, now: float) -> bool:
        return pipeline.issue(Ban(b.network, b.seconds, b.reason, b.rule, "fleet", b.origin), now)

    client = FleetClient(FleetSettings(url=args.url, host=args.host, keep=args.keep), state / "bans.json.fleet",
                         issue, lambda n, now: pipeline.lift(n, now, "fleet"), lambda e: None)
    pipeline.add_listener(client.on_local)
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
            reply({"applied": dict(applied), "refused": list(events.refused)})
        elif cmd == "status":
            reply({"status": client.status()})
        elif cmd == "stop":
            break
    client.close()
    pipeline.save(time.time(), compact=True)
    firewall.close()
    reply({"stopped": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
