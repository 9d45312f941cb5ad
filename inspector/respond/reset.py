"""TCP resets both ways, built from the offending client packet.

* :func:`rst_for_server` rewrites the client's packet into an RST at its own
  sequence number: accepted into the local stack, it makes the MTA's or
  sshd's socket fail at once (ECONNRESET) instead of waiting for a timeout.
* :func:`rst_for_client` is the RST the server would send: from the server's
  address and port, at the sequence number the client has acknowledged, so
  the client's stack accepts it.

:func:`build_resets` makes both from the fields :func:`inspector.packet.decode`
already returned for the packet (the engine's :class:`~inspector.verdict.Decision`
carries them), so a reset does not decode the packet again; the two functions
above decode it themselves, for callers that have only the bytes.

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
from ..verdict import Fields

__all__ = ["build_resets", "rst_for_server", "rst_for_client", "checksum"]

_RST, _ACK = 0x04, 0x10


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
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


def _ack(packet: bytes) -> int:
    """The acknowledgment number of a TCP packet that decoded (the TCP header found without a
    second decode: after the IPv4 header, right after the IPv6 header, or past its extensions)."""
    if packet[0] >> 4 == 4:
        off = (packet[0] & 0x0F) << 2
    elif packet[6] == 6:
        off = 40
    else:
        off = tcp_offset(packet)
    return int(struct.unpack_from("!I", packet, off + 8)[0])


def build_resets(packet: bytes, fields: Fields) -> tuple[bytes, bytes]:
    """Both resets for the offending client ``packet``, from its decoded ``fields`` (what
    :func:`inspector.packet.decode` returned): ``(to_server, to_client)``.

    ``to_server`` is the packet turned into a bare RST at its own sequence number (it replaces the
    queued packet); ``to_client`` an RST+ACK from the server at the sequence number the client
    expects (RFC 793 section 3.4 / RFC 5961 section 3: in-window, so both stacks accept it)."""
    key, src, sport, dport, seq, _flags, poff, pend = fields
    alen = len(src)
    dst = key[alen:2 * alen]
    to_server = _ip(src, dst, _tcp(src, dst, sport, dport, seq, 0, _RST))
    to_client = _ip(dst, src, _tcp(dst, src, dport, sport, _ack(packet), seq + pend - poff, _RST | _ACK))
    return to_server, to_client


def _decode(packet: bytes) -> Fields:
    d = decode(packet)
    if d is None:
        raise ValueError("not a TCP packet")
    return d


def rst_for_server(packet: bytes) -> bytes:
    """The offending client packet turned into a bare RST at its own sequence number (decodes it)."""
    return build_resets(packet, _decode(packet))[0]


def rst_for_client(packet: bytes) -> bytes:
    """An RST+ACK from the server to the client at the sequence number the client expects (decodes it)."""
    return build_resets(packet, _decode(packet))[1]
