#!/usr/bin/env python3
"""``inspector report`` over a generated 1,000,000-event log: time and counts against the truth.

    python benchmarks/report.py [--events 1000000]
"""

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def generate(path: Path, n: int, now: float) -> Counter:
    rng = random.Random(5)
    truth: Counter = Counter()
    with path.open("w") as f:
        for i in range(n):
            t = now - 86000 + i * (86000 / n)
            kind = rng.random()
            src = f"198.{18 + rng.randrange(2)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            if kind < 0.5:
                reason = rng.choice(("domain", "rate", "tcp-flags", "payload"))
                truth["block:" + reason] += 1
                ev = {"event": "verdict", "time": t, "verdict": "drop", "reason": reason, "src": src, "dport": 25}
                if reason == "domain":
                    ev.update(rule=f"spam{rng.randrange(50)}.example", match="<x@spam.example>")
            elif kind < 0.75:
                reason = rng.choice(("domain", "rate", "log:sshd"))
                truth["ban:" + reason] += 1
                ev = {"event": "ban", "time": t, "network": src, "seconds": 86400, "reason": reason}
            else:
                ev = {"event": "verdict", "time": t, "reason": "banned", "src": src}
            f.write(json.dumps(ev, separators=(",", ":")) + "\n")
    return truth


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.jsonl"
        truth = generate(log, args.events, time.time())
        started = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "inspector", "report", "--events", str(log), "--since", "1d",
                            "--json", "--html", str(Path(tmp) / "r.html")], capture_output=True, text=True,
                           check=True, cwd=Path(__file__).resolve().parent.parent)
        took = time.perf_counter() - started
        out = json.loads(r.stdout)
    got = Counter({"block:" + k: v for k, v in out["blocks"].items()}) + \
        Counter({"ban:" + k: v for k, v in out["bans"].items()})
    ok = got == truth
    print(f"{args.events:,} events ({log.name}): report with HTML in {took:.2f}s "
          f"({args.events / took:,.0f} events/s); counts match the generated truth: {ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
