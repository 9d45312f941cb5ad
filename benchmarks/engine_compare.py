#!/usr/bin/env python3
"""The engine and replay figures of this tree against another revision's, in one run.

    python benchmarks/engine_compare.py [--base ecc7edc] [--rounds 4]

Exports ``--base`` (any git revision) with ``git archive`` into a temporary directory and runs
``benchmarks/engine.py --quick`` in each tree alternately (the base first in odd rounds, this
tree first in even ones), each in a fresh process with this interpreter.  Prints each round's
figures, then the medians and the ratio this tree / base for:

* **engine**: the engine alone over the mixed in-memory workload, 2 domains (packets/s);
* **replay**: ``replay`` of the same workload from a pcap file (packets/s).

On a shared machine only ratios from interleaved rounds mean anything (issue 12: "replay and
engine speed figures stay within 10%").
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
_ENGINE = re.compile(r"2 domains:\s+([\d,]+) packets/s")
_REPLAY = re.compile(r"replay \(read \+ engine \+ JSON\):\s+([\d,]+) packets/s")


def export(rev: str, into: Path) -> Path:
    """Write the tree of ``rev`` into ``into`` (``git archive``); return it."""
    archive = into / "base.tar"
    subprocess.run(["git", "-C", str(HERE), "archive", "--format=tar", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def figures(tree: Path) -> tuple[float, float]:
    """``(engine packets/s, replay packets/s)`` from one ``engine.py --quick`` run in ``tree``."""
    out = subprocess.run([sys.executable, "benchmarks/engine.py", "--quick"], cwd=tree, check=True,
                         capture_output=True, text=True).stdout
    engine, replay = _ENGINE.search(out), _REPLAY.search(out)
    if engine is None or replay is None:
        raise SystemExit(f"{tree}: unexpected benchmarks/engine.py output:\n{out}")
    return float(engine.group(1).replace(",", "")), float(replay.group(1).replace(",", ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="ecc7edc", help="the revision to compare with (default ecc7edc)")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (default 4)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"base": export(args.base, Path(tmp)), "this": HERE}
        runs: dict[str, list[tuple[float, float]]] = {"base": [], "this": []}
        print(f"# engine.py --quick: this tree vs {args.base}, {args.rounds} interleaved rounds")
        for r in range(args.rounds):
            for name in (("base", "this") if r % 2 == 0 else ("this", "base")):
                runs[name].append(figures(trees[name]))
            (be, br), (te, tr) = runs["base"][-1], runs["this"][-1]
            print(f"   round {r + 1}: engine {be:>9,.0f} -> {te:>9,.0f} ({te / be:.3f})   "
                  f"replay {br:>9,.0f} -> {tr:>9,.0f} ({tr / br:.3f}) packets/s")
    for i, what in enumerate(("engine", "replay")):
        base = statistics.median(x[i] for x in runs["base"])
        this = statistics.median(x[i] for x in runs["this"])
        print(f"{what:>6}: {args.base} {base:>9,.0f}  this tree {this:>9,.0f} packets/s (medians)  "
              f"ratio {this / base:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
