"""The operator's view against a running service: status, metrics, report."""

from __future__ import annotations

import json
import sys
import urllib.request

import pytest

from .bed import BLOCKED, CLIENTS, Bed, wait_for

pytestmark = pytest.mark.e2e


def test_status_answers_is_it_working(live: Bed) -> None:
    a = CLIENTS[4]["a"]
    r = live.smtp(a, [f"x@{BLOCKED}"], timeout=3)
    assert not r["delivered"]
    wait_for(lambda: live.banned(a) is not None, 3, what="banned")
    # workers report to the supervisor once a second
    wait_for(lambda: json.loads(live.cli("status", "--json").stdout)["live"]["reasons"].get("domain"), 3,
             what="the verdict in the status")
    out = live.cli("status")
    assert out.returncode == 0, out.stderr
    screen = out.stdout
    print("\n" + screen)
    assert "RUNNING" in screen and "mode ENFORCE" in screen
    assert "bans active: 1" in screen and "domain 1" in screen
    assert f"{BLOCKED} (1)" in screen and a in screen
    assert any(line.split()[:2] == [a, "domain"] and "left" in line for line in screen.splitlines())
    assert "dropped (queue or socket full)" in screen and "fail-open passes" in screen
    raw = json.loads(live.cli("status", "--json").stdout)
    assert raw["bans_by_reason"] == {"domain": 1} and raw["live"]["reasons"]["domain"] == 1
    # how many packets one wakeup of the queue handles (packets / queue-wakeups)
    assert 1 <= raw["counts"]["queue-wakeups"] <= raw["packets"], raw["counts"]


def test_status_when_not_running(bed: Bed) -> None:
    bed.write_config()
    out = bed.cli("status")
    assert out.returncode == 3 and "NOT RUNNING" in out.stdout


def test_metrics_match_the_events(bed: Bed) -> None:
    port = 19478
    bed.write_config(extra=f'\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    bed.start_inspector()
    for src in (CLIENTS[4]["a"], CLIENTS[4]["b"]):
        assert not bed.smtp(src, [f"x@{BLOCKED}"], timeout=3)["delivered"]
    wait_for(lambda: len(bed.events(event="ban")) == 2, 3, what="two bans")

    def scrape() -> str:  # the endpoint listens on the server namespace's loopback: scrape it from there
        return bed.s(sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen("
                     f"'http://127.0.0.1:{port}/metrics', timeout=3).read().decode())").stdout

    def value(name: str, text: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name) and not line.startswith("#"))
    # workers report to the supervisor once a second
    def both() -> str | None:
        text = scrape()
        return text if value('inspector_verdicts_total{reason="domain"}', text) == 2 else None
    text = wait_for(both, 5, interval=0.2, what="the scrape shows both verdicts")
    verdicts = [e for e in bed.events(event="verdict") if e["reason"] != "banned"]
    assert value('inspector_verdicts_total{reason="domain"}', text) == len(verdicts) == 2
    assert value("inspector_bans_issued_total", text) == 2
    assert value('inspector_bans_active{reason="domain"}', text) == 2
    assert value("inspector_packets_total", text) > 0
    assert "inspector_engine_seconds_bucket" in text
    assert "inspector_queue_dropped_total" in text and "inspector_fail_open_passes_total" in text
    with pytest.raises(OSError):  # loopback of the namespace only: not reachable from the client side
        urllib.request.urlopen(f"http://192.0.2.25:{port}/metrics", timeout=1)
