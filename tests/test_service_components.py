"""The admin's side components inside the single-process service (fakes for queue, firewall, resets)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Conn
from tests.test_service import BLOCKED, Bed


def _wait(pred: Callable[[], object], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_whitelist_file_is_followed_by_the_engine_and_the_pipeline(tmp_path: Path) -> None:
    wl = tmp_path / "friends.txt"
    wl.write_text("198.51.100.0/24\n")
    b = Bed(tmp_path, extra=f'[whitelist]\nfiles = ["{wl}"]\n')
    b.service.start()
    try:
        comp = b.service.host.components["whitelist"]
        assert b.service.side.engine.whitelist.contains_raw(bytes([198, 51, 100, 7]))
        c = Conn()
        b.feed(c.syn(), c.send(BLOCKED))
        assert b.firewall.entries == {}  # whitelisted: neither reset nor banned
        assert b.service.host.bans.protected("198.51.100.9") == "whitelist"
        wl.write_text("# nobody\n")
        changes = comp.changes
        comp.sources.reload()  # what SIGHUP does; a changed file is also seen within check_every
        assert _wait(lambda: comp.changes > changes)
        c2 = Conn(sport=40001)
        b.feed(c2.syn(), c2.send(BLOCKED))
        assert list(b.firewall.entries) == ["198.51.100.7"]
        assert b.service.host.status()["whitelist"]["files"][0]["entries"] == 0
        assert [e for e in b.events.events if e["event"] == "whitelist"][-1]["from_sources"] == 0
        from inspector.status import render

        assert "whitelist from files/hosts: 0 networks (1 files, 0 hosts)" in render("sock", b.service.host.status())
    finally:
        b.service.stop()


def test_config_reload_reapplies_the_whitelist_to_a_rebuilt_engine(tmp_path: Path) -> None:
    wl = tmp_path / "friends.txt"
    wl.write_text("198.51.100.7\n")
    b = Bed(tmp_path, extra=f'[whitelist]\nfiles = ["{wl}"]\n')
    b.service.start()
    try:
        engine = b.service.side.engine
        # a config change that rebuilds the engine
        b.config.write_text(b.config.read_text() + "\n[stream]\ndepth = 8192\n")
        b.service.side.request_reload()
        check = b.service.side._check_reload
        assert check in b.service.loop._each  # the loop checks on the reload only while one is pending
        assert _wait(lambda: (b.service.loop.turn(), b.service.side.engine is not engine)[1])
        assert b.service.side.engine.whitelist.contains_raw(bytes([198, 51, 100, 7]))
        assert check not in b.service.loop._each
        b.service.side.request_reload()  # and again for the next one
        assert _wait(lambda: (b.service.loop.turn(), b.service.side.reloads == 2)[1])
        assert check not in b.service.loop._each
    finally:
        b.service.stop()


def test_notifier_gets_the_pipelines_bans(tmp_path: Path) -> None:
    script = tmp_path / "sendmail"
    script.write_text(f'#!/bin/sh\ncat >> "{tmp_path}/mail"\n')
    script.chmod(0o755)
    b = Bed(tmp_path, extra=f'[notify]\nsendmail = "{script}"\nreport = "off"\nbans = true\n')
    b.service.start()
    try:
        c = Conn()
        b.feed(c.syn(), c.send(BLOCKED))
        assert _wait(lambda: (tmp_path / "mail").exists() and "banned 198.51.100.7" in (tmp_path / "mail").read_text())
        assert _wait(lambda: b.service.host.status()["notify"]["sent"] == 1)
        from inspector.status import render

        assert "notify: 1 sent, 0 failed" in render("sock", b.service.host.status())
    finally:
        b.service.stop()


def test_a_dead_resolver_does_not_hold_up_the_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from types import SimpleNamespace

    from inspector.events import MemorySink
    from inspector.service import components
    from inspector.whitelist_sources import WhitelistSources

    wl = tmp_path / "friends.txt"
    wl.write_text("198.51.100.7\n")
    release = threading.Event()

    def dead(host: str) -> list[str]:
        release.wait(10)
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(components, "RESOLVE_WAIT", 0.3)
    bans = SimpleNamespace(whitelist=None)
    seen: list[tuple[object, ...]] = []
    comp = components.WhitelistComponent((), bans, MemorySink(), time.time,  # type: ignore[arg-type]
                                         WhitelistSources([str(wl)], ["mx.example.org"], dead, time.time),
                                         seen.append, None)
    started = time.monotonic()
    comp.start()
    try:
        assert time.monotonic() - started < 2
        assert "198.51.100.7" in bans.whitelist  # the file is in place already
        assert seen and ipaddress_of(seen[-1]) == {"198.51.100.7/32"}
    finally:
        release.set()
        comp.close()


def ipaddress_of(networks: tuple[object, ...]) -> set[str]:
    return {str(n) for n in networks}


def test_the_service_sends_the_daily_report_when_it_is_due(tmp_path: Path) -> None:
    script = tmp_path / "sendmail"
    script.write_text(f'#!/bin/sh\ncat >> "{tmp_path}/mail"\n')
    script.chmod(0o755)
    b = Bed(tmp_path, extra=f'[notify]\nsendmail = "{script}"\nreport_at = "07:00"\n')
    b.service.start()
    try:
        due = b.service.host.components["notify"].next_report  # type: ignore[attr-defined]
        assert due is not None and not (tmp_path / "mail").exists()
        b.now[0] = due + 1  # the service's clock reaches 07:00: the notifier's next tick sends the report
        assert _wait(lambda: (tmp_path / "mail").exists() and "Subject: inspector report for" in
                     (tmp_path / "mail").read_text())
        assert b.service.host.status()["notify"]["sent"] == 1
    finally:
        b.service.stop()


def test_the_policy_path_follows_the_one_whitelist(tmp_path: Path) -> None:
    """A sender whitelisted by a [whitelist] file gets DUNNO from the policy path (not only a refused
    ban), and loses it when the file drops it: the policy path reads the pipeline's whitelist."""
    from inspector.policy.protocol import Request

    wl = tmp_path / "friends.txt"
    wl.write_text("203.0.113.0/24\n")
    sock = tmp_path / "policy.sock"
    b = Bed(tmp_path, extra=f'[whitelist]\nfiles = ["{wl}"]\n[policy]\nlisten = "unix:{sock}"\n')
    b.service.start()
    try:
        decide = b.service.host.components["policy"].service.decider.decide
        request = Request({"request": "smtpd_access_policy", "protocol_state": "RCPT",
                           "client_address": "203.0.113.9", "recipient": "v@blocked.test"})
        assert decide(request).outcome == "whitelisted"
        comp = b.service.host.components["whitelist"]
        wl.write_text("# nobody\n")
        changes = comp.changes
        comp.sources.reload()
        assert _wait(lambda: comp.changes > changes)
        assert decide(request).outcome == "reject"
    finally:
        b.service.stop()
