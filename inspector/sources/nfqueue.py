"""The NFQUEUE source: :class:`NfQueue` binds a queue, reads it and unbinds it (the verdicts go
through each packet's own ``accept``/``drop``/``repeat``), plus the helpers the NetfilterQueue
binding lacks:

* :func:`set_queue_flags` sets queue flags such as ``NFQA_CFG_F_FAIL_OPEN``
  (when the queue is full, the kernel accepts packets instead of dropping
  them).  The kernel takes this config message only from the netlink socket
  that bound the queue, so it is sent on the binding's own descriptor, right
  after ``bind()`` (flags belong to the queue instance: set them after every bind).
* :func:`set_copy_range` asks for whole packets: the binding caps the copy range at 4016 bytes,
  so a larger packet (jumbo frames) would reach the engine cut short; :class:`WholeMessages`
  lets the binding read such a message whole (its own buffer holds 4096 bytes).
* :class:`NfQueue` gives accept verdicts in batches: the packets of one burst that are simply
  accepted get one ``NFQNL_MSG_VERDICT_BATCH`` (``nfqnl_recv_verdict_batch`` in
  ``net/netfilter/nfnetlink_queue.c``: accept every packet still queued up to an id) at the end
  of the burst, or before any drop or reset, instead of one ``sendmsg`` each.
* :func:`queue_stats` reads ``/proc/net/netfilter/nfnetlink_queue`` (per
  network namespace): queued, dropped because the queue was full, dropped
  because the socket buffer was full.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FAIL_OPEN", "MAX_COPY_RANGE", "build_message", "pack_attr", "build_config", "build_config_flags",
           "build_copy_range", "build_batch_accept", "set_queue_flags", "set_copy_range", "QueueStats",
           "parse_queue_stats", "queue_stats", "WholeMessages", "RECV_BUFFER", "NfQueue", "QueueError"]

FAIL_OPEN = 0x1  # NFQA_CFG_F_FAIL_OPEN (include/uapi/linux/netfilter/nfnetlink_queue.h)
GSO = 0x4  # NFQA_CFG_F_GSO: hand GRO/TSO aggregates over whole (same header)
_NFNL_SUBSYS_QUEUE, _NFQNL_MSG_CONFIG = 3, 2
_NLM_F_REQUEST, _NLM_F_ACK = 0x1, 0x4
_NLMSG_ERROR = 2
_NFQA_CFG_PARAMS, _NFQA_CFG_MASK, _NFQA_CFG_FLAGS = 2, 4, 5
_NFQNL_MSG_VERDICT_BATCH, _NFQA_VERDICT_HDR, _NF_ACCEPT = 3, 2, 1
_NFQNL_COPY_PACKET = 2
_VERDICT_ID = struct.Struct(">I")  # the packet id at the end of a verdict message
MAX_COPY_RANGE = 0xFFFF  # the largest IP packet
_PROC = "/proc/net/netfilter/nfnetlink_queue"


# One queued packet per netlink message: the packet (up to 64 KiB, the copy range) plus headers.
RECV_BUFFER = 0x10000 + 4096


class WholeMessages:
    """What ``NetfilterQueue.run_socket()`` reads from: the binding's socket, with a buffer that
    holds a whole message.

    The binding's own ``run()`` receives into 4096 bytes, so a packet larger than about 4 KB
    (jumbo frames, MTU 9000) arrives cut short, and the rest of its message is lost.  Reading
    through this object gives every packet in full.  ``recv`` never blocks: ``run_socket()``
    returns once the socket is empty (EAGAIN) or when ``burst`` packets were read since the last
    such stop (the socket may never empty under a flood), and goes on after ENOBUFS (the kernel
    dropped messages because the socket buffer was full; the queue's counters show it).
    """

    __slots__ = ("_sock", "_recv", "_left", "burst")

    def __init__(self, fd: int, burst: int = 256) -> None:
        self._sock = socket.socket(fileno=os.dup(fd))
        self._recv = self._sock.recv
        self.burst = burst
        self._left = burst

    def recv(self, _size: int) -> bytes:
        """One whole netlink message from the socket, without blocking (BlockingIOError when it is empty, or after
        ``burst`` messages since the last such stop).

        The socket's own EAGAIN passes through untouched (no handler here: a wakeup ends with it, so it is the
        common case); the budget is not refilled then, so a stop comes at the latest every ``burst`` messages.
        """
        left = self._left
        if not left:
            # the budget is spent: end this run_socket() call as if the socket were empty, so the
            # loop around it gets its turn (signals, control, the supervisor) under a flood too
            self._left = self.burst
            raise BlockingIOError(errno.EAGAIN, "burst done")
        data = self._recv(RECV_BUFFER, socket.MSG_DONTWAIT)
        self._left = left - 1
        return data

    def close(self) -> None:
        """Close the duplicated descriptor."""
        self._sock.close()


def pack_attr(kind: int, value: bytes) -> bytes:
    """A netlink attribute: length, type, ``value``, padded to 4 bytes."""
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def build_message(kind: int, queue: int, attrs: bytes, seq: int, flags: int = _NLM_F_REQUEST | _NLM_F_ACK) -> bytes:
    """An nfnetlink_queue message of type ``kind`` (NFQNL_MSG_*) for ``queue``, carrying the
    attributes ``attrs`` (packed with :func:`pack_attr`)."""
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs  # nfgenmsg, res_id = queue
    return struct.pack("=IHHII", 16 + len(body), (_NFNL_SUBSYS_QUEUE << 8) | kind, flags, seq, 0) + body


def build_batch_accept(queue: int, last_id: int) -> bytes:
    """The NFQNL_MSG_VERDICT_BATCH message accepting every packet of ``queue`` still waiting for a
    verdict whose id is ``last_id`` or earlier (``struct nfqnl_msg_verdict_hdr``: verdict, id, big-endian)."""
    return build_message(_NFQNL_MSG_VERDICT_BATCH, queue,
                         pack_attr(_NFQA_VERDICT_HDR, struct.pack(">II", _NF_ACCEPT, last_id)), 0, _NLM_F_REQUEST)


def build_config(queue: int, attrs: bytes, seq: int) -> bytes:
    """An NFQNL_MSG_CONFIG netlink message for ``queue`` carrying the packed attributes ``attrs``."""
    return build_message(_NFQNL_MSG_CONFIG, queue, attrs, seq)


def build_config_flags(queue: int, flags: int, mask: int, seq: int) -> bytes:
    """The NFQNL_MSG_CONFIG netlink message setting ``flags`` (under ``mask``) on ``queue``."""
    return build_config(queue, pack_attr(_NFQA_CFG_FLAGS, struct.pack(">I", flags))
                        + pack_attr(_NFQA_CFG_MASK, struct.pack(">I", mask)), seq)


def build_copy_range(queue: int, copy_range: int, seq: int) -> bytes:
    """The NFQNL_MSG_CONFIG message asking for whole packets up to ``copy_range`` bytes
    (``struct nfqnl_msg_config_params``: a big-endian range, then the copy mode, packed)."""
    return build_config(queue, pack_attr(_NFQA_CFG_PARAMS, struct.pack(">IB", copy_range, _NFQNL_COPY_PACKET)), seq)


def _configure(fd: int, message: bytes, seq: int, timeout: float) -> int | None:
    """Send a config message on the binding's socket ``fd``; return the kernel's errno (0 = done),
    or None when the acknowledgement did not arrive first (it is then left for the binding)."""
    sock = socket.socket(fileno=os.dup(fd))
    try:
        sock.send(message)
        if not select.select([sock], [], [], timeout)[0]:
            return None
        # peek: a packet queued in the meantime belongs to the binding, not to us
        buf = sock.recv(8192, socket.MSG_PEEK)
        length, kind, _flags, rseq, _pid = struct.unpack_from("=IHHII", buf, 0)
        if kind == _NLMSG_ERROR and rseq == seq:
            sock.recv(length)
            return -int(struct.unpack_from("=i", buf, 16)[0])
        return None
    finally:
        sock.close()


def set_queue_flags(fd: int, queue: int, flags: int, mask: int | None = None, timeout: float = 1.0,
                    seq: int = 0x51F0) -> int | None:
    """Set queue flags (see the module docstring); the kernel's errno, or None (no answer first)."""
    return _configure(fd, build_config_flags(queue, flags, flags if mask is None else mask, seq), seq, timeout)


def set_copy_range(fd: int, queue: int, copy_range: int = MAX_COPY_RANGE, timeout: float = 1.0,
                   seq: int = 0x51F1) -> int | None:
    """Have the kernel copy whole packets up to ``copy_range`` bytes (the binding caps it at 4016);
    read them with :class:`WholeMessages`.  The kernel's errno, or None (no answer first)."""
    return _configure(fd, build_copy_range(queue, copy_range, seq), seq, timeout)


@dataclass(frozen=True)
class QueueStats:
    """One queue's line of ``/proc/net/netfilter/nfnetlink_queue``."""
    queue: int
    portid: int  # the netlink port bound to the queue (0: nobody)
    waiting: int  # packets in the queue now
    queue_dropped: int  # dropped: queue full (fail-open off)
    user_dropped: int  # dropped: socket buffer full (fail-open off)
    id_sequence: int


def parse_queue_stats(text: str) -> list[QueueStats]:
    """The queues listed in the text of ``/proc/net/netfilter/nfnetlink_queue``."""
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


class QueueError(Exception):
    """The queue cannot be bound; the message says why and what to check."""


class NfQueue:
    """One NFQUEUE, read through the NetfilterQueue binding: bind, read, unbind.

    :meth:`bind` binds queue ``number`` and calls ``handler(packet)`` for every packet
    :meth:`read` takes from the socket (each packet gets its verdict through its own
    ``accept``/``drop``/``repeat``, or ``accept_later``), asks the kernel for whole packets
    (:func:`set_copy_range`) and, with ``fail_open``, for the fail-open flag; ``copy_range`` and
    ``fail_open_errno`` keep the kernel's answers (0: done).  :meth:`read` handles one burst (at
    most ``burst`` packets, or until the socket is empty) and returns.

    Accept verdicts are batched (``batch_accepts``): ``accept_later(packet)`` notes a packet, and
    :meth:`accept_noted` gives every noted packet its accept in one ``NFQNL_MSG_VERDICT_BATCH``
    (the last noted id: the kernel accepts every packet still queued up to it, and the packets
    noted come in id order).  :meth:`read` calls it at the end of every burst, also when the
    handler raised, and the runner before any drop or reset, so a packet is never held past its
    burst and a reset never overtakes an earlier packet of its connection.  If the batch message
    cannot be sent, each noted packet gets its own accept.  ``batches`` counts the batch messages
    sent, ``batched`` the packets they accepted, ``late_errors`` noted packets whose own accept
    failed (they had a verdict already), ``wakeups`` the calls of :meth:`read`.
    """

    def __init__(self, number: int, maxlen: int = 4096, fail_open: bool = True, batch_accepts: bool = True) -> None:
        self.number = number
        self.maxlen = maxlen
        self.want_fail_open = fail_open
        self.batch_accepts = batch_accepts
        self.copy_range: int | None = None
        self.fail_open_errno: int | None = None
        self.gso_errno: int | None = None
        self.batches = 0
        self.batched = 0
        self.wakeups = 0
        self.late_errors = 0
        self._nfq: Any = None
        self._messages: WholeMessages | None = None
        self._out: socket.socket | None = None
        self._noted: list[Any] = []
        # accept ``packet`` with the others of this burst (at the latest when read() returns): the
        # list's own append, no Python frame per packet
        self.accept_later: Callable[[Any], None] = self._noted.append if batch_accepts else self._accept_now
        self._batch = bytearray(build_batch_accept(number, 0))

    def bind(self, handler: Callable[[Any], None]) -> None:
        """Bind the queue; raises QueueError when the binding is missing or the kernel refuses."""
        try:
            from netfilterqueue import NetfilterQueue
        except ImportError:
            raise QueueError("NetfilterQueue is not installed: pip install 'inspector[live]' "
                             "(needs Debian's libnetfilter-queue-dev)") from None
        nfq = NetfilterQueue()
        try:
            nfq.bind(self.number, handler, max_len=self.maxlen)
        except OSError as e:
            raise QueueError(f"cannot bind NFQUEUE {self.number}: {e} "
                             "(is another inspector running on it? is nfnetlink_queue available?)") from None
        self._nfq = nfq
        fd = nfq.get_fd()
        self._messages = WholeMessages(fd)
        self._out = socket.socket(fileno=os.dup(fd))
        self.copy_range = set_copy_range(fd, self.number)
        if self.want_fail_open:
            self.fail_open_errno = set_queue_flags(fd, self.number, FAIL_OPEN)
        # GRO/TSO aggregates (at most 64 KiB: within the copy range) are handed over whole instead of
        # one queued packet per segment (an SMTP body's end-of-data aggregate: 1 packet, not ~40)
        self.gso_errno = set_queue_flags(fd, self.number, GSO)

    def fileno(self) -> int:
        """The netlink socket's descriptor (for select)."""
        return int(self._nfq.get_fd())

    def read(self) -> None:
        """Handle the packets waiting on the socket (one burst); never blocks.  The packets noted
        with ``accept_later`` get their accept before it returns.  Counts the call in ``wakeups``."""
        self.wakeups += 1
        try:
            self._nfq.run_socket(self._messages)
        finally:
            noted = self._noted
            if noted:
                if len(noted) == 1:  # one packet: its own verdict, here (no batch, no call)
                    try:
                        noted.pop().accept()
                    except Exception:  # noqa: BLE001 - it already had its verdict: nothing is lost
                        self.late_errors += 1
                else:
                    self.accept_noted()

    @staticmethod
    def _accept_now(packet: Any) -> None:
        packet.accept()

    def accept_noted(self) -> None:
        """Give every packet noted with ``accept_later`` its accept: one batch message, or one
        verdict each if there is a single one or the batch cannot be sent.  Never raises."""
        noted = self._noted
        if not noted:
            return
        out = self._out
        if len(noted) > 1 and out is not None:
            batch = self._batch
            _VERDICT_ID.pack_into(batch, len(batch) - 4, noted[-1].id)
            try:
                out.send(batch)
            except OSError:
                pass  # below: one verdict each
            else:
                self.batches += 1
                self.batched += len(noted)
                noted.clear()
                return
        packets = noted[:]
        noted.clear()
        for packet in packets:
            try:
                packet.accept()
            except Exception:  # noqa: BLE001 - it already had its verdict: nothing is lost
                self.late_errors += 1

    def close(self) -> None:
        """Unbind the queue (with --queue-bypass the kernel then lets its traffic through)."""
        if self._noted:
            self.accept_noted()
        if self._nfq is not None:
            with contextlib.suppress(Exception):  # closing must not fail the shutdown
                self._nfq.unbind()
            self._nfq = None
        if self._messages is not None:
            self._messages.close()
            self._messages = None
        if self._out is not None:
            self._out.close()
            self._out = None
