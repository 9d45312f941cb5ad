"""The services behind the inspector, run inside the server namespace.

``python servers.py LOGFILE [--smtp-port 25] [--ssh-port 22]``

* SMTP on port 25 (IPv4 and IPv6): aiosmtpd when it is installed, else a
  minimal built-in server (enough for EHLO/MAIL/RCPT/DATA/QUIT).
* A TCP service on port 22 that sends an SSH banner and echoes what it gets.

Every connection, RCPT, delivered message and lost connection is appended to
LOGFILE as one JSON line with a CLOCK_MONOTONIC time ``t``; a lost connection
records the error the socket saw (``ConnectionResetError`` for a reset).  Prints
``{"ready": ...}`` on stdout once listening.  Stops on SIGTERM/SIGINT, or by
itself after ``--max-seconds`` (default 600) so it can never be left behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from typing import Any

SSH_BANNER = b"SSH-2.0-OpenSSH_9.2p1 e2e-test\r\n"


class Log:
    def __init__(self, path: str) -> None:
        self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed at exit

    def __call__(self, **event: Any) -> None:
        event["t"] = time.monotonic()
        self.f.write(json.dumps(event) + "\n")
        self.f.flush()


def _peer(transport: asyncio.BaseTransport) -> tuple[str, int]:
    p = transport.get_extra_info("peername") or ("?", 0)
    return str(p[0]), int(p[1])


def _err(error: BaseException | None) -> str | None:
    return type(error).__name__ if error is not None else None


def aiosmtpd_factory(log: Log):
    from aiosmtpd.smtp import SMTP

    class Handler:
        async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
            log(event="rcpt", service="smtp", peer=session.peer[0], sport=session.peer[1], rcpt=address)
            envelope.rcpt_tos.append(address)
            return "250 OK"

        async def handle_DATA(self, server, session, envelope):
            log(event="message", service="smtp", peer=session.peer[0], sport=session.peer[1],
                mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos), size=len(envelope.content or b""))
            return "250 OK delivered"

    class RecordingSMTP(SMTP):
        def connection_made(self, transport):
            self._e2e_peer = _peer(transport)
            log(event="connect", service="smtp", peer=self._e2e_peer[0], sport=self._e2e_peer[1])
            super().connection_made(transport)

        def connection_lost(self, error):
            log(event="lost", service="smtp", peer=self._e2e_peer[0], sport=self._e2e_peer[1], error=_err(error))
            super().connection_lost(error)

    handler = Handler()
    return lambda: RecordingSMTP(handler, hostname="mx.e2e.test", timeout=30)


class MiniSMTP(asyncio.Protocol):
    """A small SMTP server for machines without aiosmtpd."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.buf = b""
        self.in_data = False
        self.mail_from: str | None = None
        self.rcpts: list[str] = []

    def connection_made(self, transport):
        self.transport = transport
        self.peer = _peer(transport)
        self.log(event="connect", service="smtp", peer=self.peer[0], sport=self.peer[1])
        transport.write(b"220 mx.e2e.test ESMTP mini\r\n")

    def connection_lost(self, error):
        self.log(event="lost", service="smtp", peer=self.peer[0], sport=self.peer[1], error=_err(error))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.in_data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0 and self.buf.startswith(b".\r\n"):
                    end, skip, body = 0, 3, b""
                elif end < 0:
                    return
                else:
                    body, skip = self.buf[: end + 2], end + 5
                self.buf = self.buf[skip:]
                self.in_data = False
                self.log(event="message", service="smtp", peer=self.peer[0], sport=self.peer[1],
                         mail_from=self.mail_from, rcpt_tos=self.rcpts, size=len(body))
                self.mail_from, self.rcpts = None, []
                self.transport.write(b"250 OK delivered\r\n")
                continue
            if b"\r\n" not in self.buf:
                if len(self.buf) > 4096:
                    self.transport.write(b"500 line too long\r\n")
                    self.transport.close()
                return
            line, self.buf = self.buf.split(b"\r\n", 1)
            self.command(line.decode("utf-8", "replace"))

    def command(self, line: str) -> None:
        verb, _, arg = line.partition(" ")
        verb = verb.upper()
        w = self.transport.write
        if verb in ("EHLO", "HELO"):
            w(b"250-mx.e2e.test\r\n250 8BITMIME\r\n" if verb == "EHLO" else b"250 mx.e2e.test\r\n")
        elif verb == "MAIL":
            self.mail_from = arg.partition(":")[2].strip().strip("<>")
            w(b"250 OK\r\n")
        elif verb == "RCPT":
            rcpt = arg.partition(":")[2].strip().strip("<>")
            self.log(event="rcpt", service="smtp", peer=self.peer[0], sport=self.peer[1], rcpt=rcpt)
            self.rcpts.append(rcpt)
            w(b"250 OK\r\n")
        elif verb == "DATA":
            if not self.rcpts:
                w(b"503 need RCPT\r\n")
            else:
                self.in_data = True
                w(b"354 go ahead\r\n")
        elif verb in ("RSET", "NOOP"):
            w(b"250 OK\r\n")
        elif verb == "QUIT":
            w(b"221 bye\r\n")
            self.transport.close()
        else:
            w(b"502 not implemented\r\n")


class Echo22(asyncio.Protocol):
    """Port 22: an SSH banner, then echo."""

    def __init__(self, log: Log) -> None:
        self.log = log

    def connection_made(self, transport):
        self.transport = transport
        self.peer = _peer(transport)
        self.log(event="connect", service="ssh", peer=self.peer[0], sport=self.peer[1])
        transport.write(SSH_BANNER)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def connection_lost(self, error):
        self.log(event="lost", service="ssh", peer=self.peer[0], sport=self.peer[1], error=_err(error))


async def serve(args: argparse.Namespace) -> None:
    log = Log(args.log)
    loop = asyncio.get_running_loop()
    try:
        if args.mini:
            raise ImportError("--mini")
        smtp_factory = aiosmtpd_factory(log)
        kind = "aiosmtpd"
    except ImportError:
        smtp_factory = lambda: MiniSMTP(log)  # noqa: E731
        kind = "mini"
    hosts = ["0.0.0.0", "::"]
    servers = [
        await loop.create_server(smtp_factory, hosts, args.smtp_port, reuse_address=True),
        await loop.create_server(lambda: Echo22(log), hosts, args.ssh_port, reuse_address=True),
    ]
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(json.dumps({"ready": True, "smtp": kind}), flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=args.max_seconds)
    for s in servers:
        s.close()
    log.f.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("log")
    p.add_argument("--smtp-port", type=int, default=25)
    p.add_argument("--ssh-port", type=int, default=22)
    p.add_argument("--max-seconds", type=float, default=600)
    p.add_argument("--mini", action="store_true", help="use the built-in SMTP server even if aiosmtpd is there")
    asyncio.run(serve(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
