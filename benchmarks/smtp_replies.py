#!/usr/bin/env python3
"""What reading the server's SMTP replies costs the engine (issue 12, kind 2: the reply mark).

    python benchmarks/smtp_replies.py [--sessions 3000] [--rounds 3]

Non-pipelining SMTP sessions (EHLO, MAIL, RCPT, DATA, a 600-byte message, QUIT) with the server's
replies.  Two views of the same sessions, interleaved, best of ``--rounds``: the client packets alone
(the engine without the reply mark: the DATA taken as accepted), and the packets the kernel would queue
with the reply mark (the client's, plus each server packet sent while the engine keeps the mark on its
connection: the RCPT's reply and the 354), read by an engine that watches replies.  Prints packets and
engine CPU per session and the ratio.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.bench import ACK, PSH, SERVER4, SYN, source, tcp_packet
from inspector.config import Config
from inspector.engine import Engine
from inspector.rules import load_rules

EXCHANGE = [(b"EHLO client.example\r\n", b"250-mx.example\r\n250 PIPELINING\r\n"),
            (b"MAIL FROM:<bot@sender.example>\r\n", b"250 2.1.0 Ok\r\n"),
            (b"RCPT TO:<u@ok.example>\r\n", b"250 2.1.5 Ok\r\n"),
            (b"DATA\r\n", b"354 End data with <CR><LF>.<CR><LF>\r\n"),
            (b"Subject: hi\r\n\r\n" + b"x" * 600 + b"\r\n.\r\n", b"250 2.0.0 Ok: queued as 1\r\n"),
            (b"QUIT\r\n", b"221 2.0.0 Bye\r\n")]


def session(i: int, rng: random.Random) -> list[tuple[bool, bytes]]:
    """(from the client?, packet) of one session; the handshake proven by the client's ACK (as live)."""
    src, sport = source(i), 20000 + i % 40000
    seq, sseq = rng.getrandbits(32), rng.getrandbits(32)
    out = [(True, tcp_packet(src, SERVER4, sport, 25, seq, SYN))]
    seq += 1
    out.append((True, tcp_packet(src, SERVER4, sport, 25, seq, ACK)))
    banner = b"220 mx.example ESMTP\r\n"
    out.append((False, tcp_packet(SERVER4, src, 25, sport, sseq + 1, ACK | PSH, banner)))
    sseq += 1 + len(banner)
    for command, reply in EXCHANGE:
        out.append((True, tcp_packet(src, SERVER4, sport, 25, seq, ACK | PSH, command)))
        seq += len(command)
        out.append((False, tcp_packet(SERVER4, src, 25, sport, sseq, ACK | PSH, reply)))
        sseq += len(reply)
    return out


def as_queued(sessions: list[list[tuple[bool, bytes]]]) -> list[bytes]:
    """The packets the kernel queues with the reply mark: a server packet only while its connection has it."""
    engine = Engine(Config(), load_rules([]))
    engine.watch_replies()
    out = []
    for s in sessions:
        for client, p in s:
            if not client:
                key = p[16:20] + p[12:16] + p[22:24] + p[20:22]  # its connection's client -> server key
                flow = engine.flows.flows.get(key)
                if flow is None or flow.state is None or not flow.state.kernel_replies:
                    continue
            out.append(p)
            engine.process(p, 0.0)
    return out


def cpu(packets: list[bytes], replies: bool) -> float:
    engine = Engine(Config(), load_rules([]))
    if replies:
        engine.watch_replies()
    process = engine.process
    started = time.process_time()
    for i, p in enumerate(packets):
        process(p, i * 1e-5)
    return time.process_time() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(1)
    sessions = [session(i, rng) for i in range(args.sessions)]
    client = [p for s in sessions for c, p in s if c]
    queued = as_queued(sessions)
    best = {"client": float("inf"), "replies": float("inf")}
    for _ in range(args.rounds):  # interleaved, so machine noise hits both alike
        best["client"] = min(best["client"], cpu(client, False))
        best["replies"] = min(best["replies"], cpu(queued, True))
    n = len(sessions)
    print(f"# SMTP replies (decide = early), {n} sessions, best of {args.rounds}")
    for label, packets, key in (("client packets only", client, "client"), ("with the reply mark", queued, "replies")):
        print(f"{label:<25}: {len(packets) / n:4.1f} packets/session, {best[key] / n * 1e6:6.1f} us/session")
    print(f"ratio (reply mark / none): {best['replies'] / best['client']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
