"""Decode an IPv4 or IPv6 datagram carrying TCP, as NFQUEUE delivers it.

The hot path: one ``struct.unpack_from`` per header, no objects beyond the
result tuple.  Anything truncated or inconsistent raises :class:`Malformed`
with a short reason; the engine turns that into a counted outcome.
"""

from __future__ import annotations

import ipaddress
import socket
import struct

__all__ = ["Malformed", "decode", "tcp_offset", "format_addr", "flag_anomaly", "tcp_ack", "urgent_seq",
           "timestamp", "syn_options", "FIN", "SYN", "RST", "PSH", "ACK", "URG"]

FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20

_IP4 = struct.Struct("!BxHxxHxB").unpack_from  # ver/ihl, total length, frag, proto
_TCP = struct.Struct("!HHIxxxxBB").unpack_from  # sport, dport, seq, data offset, flags
_IP6 = struct.Struct("!BxxxHB").unpack_from  # ver, payload length, next header
# IPv4 without options (the first byte 0x45) and the TCP header after it, in one call:
# total length, frag, proto; sport, dport, seq, data offset, flags
_IP4_TCP = struct.Struct("!xxHxxHxB10xHHIxxxxBB").unpack_from
_U32 = struct.Struct("!I").unpack_from
_U16 = struct.Struct("!H").unpack_from
_NOP_NOP_TS = b"\x01\x01\x08\x0a"  # the TCP options Linux puts on every segment of a timestamped flow

# IPv6 extension headers walked over (RFC 8200 section 4, plus mobility/HIP/shim6/experimental).
_IP6_EXT = frozenset((0, 43, 60, 135, 139, 140, 253, 254))
_IP6_FRAGMENT = 44
_IP6_AH = 51
_MAX_EXT_HEADERS = 8
TCP_PROTO = 6


class Malformed(Exception):
    """A packet that cannot be decoded consistently; ``args[0]`` is the reason."""


def decode(data: bytes) -> tuple[bytes, bytes, int, int, int, int, int, int] | None:
    """Decode ``data``; return ``None`` for a packet that is not TCP.

    The result is ``(key, src, sport, dport, seq, flags, poff, pend)``: ``key``
    is the flow key (source address, destination address, both ports as raw
    bytes, so the IP version is implied by its length), ``src`` the raw source
    address and ``data[poff:pend]`` the TCP payload.
    """
    n = len(data)
    if n >= 40 and data[0] == 0x45:
        # the common case, both headers in one unpack; anything unusual (a fragment, not TCP,
        # a length out of bounds) goes the general way below, which names the reason
        total, frag, proto, sport, dport, seq, doff, flags = _IP4_TCP(data)
        if proto == TCP_PROTO and not frag & 0x3FFF and 40 <= total <= n:
            poff = 20 + ((doff >> 4) << 2)
            if poff < 40 or poff > total:
                raise Malformed("tcp-offset")
            # addresses and ports are contiguous without IP options: the flow key is one slice
            return data[12:24], data[12:16], sport, dport, seq, flags, poff, total
    return _decode(data, n)


def _decode(data: bytes, n: int) -> tuple[bytes, bytes, int, int, int, int, int, int] | None:
    """:func:`decode` the general way (any IPv4 header, IPv6 with extension headers)."""
    if n < 20:
        raise Malformed("short")
    first = data[0]
    if first >> 4 == 4:
        vihl, total, frag, proto = _IP4(data)
        ihl = (vihl & 0x0F) << 2
        if ihl < 20:
            raise Malformed("ipv4-ihl")
        if total < ihl or total > n:
            raise Malformed("ipv4-length")
        if frag & 0x3FFF:  # MF set or a non-zero offset
            if proto == TCP_PROTO:
                raise Malformed("fragment")
            return None
        if proto != TCP_PROTO:
            return None
        off = ihl
        end = total
        src = data[12:16]
        addrs = data[12:20]
    elif first >> 4 == 6:
        if n < 40:
            raise Malformed("short")
        _, plen, nh = _IP6(data)
        end = 40 + plen
        if plen == 0 or end > n:
            raise Malformed("ipv6-length")
        nh, off = _ipv6_transport(data, nh, end)
        if nh != TCP_PROTO:
            return None
        src = data[8:24]
        addrs = data[8:40]
    else:
        raise Malformed("ip-version")
    if off + 20 > end:
        raise Malformed("tcp-short")
    sport, dport, seq, doff, flags = _TCP(data, off)
    poff = off + ((doff >> 4) << 2)
    if poff < off + 20 or poff > end:
        raise Malformed("tcp-offset")
    return addrs + data[off:off + 4], src, sport, dport, seq, flags, poff, end


def _ipv6_transport(data: bytes, nh: int, end: int) -> tuple[int, int]:
    """Walk IPv6 extension headers: ``(upper-layer protocol, its offset)``.

    A protocol of -1 means there is no upper-layer header to inspect (ESP,
    no-next-header, or a non-TCP fragment); a TCP fragment is malformed.
    """
    off = 40
    hops = 0
    while nh != TCP_PROTO:
        if nh in _IP6_EXT:
            if off + 8 > end:
                raise Malformed("ipv6-ext")
            nh, hlen = data[off], (data[off + 1] + 1) << 3
        elif nh == _IP6_FRAGMENT:
            if off + 8 > end:
                raise Malformed("ipv6-ext")
            if data[off] == TCP_PROTO:
                raise Malformed("fragment")
            return -1, off
        elif nh == _IP6_AH:
            if off + 8 > end:
                raise Malformed("ipv6-ext")
            nh, hlen = data[off], (data[off + 1] + 2) << 2
        else:
            return nh, off  # ESP, no-next-header, UDP, ICMPv6 ...
        off += hlen
        hops += 1
        if hops > _MAX_EXT_HEADERS or off > end:
            raise Malformed("ipv6-ext")
    return nh, off


def tcp_offset(data: bytes) -> int:
    """Offset of the TCP header in a datagram that :func:`decode` accepted."""
    if data[0] >> 4 == 4:
        return (data[0] & 0x0F) << 2
    _, plen, nh = _IP6(data)
    return _ipv6_transport(data, nh, 40 + plen)[1]


def format_addr(raw: bytes) -> str:
    """Text form of a raw 4- or 16-byte address, as ``str(ipaddress.ip_address(raw))`` writes it
    (RFC 5952 for IPv6), through the C library's ``inet_ntop`` (a tenth of the time); raises
    ValueError for any other length."""
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        text = socket.inet_ntop(socket.AF_INET6, raw)
        # glibc writes IPv4-compatible (::a.b.c.d) and a few mapped forms differently from
        # ipaddress; those are rare: take ipaddress's form for them
        return text if "." not in text else str(ipaddress.ip_address(raw))
    return str(ipaddress.ip_address(raw))


# Flag combinations conntrack accepts (nf_conntrack_proto_tcp.c, tcp_valid_flags[], with ECE, CWR
# and PSH masked out); Linux's receiver never takes data from the others.  The names follow
# nmap's scans and the classic iptables recipes: NULL (no flag), XMAS (exactly FIN, PSH and URG:
# ``--tcp-flags ALL FIN,PSH,URG``, nmap -sX), FIN (nmap -sF), SYN+FIN, SYN+RST.
_VALID = frozenset((0x02, 0x22, 0x12, 0x04, 0x14, 0x11, 0x31, 0x10, 0x30))
_NAMES = ((0x01, "FIN"), (0x02, "SYN"), (0x04, "RST"), (0x08, "PSH"), (0x10, "ACK"), (0x20, "URG"))


def flag_anomaly(flags: int) -> str | None:
    """The name of an invalid TCP flag combination (conntrack's rule), or ``None`` if valid."""
    f = flags & 0x3F
    if f & ~0x08 in _VALID:
        return None
    if f == 0:
        return "NULL"
    if f == 0x29:
        return "XMAS"
    if f & 0x03 == 0x03:
        return "SYN+FIN"
    if f & 0x06 == 0x06:
        return "SYN+RST"
    return "+".join(name for bit, name in _NAMES if f & bit)


def _toff(data: bytes) -> int:
    return (data[0] & 0x0F) << 2 if data[0] >> 4 == 4 else tcp_offset(data)


def tcp_ack(data: bytes) -> int:
    """The acknowledgment number of a datagram :func:`decode` accepted."""
    return int(_U32(data, _toff(data) + 8)[0])


def urgent_seq(data: bytes, seq: int) -> int:
    """Sequence number of the urgent byte of a segment with URG set, as Linux computes it
    (``tcp_check_urg`` with ``tcp_stdurg = 0``: the pointer points one past it; 0 means ``seq``)."""
    ptr = int(_U16(data, _toff(data) + 18)[0])
    return (seq + ptr - 1) & 0xFFFFFFFF if ptr else seq


def _options(data: bytes, start: int, end: int) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    i = start
    while i < end:
        kind = data[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end:
            break
        size = data[i + 1]
        if size < 2 or i + size > end:
            break  # malformed options: Linux stops parsing (tcp_parse_options)
        out.setdefault(kind, data[i + 2:i + size])
        i += size
    return out


def timestamp(data: bytes, poff: int) -> int | None:
    """The TSval of a segment's timestamp option (RFC 7323), or ``None``."""
    toff = _toff(data)
    if poff - toff == 32 and data[toff + 20:toff + 24] == _NOP_NOP_TS:  # the common layout, fast
        return int(_U32(data, toff + 24)[0])
    if poff - toff <= 20:
        return None
    ts = _options(data, toff + 20, poff).get(8)
    return int(_U32(ts)[0]) if ts is not None and len(ts) == 8 else None


# The options of a Linux client's SYN (tcp_syn_options): MSS, SACK permitted, timestamps, NOP, window scale
_LINUX_SYN_HEAD = b"\x02\x04"
_LINUX_SYN_MID = b"\x04\x02\x08\x0a"
_LINUX_SYN_TAIL = b"\x01\x03\x03"


def syn_options(data: bytes, poff: int) -> tuple[int | None, bool]:
    """A SYN's ``(TSval or None, carries a TCP Fast Open cookie)`` (RFC 7323, RFC 7413 option 34)."""
    toff = _toff(data)
    olen = poff - toff - 20
    if olen <= 0:
        return None, False
    o = toff + 20
    if olen == 20 and data[o + 4:o + 8] == _LINUX_SYN_MID and data[o:o + 2] == _LINUX_SYN_HEAD \
            and data[o + 16:o + 19] == _LINUX_SYN_TAIL:
        return int(_U32(data, o + 8)[0]), False  # Linux's layout, fast: no room for a cookie
    opts = _options(data, o, poff)
    ts = opts.get(8)
    return (int(_U32(ts)[0]) if ts is not None and len(ts) == 8 else None), bool(opts.get(34))
