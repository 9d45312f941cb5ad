"""A streaming pcap / pcapng reader that yields IP datagrams.

Reads the file in large blocks and parses record headers with ``struct``: no
per-packet objects beyond the datagram's bytes.  Link layers: Ethernet (with
802.1Q/802.1ad tags), raw IP, Linux cooked capture v1 and v2, BSD loopback.
Frames that carry no IP are counted in ``non_ip`` and skipped.  A truncated
or corrupt file raises :class:`CaptureError` after every complete packet
before the damage has been yielded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

__all__ = ["CaptureError", "CaptureReader", "strip_link"]

_BLOCK = 1 << 20

ETHERNET, RAW, RAW_BSD, RAW_OPENBSD, IPV4_ONLY, IPV6_ONLY = 1, 101, 12, 14, 228, 229
NULL, LOOP, LINUX_SLL, LINUX_SLL2 = 0, 108, 113, 276
_VLAN = (0x8100, 0x88A8, 0x9100)
_AF_INET6 = (10, 24, 28, 30)  # Linux, BSDs, FreeBSD, macOS


class CaptureError(Exception):
    """The capture cannot be read (further)."""


def strip_link(linktype: int, frame: bytes) -> bytes | None:
    """Return the IP datagram inside a link-layer frame, or None if it is not IP."""
    if linktype == ETHERNET:
        if len(frame) < 14:
            return None
        off = 12
        etype = (frame[off] << 8) | frame[off + 1]
        while etype in _VLAN and len(frame) >= off + 6:
            off += 4
            etype = (frame[off] << 8) | frame[off + 1]
        if etype == 0x0800 or etype == 0x86DD:
            return frame[off + 2:]
        return None
    if linktype in (RAW, RAW_BSD, RAW_OPENBSD, IPV4_ONLY, IPV6_ONLY):
        return frame if frame and frame[0] >> 4 in (4, 6) else None
    if linktype == LINUX_SLL:
        if len(frame) < 16:
            return None
        proto = (frame[14] << 8) | frame[15]
        return frame[16:] if proto in (0x0800, 0x86DD) else None
    if linktype == LINUX_SLL2:
        if len(frame) < 20:
            return None
        proto = (frame[0] << 8) | frame[1]
        return frame[20:] if proto in (0x0800, 0x86DD) else None
    if linktype in (NULL, LOOP):
        if len(frame) < 4:
            return None
        fam_le = int.from_bytes(frame[:4], "little")
        fam_be = int.from_bytes(frame[:4], "big")
        fam = fam_be if linktype == LOOP else (fam_le if fam_le < 256 else fam_be)
        return frame[4:] if fam == 2 or fam in _AF_INET6 else None
    return None


class CaptureReader:
    """Iterate ``(timestamp, datagram)`` over a pcap or pcapng stream."""

    def __init__(self, stream: BinaryIO, name: str = "capture") -> None:
        self.stream = stream
        self.name = name
        self.records = 0
        self.non_ip = 0
        self.bytes_read = 0
        self.format = ""

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        head = self.stream.read(4)
        if len(head) < 4:
            raise CaptureError(f"{self.name}: empty or too short to be a capture")
        if head == b"\x0a\x0d\x0d\x0a":
            self.format = "pcapng"
            return self._pcapng(head)
        self.format = "pcap"
        return self._pcap(head)

    # -- classic pcap -----------------------------------------------------------

    def _pcap(self, magic: bytes) -> Iterator[tuple[float, bytes]]:
        table = {
            b"\xd4\xc3\xb2\xa1": ("<", 1e-6), b"\xa1\xb2\xc3\xd4": (">", 1e-6),
            b"\x4d\x3c\xb2\xa1": ("<", 1e-9), b"\xa1\xb2\x3c\x4d": (">", 1e-9),
        }
        if magic not in table:
            raise CaptureError(f"{self.name}: not a pcap or pcapng file (magic {magic.hex()})")
        order, scale = table[magic]
        rest = self.stream.read(20)
        if len(rest) < 20:
            raise CaptureError(f"{self.name}: truncated pcap file header")
        linktype = struct.unpack(order + "I", rest[16:20])[0] & 0x0FFFFFFF
        rec = struct.Struct(order + "IIII").unpack_from
        read = self.stream.read
        buf = read(_BLOCK)
        pos = 0
        offset = 24
        strip = strip_link
        while True:
            if pos + 16 > len(buf):
                more = read(_BLOCK)
                if not more:
                    if pos < len(buf):
                        raise CaptureError(f"{self.name}: truncated record header at byte {offset} "
                                           f"after {self.records} packets")
                    return
                buf = buf[pos:] + more
                pos = 0
                continue
            sec, frac, incl, _orig = rec(buf, pos)
            if incl > 0x4000000:
                raise CaptureError(f"{self.name}: corrupt record at byte {offset} (length {incl})")
            end = pos + 16 + incl
            if end > len(buf):
                more = read(max(_BLOCK, incl + 16))
                if not more:
                    raise CaptureError(f"{self.name}: truncated packet at byte {offset} "
                                       f"after {self.records} packets")
                buf = buf[pos:] + more
                pos = 0
                continue
            frame = buf[pos + 16:end]
            pos = end
            offset += 16 + incl
            self.records += 1
            self.bytes_read = offset
            ip = strip(linktype, frame)
            if ip is None:
                self.non_ip += 1
                continue
            yield sec + frac * scale, ip

    # -- pcapng -----------------------------------------------------------------

    def _pcapng(self, first: bytes) -> Iterator[tuple[float, bytes]]:
        read = self.stream.read
        order = "<"
        interfaces: list[tuple[int, float]] = []
        offset = 0
        last_ts = 0.0
        pending = first
        while True:
            head = pending + read(8 - len(pending))
            pending = b""
            if not head:
                return
            if len(head) < 8:
                raise CaptureError(f"{self.name}: truncated block header at byte {offset} after {self.records} packets")
            btype = head[:4]
            if btype == b"\x0a\x0d\x0d\x0a":
                bom = read(4)
                if bom == b"\x4d\x3c\x2b\x1a":
                    order = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    order = ">"
                else:
                    raise CaptureError(f"{self.name}: bad pcapng byte-order magic at byte {offset}")
                length = struct.unpack(order + "I", head[4:8])[0]
                body = bom + read(length - 12)
                interfaces = []
            else:
                length = struct.unpack(order + "I", head[4:8])[0]
                body = read(length - 8) if length >= 12 else b""
            if length < 12 or length % 4 or len(body) != length - 8:
                raise CaptureError(f"{self.name}: truncated or corrupt block at byte {offset} "
                                   f"after {self.records} packets")
            code = struct.unpack(order + "I", btype)[0]
            offset += length
            self.bytes_read = offset
            if code == 1:  # interface description
                linktype = struct.unpack_from(order + "H", body, 0)[0]
                interfaces.append((linktype, _tsresol(body[8:-4], order)))
            elif code in (6, 2):  # enhanced / obsolete packet block
                if code == 6:
                    iface, hi, lo, caplen = struct.unpack_from(order + "IIII", body, 0)
                    data_off = 20
                else:
                    iface, _drops, hi, lo, caplen = struct.unpack_from(order + "HHIII", body, 0)
                    data_off = 20
                if iface >= len(interfaces):
                    raise CaptureError(f"{self.name}: packet for undeclared interface {iface} "
                                       f"at byte {offset - length}")
                linktype, res = interfaces[iface]
                last_ts = ((hi << 32) | lo) * res
                self.records += 1
                ip = strip_link(linktype, body[data_off:data_off + caplen])
                if ip is None:
                    self.non_ip += 1
                    continue
                yield last_ts, ip
            elif code == 3:  # simple packet block: first interface, no timestamp
                if not interfaces:
                    raise CaptureError(f"{self.name}: packet before any interface at byte {offset - length}")
                self.records += 1
                orig = struct.unpack_from(order + "I", body, 0)[0]
                ip = strip_link(interfaces[0][0], body[4:4 + min(orig, len(body) - 8)])
                if ip is None:
                    self.non_ip += 1
                    continue
                yield last_ts, ip


def _tsresol(options: bytes, order: str) -> float:
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack_from(order + "HH", options, pos)
        if code == 0:
            break
        if code == 9 and length >= 1:
            v = options[pos + 4]
            return 2.0 ** -(v & 0x7F) if v & 0x80 else 10.0 ** -v
        pos += 4 + ((length + 3) & ~3)
    return 1e-6
