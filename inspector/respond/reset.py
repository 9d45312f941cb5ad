"""TCP resets both ways, built from the offending client packet.

* :func:`rst_for_server` rewrites the client's packet into an RST at its own
  sequence number: accepted into the local stack, it makes the MTA's or
  sshd's socket fail at once (ECONNRESET) instead of waiting for a timeout.
* :func:`rst_for_client` is the RST the server would send: from the server's
  address and port, at the sequence number the client has acknowledged, so
  the client's stack accepts it.

Pure functions over bytes (IPv4 and IPv6); sending is the runner's job.

Forwarded, DNAT'ed flows (an MTA in a container, ``--chain DOCKER-USER``):
the queued packet already carries the container's address, so the client's
RST is built from the container's address and port.  Sent from the host, it
matches the connection's reply tuple in conntrack, and the NAT undoes the
DNAT on the way out (``nf_nat_packet``: the reply direction gets the inverse
manipulation), so the client sees the address and port it connected to.
Tested by ``tests/e2e/test_forward.py``.
"""

from __future__ import annotations

import struct

from ..packet import decode, tcp_offset

__all__ = ["rst_for_server", "rst_for_client", "checksum"]

_RST, _ACK = 0x04, 0x10


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _tcp(src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    header = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 0, 0, 0)
    if len(src) == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(header))
    else:
        pseudo = src + dst + struct.pack("!IxxxB", len(header), 6)
    csum = checksum(pseudo + header)
    return header[:16] + struct.pack("!H", csum) + header[18:]


def _ip(src: bytes, dst: bytes, tcp: bytes, ttl: int = 64) -> bytes:
    if len(src) == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, ttl, 6, 0, src, dst)
        return header[:10] + struct.pack("!H", checksum(header)) + header[12:] + tcp
    return struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, ttl, src, dst) + tcp


def _fields(packet: bytes) -> tuple[bytes, bytes, int, int, int, int, int]:
    d = decode(packet)
    if d is None:
        raise ValueError("not a TCP packet")
    key, src, sport, dport, seq, _flags, poff, pend = d
    alen = len(src)
    ack = struct.unpack_from("!I", packet, tcp_offset(packet) + 8)[0]
    return src, key[alen:2 * alen], sport, dport, seq, ack, pend - poff


def rst_for_server(packet: bytes) -> bytes:
    """The offending client packet turned into a bare RST at its own sequence number."""
    src, dst, sport, dport, seq, _ack, _ = _fields(packet)
    return _ip(src, dst, _tcp(src, dst, sport, dport, seq, 0, _RST))


def rst_for_client(packet: bytes) -> bytes:
    """An RST+ACK from the server to the client at the sequence number the client expects."""
    src, dst, sport, dport, seq, ack, plen = _fields(packet)
    return _ip(dst, src, _tcp(dst, src, dport, sport, ack, seq + plen, _RST | _ACK))
