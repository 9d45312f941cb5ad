"""Run ``python -m inspector replay`` the way a user does and compare its JSON lines
with expectations written as TOML tables (see tests/cases.toml for the format)."""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Keys compared on every decision line even when an expectation leaves them out:
# leaving them out means "absent" (no ban, not an alert).
ALWAYS = ("ban", "alert")
# Keys an expectation may use; anything else is a typo in the case file.
KNOWN = {"verdict", "reason", "src", "dst", "sport", "dport", "rule", "match", "ban", "ban_network",
         "detail", "alert", "time", "count"}


@dataclass
class Replay:
    decisions: list[dict[str, Any]]
    summary: dict[str, Any]
    command: list[str]


def replay(capture: Path, workdir: Path, *, domains: list[str], payload: list[str] | None = None,
           config: str | None = None, args: list[str] | None = None) -> Replay:
    """Write the rule files (and config) into ``workdir`` and replay ``capture``."""
    rules = workdir / "rules"
    rules.mkdir()
    (rules / "blocked.txt").write_text("".join(f"{d}\n" for d in domains), encoding="utf-8")
    if payload:
        (rules / "strings.payload").write_text("".join(f"{p}\n" for p in payload), encoding="utf-8")
    command = [sys.executable, "-m", "inspector", "replay", str(capture), "--rules", str(rules)]
    if config is not None:
        (workdir / "config.toml").write_text(config, encoding="utf-8")
        command += ["--config", str(workdir / "config.toml")]
    command += args or []
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(command)} exited {proc.returncode}:\n{proc.stderr}"
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out and "summary" in out[-1], f"no summary line in:\n{proc.stdout}"
    return Replay(out[:-1], out[-1]["summary"], command)


def expand(expect: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One expectation per decision line: ``count = n`` repeats a table n times."""
    out = []
    for entry in expect:
        unknown = set(entry) - KNOWN
        assert not unknown, f"unknown key(s) {sorted(unknown)} in expectation {entry}"
        assert "verdict" in entry and "reason" in entry, f"verdict and reason are required: {entry}"
        n = entry.get("count", 1)
        body = {k: v for k, v in entry.items() if k != "count"}
        out.extend([body] * n)
    return out


def project(actual: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``actual`` that ``expected`` speaks about (plus ALWAYS)."""
    keys = [*expected, *(k for k in ALWAYS if k not in expected)]
    return {k: actual.get(k) for k in keys}


def check(result: Replay, expect: list[dict[str, Any]], summary: dict[str, Any] | None = None) -> None:
    """Compare decision lines in order, the summary's verdict counts, and any summary fields given."""
    wanted = expand(expect)
    wanted = [{**w, "time": round(w["time"], 6)} if "time" in w else w for w in wanted]
    got = [project(a, w) for a, w in zip(result.decisions, wanted, strict=False)]
    got += result.decisions[len(wanted):]  # extra lines show up whole in the diff
    want = [{**{k: None for k in ALWAYS}, **w} for w in wanted]
    assert got == want, "decision lines differ (- expected, + replay):\n" + _diff(want, got)
    counts = Counter(w["reason"] for w in wanted)
    expected_summary = {"verdicts": dict(sorted(counts.items())), "engine_errors": 0,
                        "malformed": counts.get("malformed", 0), **(summary or {})}
    actual_summary = {k: result.summary.get(k) for k in expected_summary}
    assert actual_summary == expected_summary, f"summary differs:\n{_diff([expected_summary], [actual_summary])}"


def _diff(expected: list[dict[str, Any]], actual: list[dict[str, Any]]) -> str:
    a = [json.dumps({k: v for k, v in x.items() if v is not None}, sort_keys=True) for x in expected]
    b = [json.dumps({k: v for k, v in x.items() if v is not None}, sort_keys=True) for x in actual]
    return "\n".join(difflib.unified_diff(a, b, "expected", "replay", n=2, lineterm=""))


def case_params(cases: list[dict[str, Any]]) -> list[Any]:
    """One pytest param per case, named after it; ``xfail`` cases are strict xfails."""
    import pytest

    out = []
    for case in cases:
        marks = [pytest.mark.xfail(reason=case["xfail"], strict=True)] if "xfail" in case else []
        out.append(pytest.param(case, id=case["name"], marks=marks))
    return out
