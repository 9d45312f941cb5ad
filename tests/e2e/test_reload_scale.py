"""SIGHUP with a 1,000,000-domain list: built aside while verdicts go on, then swapped in."""

from __future__ import annotations

import signal
import time

import pytest

from .bed import BLOCKED, CLIENTS, Bed, wait_for

pytestmark = pytest.mark.e2e

DOMAINS = 1_000_000


def test_a_million_domains_reload_while_mail_flows(live: Bed) -> None:
    a = CLIENTS[4]["a"]
    sources = [f"198.51.100.{i}" for i in range(60, 100)]  # one session each: no rate limit trips
    live.add_client_addresses(sources)
    with live.rules_file.open("w") as f:  # the new list, written aside, then swapped in by a rename
        f.write(f"{BLOCKED}\n")
        f.writelines(f"d{i}.spam{i % 97}.example\n" for i in range(DOMAINS - 2))
        f.write("last.spam.example\n")
    assert live.inspector is not None
    live.inspector.send(signal.SIGHUP)
    started = time.monotonic()
    # verdicts go on while the list is parsed: clean sessions keep being delivered
    during = []
    for src in sources:
        r = live.smtp(src, ["user@example.org"], timeout=5)
        assert r["delivered"], r
        during.append(time.monotonic() - started)
        if live.events(event="reload"):
            break
    reload = live.wait_event(event="reload", timeout=30)
    took = time.monotonic() - started
    assert reload["ok"] is True and reload["domains"] == DOMAINS, reload
    # the new list is in force: an entry from its end blocks
    r = live.smtp(a, ["x@mx.last.spam.example"], timeout=3)
    assert not r["delivered"]
    wait_for(lambda: live.banned(a) is not None, 3, what="banned")
    meanwhile = [t for t in during if t < took]
    assert meanwhile, "no session ran while the list was being built"
    print(f"\n1,000,000-domain reload: {took:.1f}s, {len(meanwhile)} clean sessions delivered meanwhile")
