"""SYN flood sender of the line-rate benchmark; runs in the client namespace (raw socket).

    python flood.py '<json config>'

Config: ``dst``, ``port``; ``sources`` distinct flood sources counted up from ``base``,
each sending one SYN per pass (``passes``, default 1); ``attackers`` (a list of addresses)
that each send ``per_attacker`` SYNs, spread evenly through the flood so they exceed the
rate limit while it runs (with ``attacker_connections``, real connections instead, opened and
closed from a thread while the flood runs: only connections whose handshake completed count
towards the rate limit, so bare SYNs from them would never be banned; an attacker stops at its
first connection that times out, that is once the kernel drops it);
``max_seconds``.  Every SYN has its own source port and sequence number (so none of them is
a retransmission), an MSS option, and a correct TCP checksum; the kernel fills in the IPv4
header checksum and length (IPPROTO_RAW implies IP_HDRINCL).

The packets are built before the clock starts; then they are sent back to back, as fast as
one Python loop can call ``sendto`` — bounded by the packet count and by ``max_seconds``.
Prints ``go`` when sending starts, then one JSON line: packets sent, seconds, rate, and
send errors (ENOBUFS and the like are counted and skipped, never retried).
"""

from __future__ import annotations

import array
import ipaddress
import json
import resource
import signal
import socket
import struct
import sys
import threading
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(array.array("H", data))  # native order; folded and swapped below
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    s = ~s & 0xFFFF
    return socket.ntohs(s) if sys.byteorder == "little" else s


def syn(src: bytes, dst: bytes, sport: int, dport: int, seq: int) -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0x4000, 64, socket.IPPROTO_TCP, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, (6 << 4), 0x02, 64240, 0, 0) + b"\x02\x04\x05\xb4"
    pseudo = struct.pack("!4s4sBBH", src, dst, 0, socket.IPPROTO_TCP, len(tcp))
    c = checksum(pseudo + tcp)
    return ip + tcp[:16] + struct.pack("!H", c) + tcp[18:]


def build(cfg: dict) -> list[bytes]:
    dst = socket.inet_aton(cfg["dst"])
    dport = int(cfg.get("port", 25))
    n = int(cfg["sources"])
    base = int(ipaddress.ip_address(cfg["base"]))
    pkts = [syn(struct.pack("!I", base + i), dst, 1024 + (i * 7919 + p * 15013) % 64000, dport,
                (i * 2654435761 + p * 97) & 0xFFFFFFFF)
            for p in range(int(cfg.get("passes", 1))) for i in range(n)]
    attackers = [socket.inet_aton(a) for a in cfg.get("attackers", [])]
    per = int(cfg.get("per_attacker", 0))
    if attackers and per and not cfg.get("attacker_connections"):
        extra = []
        for k in range(per):
            for j, a in enumerate(attackers):
                extra.append((int((k + 0.5) * len(pkts) / per) if pkts else 0,
                              syn(a, dst, 2000 + k * 37 + j, dport, (k * 40503 + j * 7) & 0xFFFFFFFF)))
        # insert from the back so the earlier positions stay valid
        for pos, pkt in sorted(extra, key=lambda e: e[0], reverse=True):
            pkts.insert(pos, pkt)
    return pkts


def connect_attackers(cfg: dict, result: dict) -> None:
    """Real connections from each attacker (open, close), until one times out."""
    opened = 0
    for _ in range(int(cfg.get("per_attacker", 0))):
        for a in list(cfg["attackers"]):
            try:
                with socket.create_connection((cfg["dst"], int(cfg.get("port", 25))), timeout=0.3,
                                              source_address=(a, 0)):
                    opened += 1
            except OSError:
                cfg["attackers"].remove(a)
    result["attacker_connections"] = opened


def main() -> int:
    cfg = json.loads(sys.argv[1])
    max_seconds = float(cfg.get("max_seconds", 30))
    signal.alarm(int(max_seconds + 60))  # the last resort
    pkts = build(cfg)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    addr = (cfg["dst"], 0)
    send = s.sendto
    errors = 0
    sent = 0
    print("go", flush=True)
    extra: dict = {}
    attack = None
    if cfg.get("attacker_connections") and cfg.get("attackers"):
        attack = threading.Thread(target=connect_attackers, args=(dict(cfg, attackers=list(cfg["attackers"])), extra))
        attack.start()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    deadline = t0 + max_seconds
    chunk = 1024
    for start in range(0, len(pkts), chunk):
        for p in pkts[start:start + chunk]:
            try:
                send(p, addr)
                sent += 1
            except OSError:
                errors += 1
        if time.monotonic() > deadline:
            break
    t1 = time.monotonic()
    if attack is not None:
        attack.join(timeout=max_seconds)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    s.close()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    print(json.dumps({"t_go": t0, "t_end": t1, "planned": len(pkts), "sent": sent, "errors": errors,
                      "seconds": t1 - t0, "rate": sent / max(t1 - t0, 1e-9), "cpu": cpu,
                      "complete": sent + errors == len(pkts), **extra}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
