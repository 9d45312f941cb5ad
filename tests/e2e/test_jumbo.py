"""Jumbo frames (MTU 9000): packets over 4 KB reach the engine whole.

NetfilterQueue caps the copy range at 4016 bytes and reads into 4096; before the service
asked for whole packets, the 8 KB segments of a jumbo link reached the engine cut short,
were judged malformed and dropped (the mail stalled), and bytes past the first 4 KB of a
segment went uninspected.
"""

from __future__ import annotations

import pytest

from .bed import BLOCKED, CLIENTS, Bed
from .test_inspector import assert_reset_both_ways, wait_banned

pytestmark = pytest.mark.e2e


@pytest.fixture
def jumbo(bed: Bed) -> Bed:
    for ns, dev in ((bed.server, "veth-s"), (bed.client, "veth-c")):
        bed._run(ns, ["ip", "link", "set", dev, "mtu", "9000"], True, 10)
    return bed


@pytest.mark.parametrize("decide", ["early", "depth"])
def test_jumbo_segments_are_inspected_whole(jumbo: Bed, decide: str) -> None:
    jumbo.write_config(extra=f'[stream]\ndecide = "{decide}"\ndepth = 16384\n')
    jumbo.start_inspector()
    a, b = CLIENTS[4]["a"], CLIENTS[4]["b"]

    clean = jumbo.smtp(a, body_size=300_000, timeout=10)
    assert clean["delivered"], clean

    # one ~6 KB segment: NOOPs, MAIL, then the blocked RCPT beyond the first 4 KB
    r = jumbo.smtp(b, [f"user@{BLOCKED}"], pad=1000, timeout=5)
    assert_reset_both_ways(jumbo, r, stage="noop")  # reset while the NOOP replies are read
    wait_banned(jumbo, b)
    assert not jumbo.events(event="verdict", reason="malformed")
    assert not jumbo.events(event="error"), jumbo.events(event="error")
