"""Watch ipsets in the current namespace; report when each entry first appeared.

``python watch_ipset.py SET[,SET] EXPECTED MAX_SECONDS [INTERVAL]``

Polls the sets over netlink (pyroute2) every INTERVAL seconds (default 0.001)
until EXPECTED entries were seen or MAX_SECONDS passed, then prints one JSON
object ``{entry: first-seen CLOCK_MONOTONIC time}``.  Prints ``ready`` first.
"""

from __future__ import annotations

import json
import sys
import time

from pyroute2 import IPSet


def entries(ips: IPSet, name: str) -> list[str]:
    out = []
    for msg in ips.list(name):
        adt = msg.get_attr("IPSET_ATTR_ADT")
        if adt is None:
            continue
        for e in adt.get_attrs("IPSET_ATTR_DATA"):
            ip = e.get_attr("IPSET_ATTR_IP_FROM")
            addr = ip.get_attr("IPSET_ATTR_IPADDR_IPV4") or ip.get_attr("IPSET_ATTR_IPADDR_IPV6")
            cidr = e.get_attr("IPSET_ATTR_CIDR")
            full = 128 if ":" in addr else 32
            out.append(addr if cidr is None or cidr == full else f"{addr}/{cidr}")
    return out


def main() -> None:
    names = sys.argv[1].split(",")
    expected, limit = int(sys.argv[2]), float(sys.argv[3])
    interval = float(sys.argv[4]) if len(sys.argv) > 4 else 0.001
    ips = IPSet()
    seen: dict[str, float] = {}
    print("ready", flush=True)
    deadline = time.monotonic() + limit
    try:
        while len(seen) < expected and time.monotonic() < deadline:
            for name in names:
                for entry in entries(ips, name):
                    if entry not in seen:
                        seen[entry] = time.monotonic()
            time.sleep(interval)
    finally:
        ips.close()
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
