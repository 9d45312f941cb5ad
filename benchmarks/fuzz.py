#!/usr/bin/env python3
"""Mutation fuzzing of the engine at scale.

    python benchmarks/fuzz.py [--inputs 1000000] [--seed 1]

Starts from valid packets (the synthetic workload: SMTP, SSH, IPv4, IPv6) and
mutates them (bit flips, header-field overwrites, truncation, extension,
splices, random bytes).  The engine turns any internal exception into a
counted ``engine-error`` and accepts the packet (fail open), so "no exception"
means that counter stays at zero; the flow table and rate caches must stay
within their bounds throughout.  Exits non-zero on any failure.
"""

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.bench import domain_rules, mixed_workload
from inspector.config import Config
from inspector.engine import Engine
from inspector.rules import PAYLOAD, RuleFile, load_rules


def mutate(rng: random.Random, p: bytes, corpus: list[bytes]) -> bytes:
    b = bytearray(p)
    for _ in range(rng.choice((1, 1, 2, 3))):
        op = rng.randrange(7)
        if op == 0 and b:
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # overwrite a header byte (first 80) with an interesting value
            i = rng.randrange(min(80, len(b)))
            b[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0x45, 0x60, 0x06, 0x2C, 0x50, 0xF0, rng.randrange(256)))
        elif op == 2:
            del b[rng.randrange(len(b) + 1):]
        elif op == 3:
            b += rng.randbytes(rng.randrange(1, 64))
        elif op == 4:
            other = rng.choice(corpus)
            cut = rng.randrange(len(other) + 1)
            b = b[:rng.randrange(len(b) + 1)] + other[cut:]
        elif op == 5:
            return rng.randbytes(rng.randrange(0, 120))
        elif op == 6 and len(b) > 40:  # payload from a known SMTP/SSH line
            b[40:] = rng.choice((b"RCPT TO:<x@blocked-0.example>\r\n", b"DATA\r\n", b"BDAT 4294967296 LAST\r\n",
                                 b"MAIL FROM:<\"a\\\"@b\"@c>\r\n", b"STARTTLS\r\n", b"evilbot\r\n", b"\r\n.\r\n"))
    return bytes(b)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "p.payload").write_text("evilbot\n")
        rules = load_rules(domain_rules(100, Path(tmp)) + [RuleFile(Path(tmp) / "p.payload", PAYLOAD)])
    engine = Engine(Config(max_flows=1000, rate_capacity=1000, depth=1024), rules)
    corpus = [p for _, p in mixed_workload(20_000, 2_000, seed=args.seed)]
    started = time.perf_counter()
    now = 0.0
    for i in range(args.inputs):
        now += rng.choice((0.0001, 0.001, 0.5, 30.0))
        engine.process(mutate(rng, rng.choice(corpus), corpus), now)
        if engine.counts["engine-error"] or len(engine.flows) > 1000:
            print(f"FAIL after {i + 1} inputs: {dict(engine.counts)}")
            return 1
    took = time.perf_counter() - started
    c = engine.counts
    print(f"{args.inputs:,} inputs in {took:.0f}s: engine errors {c['engine-error']}, malformed {c['malformed']:,}, "
          f"non-TCP {c['not-tcp']:,}, verdicts { {k[8:]: v for k, v in c.items() if k.startswith('verdict:')} }, "
          f"flows held {len(engine.flows)} (max 1000), rate entries "
          f"{max(len(lim) for lim, _ in engine._limiters.values())} (max 1000)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
