"""NFQUEUE helpers the NetfilterQueue binding lacks.

* :func:`set_queue_flags` sets queue flags such as ``NFQA_CFG_F_FAIL_OPEN``
  (when the queue is full, the kernel accepts packets instead of dropping
  them).  The kernel takes this config message only from the netlink socket
  that bound the queue, so it is sent on the binding's own descriptor, right
  after ``bind()`` (flags belong to the queue instance: set them after every bind).
* :func:`queue_stats` reads ``/proc/net/netfilter/nfnetlink_queue`` (per
  network namespace): queued, dropped because the queue was full, dropped
  because the socket buffer was full.
"""

from __future__ import annotations

import os
import select
import socket
import struct
from dataclasses import dataclass

__all__ = ["FAIL_OPEN", "build_config_flags", "set_queue_flags", "QueueStats", "parse_queue_stats", "queue_stats"]

FAIL_OPEN, CONNTRACK, GSO = 0x1, 0x2, 0x4
_NFNL_SUBSYS_QUEUE, _NFQNL_MSG_CONFIG = 3, 2
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLMSG_ERROR = 2
_NFQA_CFG_MASK, _NFQA_CFG_FLAGS = 4, 5
_PROC = "/proc/net/netfilter/nfnetlink_queue"


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def build_config_flags(queue: int, flags: int, mask: int, seq: int) -> bytes:
    """The NFQNL_MSG_CONFIG netlink message setting ``flags`` (under ``mask``) on ``queue``."""
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue))  # nfgenmsg, res_id = queue
    body += _attr(_NFQA_CFG_FLAGS, struct.pack(">I", flags)) + _attr(_NFQA_CFG_MASK, struct.pack(">I", mask))
    header = struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | _NFQNL_MSG_CONFIG,
                         _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
    return header + body


def set_queue_flags(fd: int, queue: int, flags: int, mask: int | None = None, timeout: float = 1.0,
                    seq: int = 0x51F0) -> int | None:
    """Send the config on the binding's socket ``fd``; return the kernel's errno (0 = done),
    or None when the acknowledgement did not arrive first (it is then left for the binding)."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.send(build_config_flags(queue, flags, flags if mask is None else mask, seq))
        if not select.select([sock], [], [], timeout)[0]:
            return None
        # peek: a packet queued in the meantime belongs to the binding, not to us
        buf = sock.recv(8192, socket.MSG_PEEK)
        length, kind, _flags, rseq, _pid = struct.unpack_from("=IHHII", buf, 0)
        if kind == _NLMSG_ERROR and rseq == seq:
            sock.recv(length)
            return -struct.unpack_from("=i", buf, 16)[0]
        return None
    finally:
        sock.close()


@dataclass(frozen=True)
class QueueStats:
    queue: int
    portid: int  # the netlink port bound to the queue (0: nobody)
    waiting: int  # packets in the queue now
    queue_dropped: int  # dropped: queue full (fail-open off)
    user_dropped: int  # dropped: socket buffer full (fail-open off)
    id_sequence: int


def parse_queue_stats(text: str) -> list[QueueStats]:
    out = []
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 8:
            out.append(QueueStats(int(f[0]), int(f[1]), int(f[2]), int(f[5]), int(f[6]), int(f[7])))
    return out


def queue_stats(path: str = _PROC) -> list[QueueStats]:
    """The queues of this network namespace (empty if none is bound or the file is missing)."""
    try:
        with open(path) as f:
            return parse_queue_stats(f.read())
    except OSError:
        return []
