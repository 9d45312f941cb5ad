"""The SMTP sink of the line-rate benchmark (aiosmtpd, as FACTS.md's measurements used).

    python sink.py [--port 25] [--max-seconds 1800] [--timeout 30]

Runs in the server namespace on IPv4 and IPv6.  It accepts every message and counts:
connections, delivered messages (those with a recipient under ``blocked.test`` apart),
connections the client reset (``ConnectionResetError`` in ``connection_lost``) and
connections open now.  Prints ``{"ready": true}`` once listening; then each line read on
stdin (``stats``) is answered with one JSON line of the counters.  Stops on SIGTERM, at EOF
on stdin, or by itself after ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections import Counter

BLOCKED = "blocked.test"


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=25)
    p.add_argument("--max-seconds", type=float, default=1800)
    p.add_argument("--timeout", type=float, default=30, help="aiosmtpd's idle timeout per connection")
    args = p.parse_args()
    logging.getLogger("mail.log").disabled = True  # a reset connection is expected here, not news
    logging.getLogger("mail.log").setLevel(logging.CRITICAL)
    asyncio.run(serve(args))
    return 0


async def serve(args: argparse.Namespace) -> None:
    from aiosmtpd.smtp import SMTP

    counts: Counter[str] = Counter()

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            blocked = any(r.lower().rstrip(".").endswith("@" + BLOCKED) for r in envelope.rcpt_tos)
            counts["delivered_blocked" if blocked else "delivered"] += 1
            counts["bytes"] += len(envelope.content or b"")
            return "250 OK delivered"

    class CountingSMTP(SMTP):
        def connection_made(self, transport):
            counts["connections"] += 1
            counts["open"] += 1
            super().connection_made(transport)

        def connection_lost(self, error):
            counts["open"] -= 1
            if isinstance(error, ConnectionResetError):
                counts["reset_by_peer"] += 1
            super().connection_lost(error)

    handler = Handler()
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(lambda: CountingSMTP(handler, hostname="mx.bench.test", timeout=args.timeout),
                                        host, args.port, reuse_address=True, backlog=8192)
               for host in ("0.0.0.0", "::")]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def on_stdin() -> None:
        line = sys.stdin.buffer.readline()
        if not line:
            loop.remove_reader(sys.stdin.fileno())
            stop.set()
            return
        sys.stdout.write(json.dumps(dict(counts)) + "\n")
        sys.stdout.flush()

    loop.add_reader(sys.stdin.fileno(), on_stdin)
    print(json.dumps({"ready": True}), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    for s in servers:
        s.close()


if __name__ == "__main__":
    sys.exit(main())
