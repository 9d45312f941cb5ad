"""Data-driven capture tests: each generated capture replayed through the CLI
(`python -m inspector replay`) must give the decision lines tests/cases.toml lists.

The captures are rebuilt from tests/make_captures.py into a temporary directory;
the committed copies in tests/pcaps/generated/ must be byte-identical to that
build, so they never drift from the script that documents them.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.replaylib import case_params, check, replay

TESTS = Path(__file__).resolve().parent
COMMITTED = TESTS / "pcaps" / "generated"
CASES: list[dict[str, Any]] = tomllib.loads((TESTS / "cases.toml").read_text(encoding="utf-8"))["case"]
CASE_KEYS = {"name", "capture", "domains", "payload", "config", "args", "xfail", "expect", "summary"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("generated")
    subprocess.run([sys.executable, str(TESTS / "make_captures.py"), str(out)], check=True,
                   capture_output=True, timeout=300)
    return out


def test_case_file_is_well_formed() -> None:
    names = [c["name"] for c in CASES]
    assert len(names) == len(set(names)), "duplicate case names"
    for case in CASES:
        assert set(case) <= CASE_KEYS, f"{case['name']}: unknown keys {sorted(set(case) - CASE_KEYS)}"
        assert "expect" in case, f"{case['name']}: no expect list (write expect = [] for no verdicts)"


def test_committed_captures_match_a_fresh_build(built: Path) -> None:
    fresh = {p.name: p.read_bytes() for p in built.glob("*.pcap")}
    committed = {p.name: p.read_bytes() for p in COMMITTED.glob("*.pcap")}
    assert sorted(committed) == sorted(fresh), "run: python tests/make_captures.py"
    stale = sorted(name for name in fresh if committed[name] != fresh[name])
    assert not stale, f"committed captures differ from a fresh build: {stale}; run: python tests/make_captures.py"


def test_every_capture_has_a_case(built: Path) -> None:
    captures = {p.stem for p in built.glob("*.pcap")}
    used = {c.get("capture", c["name"]) for c in CASES}
    assert used - captures == set(), "cases name captures make_captures.py does not build"
    assert captures - used == set(), "captures without a case in cases.toml"


@pytest.mark.parametrize("case", case_params(CASES))
def test_replay(case: dict[str, Any], built: Path, tmp_path: Path) -> None:
    capture = built / f"{case.get('capture', case['name'])}.pcap"
    result = replay(capture, tmp_path, domains=case.get("domains", ["blocked.test"]), payload=case.get("payload"),
                    config=case.get("config"), args=case.get("args"))
    check(result, case["expect"], case.get("summary"))
