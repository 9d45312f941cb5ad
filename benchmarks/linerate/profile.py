"""py-spy sampling of inspector processes during a load run (``line_rate.py --profile``).

``py-spy record --format raw`` writes collapsed stacks (``frame;frame;... count``).  py-spy
samples wall-clock time and does not drop every idle sample here, so stacks whose innermost
frame is the service loop itself (``Service.run`` / ``Supervisor.run``: they only wait in
``select`` there) are counted as idle and left out of the shares.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

IDLE_LEAVES = ("Service.run (", "Supervisor.run (")


def py_spy(python: str) -> str | None:
    """The py-spy next to ``python`` (a venv's bin), else on PATH."""
    here = Path(python).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


def start(exe: str, pid: int, seconds: float, out: Path, rate: int = 200) -> subprocess.Popen:
    return subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", str(rate),
                             "-f", "raw", "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def summarize(path: Path, top: int = 14) -> dict[str, Any]:
    """Shares of the busy samples: by innermost frame (self) and by any frame (inclusive)."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = idle = 0
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return {"error": str(e)}
    for line in text.splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        if frames[-1].startswith(IDLE_LEAVES):
            idle += count
            continue
        own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
    busy = total - idle
    skip = ("<module>", "_run_code", "_run_module_as_main", "main (", "run_service", "BaseProcess", "Popen",
            "_worker_main", "Supervisor._spawn", "Supervisor.start", "ForkProcess", "Service.run (",
            "Supervisor.run (")
    return {
        "samples": total, "idle": idle, "busy": busy,
        "self": [(f, round(100 * c / busy, 1)) for f, c in own.most_common(top)] if busy else [],
        "inclusive": [(f, round(100 * c / busy, 1)) for f, c in incl.most_common(top + 20)
                      if not f.startswith(skip)][:top] if busy else [],
    }


if __name__ == "__main__":
    import json

    print(json.dumps(summarize(Path(sys.argv[1])), indent=1))
