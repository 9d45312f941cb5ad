"""decide = "early" inspects every transaction of a session, and a bulk message still stays in the kernel
(issue 12, kind 5): the live inspector with the setup script's in-body rules (body mark).

* a 10 MB message: the queued packets of its connection (NFQUEUE id_sequence delta) are counted and
  must be at most 20; the figure is printed (``-s``) and written to
  /tmp/inspector-e2e-smtp-body.json (or $INSPECTOR_E2E_SMTP_BODY);
* a second transaction after a message, with a blocked recipient: reset and banned, IPv4 and IPv6,
  also when the end-of-data line comes in a segment of its own.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .bed import BLOCKED, CLIENTS, Bed
from .test_measurements import conntrack_orig, queue_ids

pytestmark = [pytest.mark.e2e]

OUT = Path(os.environ.get("INSPECTOR_E2E_SMTP_BODY", "/tmp/inspector-e2e-smtp-body.json"))
TEN_MB = 10_000_000


def test_ten_megabyte_message_sends_at_most_20_packets_to_userspace(live: Bed) -> None:
    result = {}
    for v in (4, 6):
        src = CLIENTS[v]["c"]
        before = queue_ids(live)
        r = live.smtp(src, ["user@example.org"], body_size=TEN_MB, timeout=60)
        queued = queue_ids(live) - before
        assert r["delivered"] and r["error"] is None, r
        ct = conntrack_orig(live, src, r["sport"])
        result[f"ipv{v}"] = {"mail_bytes": TEN_MB, "queued_packets": queued, **ct,
                             "seconds": round(r["t_delivered"] - r["t_data"], 3)}
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n10 MB message, decide = early with the in-body filter: {json.dumps(result)}")
    for v in (4, 6):
        assert result[f"ipv{v}"]["queued_packets"] <= 20, result


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("end_apart", [False, True], ids=["dot-line-with-body", "dot-line-apart"])
def test_second_transaction_after_a_message_is_inspected(live: Bed, v: int, end_apart: bool) -> None:
    src = CLIENTS[v]["a"] if not end_apart else CLIENTS[v]["b"]
    r = live.smtp(src, ["user@example.org"], body_size=200_000, timeout=20, end_apart=end_apart,
                  second_rcpts=[f"x@{BLOCKED}"])
    assert r["delivered"], r
    assert r["error"] in ("reset", "closed"), r
    assert live.wait_event(event="verdict", src=src, reason="domain", timeout=5)
    assert live.banned(src) is not None
