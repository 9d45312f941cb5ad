"""The TCP truth: a tiny server that records exactly the bytes the application reads.

``python receiver.py LOG PORT`` (run with ``ip netns exec SERVER``): listens on ``[::]:PORT``
(IPv4 and IPv6), reads every connection with plain ``recv`` (no ``SO_OOBINLINE``: urgent bytes
are not read, as in Postfix) until EOF or a reset, and appends one JSON line per connection to
LOG: ``{"peer": ADDR, "sport": PORT, "data": "<hex>", "end": "eof"|"reset"}``.  Prints
``ready`` once listening; stops on SIGTERM.
"""

from __future__ import annotations

import json
import socket
import sys
import threading


def serve(conn: socket.socket, peer: tuple[str, int], log: str, lock: threading.Lock) -> None:
    data, end = b"", "eof"
    try:
        conn.settimeout(30)
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        end = "reset"
    finally:
        conn.close()
    addr = peer[0].removeprefix("::ffff:")
    with lock, open(log, "a") as f:
        f.write(json.dumps({"peer": addr, "sport": peer[1], "data": data.hex(), "end": end}) + "\n")


def main() -> int:
    log, port = sys.argv[1], int(sys.argv[2])
    lock = threading.Lock()
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    srv.listen(128)
    print("ready", flush=True)
    while True:
        conn, peer = srv.accept()
        threading.Thread(target=serve, args=(conn, peer, log, lock), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
