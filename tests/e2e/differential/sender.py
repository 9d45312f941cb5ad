"""The differential client: sends exact TCP segments from the client namespace.

``python sender.py SPEC.json`` (run with ``ip netns exec CLIENT``).  SPEC is
``{"iface": "veth-c", "sessions": [SESSION, ...]}`` and each SESSION is::

    {"src": "198.51.100.100", "dst": "192.0.2.25", "dport": 25, "sport": 40001, "isn": 1000,
     "timestamps": false, "pcap": "/path/case.pcap", "settle": 0.4,
     "segments": [{"data": "<hex>", "off": null, "seq": null, "flags": "PA", "urg": 0,
                   "tsval": null, "wait": 0.03}, ...]}

Frames are written on an AF_PACKET socket (below the client's own IP stack and its
firewall), so each segment leaves byte for byte and flag for flag as specified; the
client kernel's own RSTs for this unknown connection are dropped by an OUTPUT rule the
bed installs in the client namespace.  Replies are read on the same socket: the client
answers the SYN-ACK with an ACK and acknowledges server data with pure ACKs (each data
segment also carries the current acknowledgement number).

A segment's sequence number is ``seq`` (absolute) when given, else ISN + 1 + ``off``
(stream offset), else the next byte after the previous segment.  ``flags`` uses
scapy's letters (``S`` ``A`` ``P`` ``U`` ``F`` ``R``); ``A`` is added to every
non-SYN segment that does not say ``"noack": true``.  With ``"timestamps": true`` the
SYN offers TCP timestamps and every segment carries one (TSval from a counter, or
``tsval`` when given; TSecr echoes the server's last TSval).

After the last segment the client waits until the server has been quiet for
``settle`` seconds, sends a FIN after the highest byte sent, waits for the server's FIN
(Postfix has then read everything before it; at most 8 s) and sends an RST.  Every
frame sent is written to ``pcap`` (Ethernet link type, send time), in order; with
``"pcap_replies": PATH`` every frame sent and every frame of the server received is written
there too (a two-sided capture: the engine reads the server's replies from it).  A segment
whose last line is ``DATA`` is followed by a wait for the server's reply to it (at most 3 s),
as a client waits for the 354 (RFC 5321 §4.1.1.4, RFC 2920 §3.1).  Prints one JSON result
per session: ``{"synack": bool, "server_bytes": n, "reply": "..."}``.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from typing import Any

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import PcapWriter

ETH_P_ALL = 0x0003


class Session:
    def __init__(self, sock: socket.socket, macs: tuple[str, str], spec: dict[str, Any]) -> None:
        self.sock = sock
        self.src_mac, self.dst_mac = macs
        self.spec = spec
        self.src, self.dst = spec["src"], spec["dst"]
        self.v6 = ":" in self.src
        self.sport, self.dport = spec["sport"], spec.get("dport", 25)
        self.isn = spec.get("isn", 1000)
        self.ts = bool(spec.get("timestamps"))
        self.tsval = 100
        self.ts_recent = 0
        self.rcv_nxt: int | None = None  # next server byte expected (our ack number)
        self.server_data = b""
        self.synack = False
        self.server_fin = False
        self.server_rst = False
        self.writer = PcapWriter(spec["pcap"], linktype=1, sync=True)
        both = spec.get("pcap_replies")
        self.both = PcapWriter(both, linktype=1, sync=True) if both else None
        self.high = 0  # stream offset after the highest byte sent

    # ---- frames ------------------------------------------------------------------------------------
    def frame(self, seq: int, flags: str, data: bytes = b"", urg: int = 0, tsval: int | None = None,
              ack: bool = True, syn_options: bool = False, window: int = 64240) -> bytes:
        ip = IPv6(src=self.src, dst=self.dst) if self.v6 else IP(src=self.src, dst=self.dst)
        options: list[Any] = []
        if syn_options:
            options = [("MSS", 1460), ("SAckOK", b""), ("WScale", 7)]
        if self.ts and tsval != -1:  # tsval -1: this segment carries no timestamp option
            self.tsval += 1
            options.append(("Timestamp", (tsval if tsval is not None else self.tsval, self.ts_recent)))
        if ack and "A" not in flags and "S" not in flags:
            flags += "A"
        acknum = self.rcv_nxt or 0 if "A" in flags else 0
        tcp = TCP(sport=self.sport, dport=self.dport, seq=seq & 0xFFFFFFFF, ack=acknum & 0xFFFFFFFF,
                  flags=flags, window=window, urgptr=urg, options=options)
        pkt = Ether(src=self.src_mac, dst=self.dst_mac) / ip / tcp
        if data:
            pkt = pkt / Raw(data)
        return bytes(pkt)

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)
        self.writer.write(Ether(frame))
        if self.both is not None:
            self.both.write(Ether(frame))

    # ---- replies -------------------------------------------------------------------------------------
    def poll(self, seconds: float) -> bool:
        """Read replies for ``seconds``; ACK server data.  True if anything arrived for us."""
        deadline = time.monotonic() + seconds
        got = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return got
            self.sock.settimeout(left)
            try:
                raw = self.sock.recv(65535)
            except TimeoutError:
                return got
            except OSError:
                return got
            try:
                eth = Ether(raw)
            except Exception:  # noqa: BLE001 - not ours
                continue
            ipl = eth.getlayer(IPv6 if self.v6 else IP)
            if ipl is None or ipl.src != self.dst or ipl.dst != self.src:
                continue
            tcp = ipl.getlayer(TCP)
            if tcp is None or tcp.sport != self.dport or tcp.dport != self.sport:
                continue
            got = True
            if self.both is not None:
                self.both.write(eth)
            for name, value in tcp.options:
                if name == "Timestamp":
                    self.ts_recent = value[0]
            flags = int(tcp.flags)
            payload = bytes(tcp.payload) if tcp.payload else b""
            if flags & 0x12 == 0x12:  # SYN-ACK
                self.synack = True
                self.rcv_nxt = (tcp.seq + 1) & 0xFFFFFFFF
                continue
            if self.rcv_nxt is None:
                continue
            if flags & 0x01:
                self.server_fin = True
            if flags & 0x04:
                self.server_rst = True
                continue
            advance = len(payload) + (1 if flags & 0x01 else 0)
            if advance and tcp.seq == self.rcv_nxt:
                self.rcv_nxt = (self.rcv_nxt + advance) & 0xFFFFFFFF
                self.server_data += payload
                self.send(self.frame(self.isn + 1 + self.high, "A"))
            elif advance:
                self.send(self.frame(self.isn + 1 + self.high, "A"))  # duplicate: re-ACK

    def await_data_reply(self, before: int, limit: float = 3.0) -> None:
        """Wait until the server's data after byte ``before`` holds a DATA reply (a final line whose
        code is not 2xx: 354, or a refusal), at most ``limit`` seconds."""
        end = time.monotonic() + limit
        while time.monotonic() < end and not self.server_rst and not self.server_fin:
            if any(line[3:4] == b" " and line[:1] in (b"3", b"4", b"5")
                   for line in self.server_data[before:].split(b"\r\n")):
                return
            self.poll(0.02)

    def quiet(self, settle: float, limit: float = 8.0) -> None:
        """Wait until the server sent nothing for ``settle`` seconds (at most ``limit``)."""
        end = time.monotonic() + limit
        while time.monotonic() < end and self.poll(settle):
            pass

    # ---- the session -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        # "syn_data": bytes on the SYN itself (Linux delivers them only with a Fast Open cookie)
        syn = self.frame(self.isn, "S", bytes.fromhex(self.spec.get("syn_data", "")), syn_options=True)
        for _ in range(3):  # retransmitted (same ISN) if lost, as a client kernel would
            self.send(syn)
            end = time.monotonic() + 1
            while not self.synack and time.monotonic() < end:
                self.poll(0.05)
            if self.synack:
                break
        if not self.synack:
            self.writer.close()
            return {"synack": False, "server_bytes": 0, "reply": ""}
        self.send(self.frame(self.isn + 1, "A"))
        self.quiet(0.15, 3)  # the banner
        nxt = 0
        for seg in self.spec["segments"]:
            data = bytes.fromhex(seg.get("data", ""))
            flags = seg.get("flags", "PA")
            if seg.get("seq") is not None:
                seq = seg["seq"]
                off = (seq - self.isn - 1) & 0xFFFFFFFF
                if off >= 0x80000000:
                    off = 0
            else:
                off = seg["off"] if seg.get("off") is not None else nxt
                seq = self.isn + 1 + off
            before = len(self.server_data)
            window = 64240 if seg.get("window") is None else seg["window"]
            self.send(self.frame(seq, flags, data, seg.get("urg", 0), seg.get("tsval"),
                                 ack=not seg.get("noack", False), window=window))
            if seg.get("seq") is None and "S" not in flags:
                nxt = off + len(data)
                self.high = max(self.high, nxt)
            self.poll(seg.get("wait", 0.03))
            if data.rstrip(b"\r\n").rpartition(b"\n")[2].strip().upper() == b"DATA":
                self.await_data_reply(before)
        self.quiet(self.spec.get("settle", 0.2))
        # FIN after the last byte: the server reads everything before its end of file, then closes;
        # wait for its FIN (a hole that never fills: up to 8 s), then RST what is left
        self.send(self.frame(self.isn + 1 + self.high, "FA"))
        end = time.monotonic() + 8
        while not self.server_fin and not self.server_rst and time.monotonic() < end:
            self.poll(0.05)
        self.send(self.frame(self.isn + 2 + self.high, "R", ack=False))
        self.writer.close()
        if self.both is not None:
            self.both.close()
        return {"synack": True, "server_bytes": len(self.server_data),
                "reply": self.server_data.decode("utf-8", "replace")}


def mac(iface: str) -> str:
    with open(f"/sys/class/net/{iface}/address") as f:
        return f.read().strip()


def main() -> int:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    iface = spec.get("iface", "veth-c")
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    macs = (mac(iface), spec["peer_mac"])
    results = []
    for s in spec["sessions"]:
        results.append(Session(sock, macs, s).run())
    sock.close()
    json.dump(results, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
