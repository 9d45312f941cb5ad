"""Forged packets from the client namespace: ``python forge.py SPEC.json``.

SPEC: ``{"iface": "veth-c", "peer_mac": "..", "batches": [BATCH, ...]}``; each BATCH is
``{"src": ADDR, "dst": ADDR, "dport": 25, "sport": 1024, "count": 1, "payload": "<hex>",
"flags": "S", "spread64": false, "pace": 0}``: ``count`` packets from ``sport`` upwards; with
``spread64`` (IPv6) the n-th comes from its own /64 (``src``'s first 32 bits, then n).
``pace`` (frames per second, 0 = as fast as possible) keeps a flood from overflowing the
server's queue (overflowing packets would pass uninspected, fail-open).
Frames go out on a packet socket with correct checksums (conntrack would call a bad
checksum INVALID and the packet would never reach the inspector); nobody answers the
server's SYN-ACKs: the sources are spoofed.  Prints the number of frames sent.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import sys
import time

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _tcp_checksum(src: bytes, dst: bytes, segment: bytes) -> int:
    pseudo = src + dst + (struct.pack("!BBH", 0, 6, len(segment)) if len(src) == 4
                          else struct.pack("!I3xB", len(segment), 6))
    return ~_sum16(pseudo + segment) & 0xFFFF


def frames(batch: dict, macs: tuple[str, str]):  # noqa: ANN201 - a generator of bytes
    src, dst = batch["src"], batch["dst"]
    v6 = ":" in src
    payload = bytes.fromhex(batch.get("payload", ""))
    ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst)
    template = bytearray(bytes(Ether(src=macs[0], dst=macs[1]) / ip /
                               TCP(sport=1, dport=batch.get("dport", 25), flags=batch.get("flags", "S"),
                                   seq=0x1000, options=[("MSS", 1460)]) / payload))
    ipoff = 14
    tcpoff = ipoff + (40 if v6 else 20)
    saddr = slice(ipoff + 8, ipoff + 24) if v6 else slice(ipoff + 12, ipoff + 16)
    daddr = bytes(template[ipoff + 24:ipoff + 40] if v6 else template[ipoff + 16:ipoff + 20])
    base = ipaddress.ip_address(src).packed
    for n in range(batch.get("count", 1)):
        if batch.get("spread64"):
            template[saddr] = base[:4] + struct.pack("!I", n) + base[8:]
            if not v6:
                raise ValueError("spread64 is for IPv6")
        template[tcpoff:tcpoff + 2] = struct.pack("!H", (batch.get("sport", 1024) + n) % 64512 + 1024)
        template[tcpoff + 4:tcpoff + 8] = struct.pack("!I", (0x1000 + n * 7919) & 0xFFFFFFFF)
        template[tcpoff + 16:tcpoff + 18] = b"\0\0"
        csum = _tcp_checksum(bytes(template[saddr]), daddr, bytes(template[tcpoff:]))
        template[tcpoff + 16:tcpoff + 18] = struct.pack("!H", csum)
        yield bytes(template)


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    iface = spec.get("iface", "veth-c")
    with open(f"/sys/class/net/{iface}/address") as f:
        own = f.read().strip()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((iface, 0))
    sent = 0
    for batch in spec["batches"]:
        pace = batch.get("pace", 0)
        start = time.monotonic()
        for i, frame in enumerate(frames(batch, (own, spec["peer_mac"]))):
            if pace and i % 100 == 0:
                ahead = start + i / pace - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
            while True:
                try:
                    sock.send(frame)
                    break
                except BlockingIOError:
                    continue
                except OSError as e:  # ENOBUFS under a burst: retry
                    if e.errno != 105:
                        raise
            sent += 1
    sock.close()
    print(sent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
