#!/usr/bin/env python3
"""Engine benchmark: prints the figures the engine issue asks for.

    python benchmarks/engine.py [--packets 1000000] [--quick]

1. engine alone over a mixed in-memory workload (handshakes, SMTP sessions of
   which 1 in 10 is blocked, SSH sessions, flood SYNs from 100,000 sources),
   with 2 and with 100,000 blocked domains: packets/s and the ratio;
2. ``replay`` of the same workload from a pcap file, and the capture reader alone;
3. peak RSS as flood sources grow (10k, 100k, 1M), each in a fresh process;
4. rule loading at scale: 100,000 and 1,000,000 domains, time and process RSS.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inspector.bench import (
    Engine,
    domain_rules,
    flood,
    mixed_workload,
    peak_rss_mb,
    run_engine,
)
from inspector.config import Config
from inspector.rules import load_rules


def write_pcap(path: Path, workload: list[tuple[float, bytes]]) -> None:
    import struct

    with path.open("wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))  # LINKTYPE_RAW
        for ts, p in workload:
            sec = int(ts)
            f.write(struct.pack("<IIII", sec, int((ts - sec) * 1e6), len(p), len(p)))
            f.write(p)


def child_sources(n: int) -> dict[str, float]:
    before = peak_rss_mb()
    engine = Engine(Config(), load_rules([]))
    started = time.process_time()
    for _ in flood(engine, n):
        pass
    cpu = time.process_time() - started
    return {"sources": n, "rss_before_mb": round(before, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
            "flows": len(engine.flows), "rate_entries": engine.stats()["rate_sources"],
            "pps": round(n / cpu)}


def child_rules(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        files = domain_rules(n, Path(tmp))
        size = files[0].path.stat().st_size
        started = time.perf_counter()
        rules = load_rules(files)
        took = time.perf_counter() - started
    return {"domains": len(rules.domains), "file_mb": round(size / 1e6, 1), "load_s": round(took, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1)}


def in_child(kind: str, n: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(n)], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--quick", action="store_true", help="smaller figures (CI smoke run)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, n = args.child[0], int(args.child[1])
        print(json.dumps(child_sources(n) if kind == "sources" else child_rules(n)))
        return 0

    packets = 50_000 if args.quick else args.packets
    big = 10_000 if args.quick else 100_000
    print(f"# inspector engine benchmark  (python {sys.version.split()[0]}, pid {os.getpid()})")
    workload = mixed_workload(packets, min(100_000, packets // 10))
    print(f"workload: {len(workload):,} packets")

    with tempfile.TemporaryDirectory() as tmp:
        small_rules = load_rules(domain_rules(2, Path(tmp)))
        big_rules = load_rules(domain_rules(big, Path(tmp)))
        results = {}
        # interleave the two rule sets so machine noise hits both alike
        for _ in range(2):
            for name, rules in (("2 domains", small_rules), (f"{big:,} domains", big_rules)):
                engine = Engine(Config(), rules)
                cpu, verdicts = run_engine(engine, workload)
                results.setdefault(name, []).append((len(workload) / cpu, verdicts))
        print("\n## engine alone, one core (best of 2, interleaved)")
        base = None
        for name, runs in results.items():
            pps = max(r[0] for r in runs)
            base = base or pps
            print(f"{name:>18}: {pps:>10,.0f} packets/s  ({1e6 / pps:.2f} us/packet, {runs[0][1]} non-accept "
                  f"verdicts, ratio to 2 domains {pps / base:.3f})")

        pcap = Path(tmp) / "workload.pcap"
        write_pcap(pcap, workload)
        from inspector.replay import replay_file
        from inspector.sources.pcap import CaptureReader

        with pcap.open("rb") as f:
            started = time.process_time()
            count = sum(1 for _ in CaptureReader(f))
            reader = time.process_time() - started
        engine = Engine(Config(), small_rules)
        started = time.process_time()
        result = replay_file(engine, str(pcap), io.StringIO())
        replay = time.process_time() - started
        print("\n## replay from a pcap file")
        print(f"   capture reader alone: {count / reader:>10,.0f} packets/s")
        print(f"   replay (read + engine + JSON): {result.packets / replay:>10,.0f} packets/s "
              f"({pcap.stat().st_size / 1e6:.0f} MB file)")

    print("\n## memory as flood sources grow (fresh process each, one SYN per source)")
    for n in ((10_000, 100_000) if args.quick else (10_000, 100_000, 1_000_000)):
        r = in_child("sources", n)
        print(f"   {r['sources']:>9,} sources: peak RSS {r['peak_rss_mb']:>6.1f} MB "
              f"(baseline {r['rss_before_mb']} MB), "
              f"flows held {r['flows']:,} (max 262,144), rate entries {r['rate_entries']:,}, {r['pps']:,.0f} SYN/s")

    print("\n## blocklists at scale (fresh process each)")
    for n in ((100_000,) if args.quick else (100_000, 1_000_000)):
        r = in_child("rules", n)
        print(f"   {r['domains']:>9,} domains ({r['file_mb']} MB file): loaded in {r['load_s']} s, "
              f"process peak RSS {r['peak_rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
