#!/usr/bin/env python3
"""Replay on a new-flow-heavy capture, against a bare pass over the same capture, in one run.

    python benchmarks/replay_flows.py [--sources 100000] [--sessions 5000] [--rounds 3] [--quick]

The capture (LINKTYPE_RAW pcap, written to a temporary directory): one SYN from each of
``--sources`` fresh sources (198.18.0.0/15 first, then IPv6 /64s), interleaved with
``--sessions`` ordinary SMTP sessions (handshake, EHLO, MAIL, RCPT, DATA, body, QUIT, FIN;
1 in 10 to a blocked domain), one packet every 100 µs of capture time.

Two passes over the same file, interleaved over ``--rounds`` rounds (CPU time of this
process, ``time.process_time``; the best round of each):

* **bare**: the capture reader (``inspector.sources.pcap.CaptureReader``), the IPv4/IPv6 and
  TCP headers parsed with ``struct`` (addresses, ports, sequence number, flags, payload
  bounds), one dict lookup per packet: the floor any replay is measured against;
* **replay**: ``inspector.replay.replay_file`` with the default configuration and the
  blocked domains as rules: what ``inspector replay`` does, JSON output included.

Target (issue 16): replay >= 0.5x the bare pass's packets/s.
"""

from __future__ import annotations

import argparse
import io
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.bench import SERVER4, SERVER6, SYN, smtp_session, source, tcp_packet  # noqa: E402
from inspector.config import Config  # noqa: E402
from inspector.engine import Engine  # noqa: E402
from inspector.replay import replay_file  # noqa: E402
from inspector.rules import DOMAIN, RuleFile, load_rules  # noqa: E402
from inspector.sources.pcap import CaptureReader  # noqa: E402

TARGET = 0.5


def build_capture(path: Path, sources: int, sessions: int, seed: int = 16) -> int:
    """Write the capture; return its packet count."""
    rng = random.Random(seed)
    syns = [tcp_packet(source(i), SERVER4 if len(source(i)) == 4 else SERVER6, 1024 + i % 60000, 25,
                       rng.getrandbits(32), SYN) for i in range(sources)]
    # session clients come from the top of 198.18.0.0/15, away from the fresh sources
    convs = [smtp_session(source(131071 - (n % 20000)), 20000 + n % 40000, n % 10 == 0, rng)
             for n in range(sessions)]
    packets: list[bytes] = []
    active: list[list[bytes]] = []
    pending = iter(convs)
    total = sources + sum(len(c) for c in convs)
    every = max(1, total // max(1, sources))
    fresh = iter(syns)
    while True:
        while len(active) < 256:
            conv = next(pending, None)
            if conv is None:
                break
            conv.reverse()
            active.append(conv)
        if not active:
            break
        k = rng.randrange(len(active))
        packets.append(active[k].pop())
        if not active[k]:
            active[k] = active[-1]
            active.pop()
        if len(packets) % every == 0:
            syn = next(fresh, None)
            if syn is not None:
                packets.append(syn)
    packets.extend(fresh)
    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))  # LINKTYPE_RAW
        t = 1_700_000_000.0
        for p in packets:
            sec = int(t)
            f.write(struct.pack("<IIII", sec, int((t - sec) * 1e6), len(p), len(p)))
            f.write(p)
            t += 0.0001
    return len(packets)


_IP4 = struct.Struct("!BxHxxHxB").unpack_from
_IP6 = struct.Struct("!BxxxHB").unpack_from
_TCP = struct.Struct("!HHIxxxxBB").unpack_from


def bare_pass(path: Path) -> tuple[int, float]:
    """Read the capture, parse the IP and TCP headers, one dict lookup per packet: (packets, CPU s)."""
    seen: dict[bytes, int] = {}
    n = 0
    started = time.process_time()
    with path.open("rb", buffering=0) as f:
        for _ts, data in CaptureReader(f, str(path)):
            n += 1
            if data[0] >> 4 == 4:
                vihl, total, _frag, proto = _IP4(data)
                off = (vihl & 0x0F) << 2
                key = data[12:20]
            else:
                _v, plen, proto = _IP6(data)
                off, total = 40, 40 + plen
                key = data[8:40]
            if proto != 6:
                continue
            sport, dport, _seq, doff, _flags = _TCP(data, off)
            _payload = (off + ((doff >> 4) << 2), total)
            key += data[off:off + 4]
            if seen.get(key) is None:
                seen[key] = n
    return n, time.process_time() - started


def replay_pass(path: Path, rules_dir: Path) -> tuple[int, float, dict[str, object]]:
    """``inspector replay`` over the capture (JSON lines to memory): (packets, CPU s, summary)."""
    rules_file = rules_dir / "blocked.txt"
    rules_file.write_text("blocked-0.example\nblocked-1.example\n")
    engine = Engine(Config(), load_rules([RuleFile(rules_file, DOMAIN)]))
    started = time.process_time()
    result = replay_file(engine, str(path), io.StringIO())
    return result.packets, time.process_time() - started, result.summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=100_000, help="fresh sources, one SYN each (default 100,000)")
    ap.add_argument("--sessions", type=int, default=5_000, help="ordinary SMTP sessions (default 5,000)")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    ap.add_argument("--quick", action="store_true", help="10,000 sources, 500 sessions, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.sources, args.sessions, args.rounds = 10_000, 500, 1
    with tempfile.TemporaryDirectory() as tmp:
        cap = Path(tmp) / "new-flows.pcap"
        count = build_capture(cap, args.sources, args.sessions)
        print(f"# replay on a new-flow-heavy capture: {args.sources:,} fresh sources (one SYN each) + "
              f"{args.sessions:,} SMTP sessions = {count:,} packets, {cap.stat().st_size / 1e6:.1f} MB")
        bare: list[float] = []
        replay: list[float] = []
        summary: dict[str, object] = {}
        for r in range(args.rounds):
            order = ("bare", "replay") if r % 2 == 0 else ("replay", "bare")
            for what in order:
                if what == "bare":
                    n, cpu = bare_pass(cap)
                    bare.append(n / cpu)
                else:
                    n, cpu, summary = replay_pass(cap, Path(tmp))
                    replay.append(n / cpu)
            print(f"   round {r + 1}: bare {bare[-1]:>10,.0f} packets/s   replay {replay[-1]:>10,.0f} packets/s"
                  f"   ratio {replay[-1] / bare[-1]:.3f}")
        b, p = max(bare), max(replay)
        print(f"bare pass (read + parse IP/TCP + one dict lookup): {b:>10,.0f} packets/s ({1e6 / b:.2f} us/packet)")
        print(f"inspector replay:                                  {p:>10,.0f} packets/s ({1e6 / p:.2f} us/packet)")
        print(f"replay verdicts: {summary.get('verdicts')}; flows {summary.get('flows')}")
        ok = p / b >= TARGET
        print(f"TARGET replay on a new-flow-heavy capture >= {TARGET}x the bare pass: {p / b:.3f}x"
              f" (best of {args.rounds} interleaved rounds) -> {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
