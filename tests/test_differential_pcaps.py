"""The differential captures (tests/pcaps/differential, recorded against a real Postfix 3.7 by
``tests/e2e/differential/record.py``) through the engine, in both decide modes, without root:
the engine must block exactly the captures in which Postfix accepted a blocked recipient."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from tests.e2e.differential.harness import ENGINE_CONFIG, engine_blocks

HERE = Path(__file__).resolve().parent / "pcaps" / "differential"
EXPECTED = tomllib.loads((HERE / "expected.toml").read_text(encoding="utf-8"))
CAPTURES = EXPECTED["capture"]


@pytest.mark.parametrize("view", ["client", "replies"])
@pytest.mark.parametrize("mode", ["early", "depth"])
@pytest.mark.parametrize("capture", CAPTURES, ids=[c["file"].removesuffix(".pcap") for c in CAPTURES])
def test_engine_agrees_with_postfix(capture: dict[str, object], mode: str, view: str, tmp_path: Path) -> None:
    """``client``: the client-side capture (the view without the reply mark); ``replies``: the two-sided
    one (the server's replies read).  A policy refusal only the replies show is checked in the latter."""
    name = capture["file"] if view == "client" else capture["replies_file"]
    blocked = engine_blocks(HERE / str(name), tmp_path, mode, EXPECTED["blocked"], extra=ENGINE_CONFIG)
    if view == "client" and capture.get("replies_only"):
        # the remaining limit without the server's replies (README "The server's replies"): the client
        # side alone cannot show a policy refusal, so the engine takes the refused DATA as a body's start
        # and misses what follows; pinned so that the README is updated if this ever changes
        assert blocked is False, f"client-only view of a policy refusal now blocks {blocked}: update the README"
        return
    assert blocked == capture["blocked_accepted"], (
        f"Postfix delivered {capture['postfix_recipients']}, engine blocked: {blocked}")


def test_every_kind_is_recorded() -> None:
    kinds = {str(c["kind"]) for c in CAPTURES}
    assert {"2", "3", "4", "5"} <= kinds
    assert {4, 6} == {c["family"] for c in CAPTURES}
