"""The binding's floor: a NetfilterQueue loop that accepts every packet and does nothing else.

    python bare.py QUEUE [blocking|select|batch]

Bound to the same queue behind the same ``setup-nfqueue.sh`` rules as inspector, it shows what
one queued packet costs before any inspection: the netlink round trip, the Python callback,
and the kernel's work after the verdict (the packet continues up the stack in this process's
context).  Modes:

* ``blocking`` (default): the binding's own ``run()``, one ``recv`` and one verdict per packet;
* ``select``: the service's reading pattern (``select``, then ``run_socket`` over a buffer that
  holds whole messages until the socket is empty), one verdict per packet;
* ``batch``: as ``select``, but the callback only notes the packet id, and one
  NFQNL_MSG_VERDICT_BATCH message accepts every packet read in that wakeup.

Prints ``ready`` once bound; runs until SIGTERM.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import sys

from netfilterqueue import NetfilterQueue

from inspector.sources.nfqueue import (
    FAIL_OPEN,
    WholeMessages,
    build_message,
    pack_attr,
    set_copy_range,
    set_queue_flags,
)

_NFQNL_MSG_VERDICT_BATCH, _NFQA_VERDICT_HDR, _NF_ACCEPT, _NLM_F_REQUEST = 3, 2, 1, 1


def batch_accept(queue: int, last_id: int) -> bytes:
    """NFQNL_MSG_VERDICT_BATCH: accept every packet of ``queue`` with an id up to ``last_id``."""
    return build_message(_NFQNL_MSG_VERDICT_BATCH, queue,
                         pack_attr(_NFQA_VERDICT_HDR, struct.pack(">II", _NF_ACCEPT, last_id)), 0, _NLM_F_REQUEST)


def main() -> int:
    queue = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    mode = sys.argv[2] if len(sys.argv) > 2 else "blocking"
    nfq = NetfilterQueue()
    last = [0]

    def note(packet: object) -> None:
        last[0] = packet.id  # type: ignore[attr-defined]

    nfq.bind(queue, note if mode == "batch" else (lambda packet: packet.accept()), max_len=4096)
    fd = nfq.get_fd()
    set_queue_flags(fd, queue, FAIL_OPEN)
    stopping = [False]
    signal.signal(signal.SIGTERM, lambda *_: stopping.__setitem__(0, True))
    print("ready", flush=True)
    try:
        if mode == "blocking":
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            nfq.run()
        else:
            set_copy_range(fd, queue)
            reader = WholeMessages(fd)
            out = socket.socket(fileno=os.dup(fd))
            while not stopping[0]:
                try:
                    ready, _, _ = select.select([fd], [], [], 1.0)
                except InterruptedError:
                    continue
                if ready:
                    nfq.run_socket(reader)
                    if mode == "batch" and last[0]:
                        out.send(batch_accept(queue, last[0]))
                        last[0] = 0
    finally:
        nfq.unbind()
    return 0


if __name__ == "__main__":
    sys.exit(main())
