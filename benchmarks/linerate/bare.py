"""The binding's floor: a NetfilterQueue loop that accepts every packet and does nothing else.

    python bare.py QUEUE

Bound to the same queue behind the same ``setup-nfqueue.sh`` rules as inspector, it shows what
one queued packet costs before any inspection: the netlink round trip, the Python callback,
and the kernel's work after the verdict (the packet continues up the stack in this process's
context).  Prints ``ready`` once bound; runs until SIGTERM.
"""

from __future__ import annotations

import signal
import sys

from netfilterqueue import NetfilterQueue

from inspector.sources.nfqueue import FAIL_OPEN, set_queue_flags


def main() -> int:
    queue = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    nfq = NetfilterQueue()
    nfq.bind(queue, lambda packet: packet.accept(), max_len=4096)
    set_queue_flags(nfq.get_fd(), queue, FAIL_OPEN)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        nfq.run()
    finally:
        nfq.unbind()
    return 0


if __name__ == "__main__":
    sys.exit(main())
