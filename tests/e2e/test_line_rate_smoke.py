"""The line-rate benchmark's quick mode, as a smoke test: it runs, cleans up, and blocks what it must."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "line_rate.py"


def test_quick_benchmark(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    r = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json", str(out)], capture_output=True,
                       text=True, timeout=600, check=False)
    if r.returncode == 2 and "cannot run" in r.stderr:
        pytest.skip(r.stderr.strip())
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = json.loads(out.read_text())
    ns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "linerate" not in ns and "lr-" not in ns, ns
    text = r.stdout
    assert "inspector" in text and "bulk mail" in text and "SYN flood" in text
    assert "smtp" in results and "bulk" in results and "flood" in results
    for rnd in results["smtp"]["rounds"]:
        runs = [run for name, run in rnd.items() if name.startswith("inspector-w")]
        assert runs and "bare" in rnd and rnd["bare"]["cpu_us_per_pkt"] > 0, sorted(rnd)
        for ins in runs:
            for kind in ("plain", "upper", "split"):  # every blocked transaction detected and reset
                assert (ins[kind]["expected"] > 0
                        and ins[kind]["blocked"] == ins[kind]["reset"] == ins[kind]["expected"]), (ins["label"], kind)
            assert ins["legit_failed"] == 0 and ins["sink"]["delivered_blocked"] == 0 and ins["alive"]
