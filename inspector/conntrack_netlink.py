"""Read the conntrack table over ctnetlink (``NETLINK_NETFILTER``): TCP connections to given ports.

One dump (``IPCTNL_MSG_CT_GET`` with ``NLM_F_DUMP``, both families) per read,
filtered in the kernel to TCP (``CTA_FILTER``, Linux 5.8+,
``net/netfilter/nf_conntrack_netlink.c``); a kernel that refuses the filter
gets an unfiltered dump, filtered here; the ports are filtered here.  Only the attributes a
connection count needs are decoded: the original tuple (source, destination,
ports), ``CTA_STATUS`` (to tell DNAT'ed connections) and the TCP state.  No
``conntrack``/``netstat`` process, no pyroute2 event loop per call.

Needs CAP_NET_ADMIN in the network namespace (:class:`ConntrackError` otherwise).
"""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Collection, Iterator
from dataclasses import dataclass

__all__ = ["ConntrackDump", "ConntrackError", "Connection", "TCP_ESTABLISHED", "IPS_DST_NAT"]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET = 1
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF
CTA_TUPLE_ORIG, CTA_STATUS, CTA_PROTOINFO, CTA_FILTER = 1, 3, 4, 25
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_FILTER_ORIG_FLAGS = 1
CTA_FILTER_F_PROTO_NUM = 1 << 3  # nf_conntrack_netlink.c
TCP_ESTABLISHED = 3  # enum tcp_conntrack (linux/netfilter/nf_conntrack_tcp.h)
IPS_DST_NAT = 1 << 5  # enum ip_conntrack_status


class ConntrackError(OSError):
    """The conntrack table cannot be read (no privilege, no ctnetlink)."""


@dataclass(frozen=True)
class Connection:
    """One TCP connection of the table, as the client opened it (the original direction)."""

    src: bytes  # 4 or 16 raw bytes
    dst: bytes
    sport: int
    dport: int
    state: int  # TCP_ESTABLISHED, ...
    status: int  # IPS_* bits


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def _attrs(data: bytes, offset: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, value start, value end) of the attributes in ``data[offset:end]``."""
    while offset + 4 <= end:
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, offset + 4, min(offset + length, end)
        offset += (length + 3) & ~3


def _decode(data: bytes, offset: int, end: int) -> Connection | None:
    src = dst = b""
    sport = dport = proto = state = status = 0
    for kind, start, stop in _attrs(data, offset, end):
        if kind == CTA_TUPLE_ORIG:
            for k2, s2, e2 in _attrs(data, start, stop):
                if k2 == CTA_TUPLE_IP:
                    for k3, s3, e3 in _attrs(data, s2, e2):
                        if k3 in (CTA_IP_V4_SRC, CTA_IP_V6_SRC):
                            src = data[s3:e3]
                        elif k3 in (CTA_IP_V4_DST, CTA_IP_V6_DST):
                            dst = data[s3:e3]
                elif k2 == CTA_TUPLE_PROTO:
                    for k3, s3, e3 in _attrs(data, s2, e2):
                        if k3 == CTA_PROTO_NUM and e3 > s3:
                            proto = data[s3]
                        elif k3 == CTA_PROTO_SRC_PORT and e3 - s3 >= 2:
                            sport = struct.unpack_from(">H", data, s3)[0]
                        elif k3 == CTA_PROTO_DST_PORT and e3 - s3 >= 2:
                            dport = struct.unpack_from(">H", data, s3)[0]
        elif kind == CTA_STATUS and stop - start >= 4:
            status = struct.unpack_from(">I", data, start)[0]
        elif kind == CTA_PROTOINFO:
            for k2, s2, e2 in _attrs(data, start, stop):
                if k2 == CTA_PROTOINFO_TCP:
                    for k3, s3, e3 in _attrs(data, s2, e2):
                        if k3 == CTA_PROTOINFO_TCP_STATE and e3 > s3:
                            state = data[s3]
    if proto != socket.IPPROTO_TCP or not src or len(src) != len(dst):
        return None
    return Connection(src, dst, sport, dport, state, status)


class ConntrackDump:
    """A ctnetlink socket in the namespace it was made in; :meth:`tcp` dumps TCP connections to ports."""

    def __init__(self, timeout: float = 5.0) -> None:
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
            self.sock.bind((0, 0))
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        except OSError as e:
            raise ConntrackError(e.errno or 0, f"cannot open a ctnetlink socket: {e.strerror or e}") from None
        self.sock.settimeout(timeout)
        self.seq = 0
        self.kernel_filter = True  # cleared when the kernel refuses CTA_FILTER

    def close(self) -> None:
        self.sock.close()

    def _request(self, filtered: bool) -> bytes:
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, 0)  # both families in one walk of the table
        if filtered:
            proto = _attr(CTA_PROTO_NUM, bytes([socket.IPPROTO_TCP]))
            body += _attr(CTA_TUPLE_ORIG | NLA_F_NESTED, _attr(CTA_TUPLE_PROTO | NLA_F_NESTED, proto))
            body += _attr(CTA_FILTER | NLA_F_NESTED, _attr(CTA_FILTER_ORIG_FLAGS, struct.pack(
                "=I", CTA_FILTER_F_PROTO_NUM)))
        self.seq = (self.seq + 1) & 0xFFFFFFFF
        header = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET,
                             NLM_F_REQUEST | NLM_F_DUMP, self.seq, 0)
        return header + body

    def tcp(self, ports: Collection[int]) -> list[Connection]:
        """TCP connections (IPv4 and IPv6) whose original destination port is one of ``ports``.

        One dump walks the whole conntrack hash table in the kernel (measured here: ≈ 22 ms for
        262,144 buckets, whatever the number of entries), so one dump serves every port and
        family.  Raises ConntrackError."""
        wanted = frozenset(ports)
        if self.kernel_filter:
            try:
                return self._dump(wanted, True)
            except ConntrackError as e:
                if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                self.kernel_filter = False
        return self._dump(wanted, False)

    def _dump(self, ports: frozenset[int], filtered: bool) -> list[Connection]:
        try:
            self.sock.send(self._request(filtered))
        except OSError as e:
            raise ConntrackError(e.errno or 0, f"conntrack dump: {e.strerror or e}") from None
        out: list[Connection] = []
        seq = self.seq
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError as e:
                raise ConntrackError(e.errno or 0, f"conntrack dump: {e.strerror or e}") from None
            offset = 0
            while offset + 16 <= len(data):
                length, kind, _flags, mseq, _pid = struct.unpack_from("=IHHII", data, offset)
                if length < 16:
                    break
                end = min(offset + length, len(data))
                if mseq == seq:
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, offset + 16)[0]
                        if code:
                            raise ConntrackError(code, f"conntrack dump: {errno.errorcode.get(code, code)}")
                        return out
                    if kind & 0xFF == 0 and kind >> 8 == NFNL_SUBSYS_CTNETLINK:  # IPCTNL_MSG_CT_NEW
                        conn = _decode(data, offset + 20, end)
                        if conn is not None and conn.dport in ports:
                            out.append(conn)
                offset += (length + 3) & ~3
