"""The single-process service with fakes for the queue, the firewall and the reset sender: no root."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from inspector.control import control_request
from inspector.events import MemorySink
from inspector.service.single import Service
from inspector.testing import FakeFirewall, FakeQueue, RecordingSender
from tests.conftest import Conn

BLOCKED = b"MAIL FROM:<a@ok.test>\r\nRCPT TO:<b@blocked.test>\r\n"


def write_config(tmp_path: Path, extra: str = "") -> Path:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "blocked.txt").write_text("blocked.test\n")
    cfg = tmp_path / "inspector.toml"
    cfg.write_text(f"""
[service]
state_file = "{tmp_path / 'state' / 'bans.json'}"
control_socket = "{tmp_path / 'control.sock'}"
events = ""
syslog = false
{extra}
""")
    return cfg


class Bed:
    def __init__(self, tmp_path: Path, extra: str = "", own: tuple[str, ...] = ()) -> None:
        import ipaddress

        self.now = [1000.0]
        self.queue = FakeQueue(0)
        self.firewall = FakeFirewall(lambda: self.now[0])
        self.events = MemorySink()
        self.sender = RecordingSender()
        self.config = write_config(tmp_path, extra)
        self.service = Service(str(self.config), str(tmp_path / "rules"), {}, clock=lambda: self.now[0],
                               queue=self.queue, firewall=self.firewall, resets=self.sender, events=self.events,
                               own=[ipaddress.ip_address(a) for a in own], signals=False)

    def feed(self, *packets: bytes) -> list:
        out = [self.queue.put(p) for p in packets]
        self.service.loop.turn()
        return out

    def kinds(self) -> list[str]:
        return [e["event"] for e in self.events.events]


@pytest.fixture
def bed(tmp_path):
    b = Bed(tmp_path)
    b.service.start()
    yield b
    if not b.service.loop.stopping:
        b.service.stop()


def test_a_blocked_packet_is_reset_banned_stored_and_reported(bed):
    c = Conn()
    syn, data = bed.feed(c.syn(), c.send(BLOCKED))
    assert (syn.verdict, data.verdict) == ("accept", "accept")  # the offending packet went on as an RST
    assert len(bed.sender.sent) == 1
    assert bed.firewall.entries == {"198.51.100.7": 1000.0 + 86400}
    assert bed.kinds() == ["started", "verdict", "ban"]
    st = bed.service.host.status()
    assert st["bans_active"] == 1 and st["counts"]["reset"] == 1 and st["counts"]["bans"] == 1
    assert st["packets"] == 2 and st["workers"] == 1


def test_the_ban_is_saved_within_a_second_and_restored_by_the_next_start(tmp_path):
    b = Bed(tmp_path)
    b.service.start()
    c = Conn()
    b.feed(c.syn(), c.send(BLOCKED))
    journal = tmp_path / "state" / "bans.json.journal"
    deadline = time.monotonic() + 5  # the state writer's thread appends it at once (bounded wait)
    while not (journal.exists() and "198.51.100.7" in journal.read_text()):
        assert time.monotonic() < deadline, "the ban never reached the journal"
        time.sleep(0.01)
    b.service.stop()
    assert b.kinds()[-1] == "stopped" and b.queue.closed
    saved = json.loads((tmp_path / "state" / "bans.json").read_text())
    assert [r["network"] for r in saved["bans"]] == ["198.51.100.7"]

    again = Bed(tmp_path)
    again.firewall.entries = {}
    again.service.start()
    assert again.firewall.entries == {"198.51.100.7": 1000.0 + 86400}
    assert again.events.events[0]["bans_restored"] == 1
    [late] = again.feed(Conn(sport=5).syn())
    assert late.verdict == "drop"  # the engine knows the ban too
    again.service.stop()


def test_control_socket_lists_and_lifts_bans(bed):
    c = Conn()
    bed.feed(c.syn(), c.send(BLOCKED))
    path = str(bed.config.parent / "control.sock")
    import threading

    replies: list = []

    def ask(request: dict) -> None:
        replies.append(control_request(path, request, timeout=5))
    for request in ({"cmd": "bans"}, {"cmd": "unban", "network": "198.51.100.7"}, {"cmd": "nope"}):
        t = threading.Thread(target=ask, args=(request,))
        t.start()
        while t.is_alive():
            bed.service.loop.turn()
        t.join()
    bans, unban, unknown = replies
    assert [b["network"] for b in bans["bans"]] == ["198.51.100.7"]
    assert unban == {"ok": True, "network": "198.51.100.7", "was_banned": True}
    assert unknown["ok"] is False
    assert bed.firewall.entries == {}
    [again] = bed.feed(Conn(sport=6).syn())
    assert again.verdict == "accept"  # lifted from the engine too


def test_a_protected_address_is_refused_with_an_event(tmp_path):
    b = Bed(tmp_path, own=("198.51.100.7",))
    b.service.start()
    c = Conn()
    b.feed(c.syn(), c.send(BLOCKED))
    assert b.firewall.entries == {}
    refused = [e for e in b.events.events if e["event"] == "ban-refused"]
    assert refused and refused[0]["protected"] == "own address"
    assert b.service.host.status()["counts"]["ban-refused"] == 1
    b.service.stop()


def test_an_exception_in_the_runner_accepts_the_packet(bed):
    class Broken:
        packets = 0

        def process(self, data, now):
            raise RuntimeError("bug")
    runner = bed.service.side.runner
    engine, runner.engine = runner.engine, Broken()  # a bug past the engine's own catch-all
    [p] = bed.feed(Conn().syn())
    runner.engine = engine
    assert p.verdict == "accept"
    assert bed.events.events[-1]["what"] == "handle" and "RuntimeError: bug" in bed.events.events[-1]["error"]
    assert runner.counts["errors:handle"] == 1
    [q] = bed.feed(Conn().syn())  # the loop goes on
    assert q.verdict == "accept"


def test_log_bans_reach_the_engine_through_the_pipeline(tmp_path):
    auth = tmp_path / "auth.log"
    auth.write_text("")
    b = Bed(tmp_path, extra=f"""
[logs]
poll_interval = 0.5
[[logs.source]]
path = "{auth}"
filter = "sshd"
maxretry = 2
bantime = 600
""")
    b.service.start()
    b.service.loop.turn()
    with auth.open("a") as f:
        for i in range(2):
            f.write(f"2026-11-21T13:00:0{i}Z host sshd[1]: Failed password for root from 203.0.113.9 port 22 ssh2\n")
    b.now[0] += 1
    b.service.loop.turn()
    assert "203.0.113.9" in b.firewall.entries
    [p] = b.feed(Conn(src="203.0.113.9", dport=22).syn())
    assert p.verdict == "drop"
    b.service.stop()


class RecordingComponent:
    """A side component that bans from its own thread when started."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.calls: list[str] = []

    def start(self) -> None:
        import threading

        from inspector.respond.bans import Ban

        self.calls.append("start")
        host = self.service.host
        t = threading.Thread(target=lambda: host.bans.issue(Ban("203.0.113.77", 60, "domain", "x.test", "policy"),
                                                            host.clock()))
        t.start()
        t.join()

    def close(self) -> None:
        self.calls.append("close")

    def status(self) -> dict:
        return {"calls": list(self.calls)}


def test_a_side_component_is_started_shown_in_status_bans_and_is_closed(tmp_path, monkeypatch):
    from inspector.service import host as host_module

    b = Bed(tmp_path)
    component = RecordingComponent(b.service)
    monkeypatch.setattr(host_module, "configured", lambda *args: {"recorder": component})
    b.service.start()
    assert component.calls == ["start"]
    assert b.firewall.entries == {"203.0.113.77": 1000.0 + 60}
    [p] = b.feed(Conn(src="203.0.113.77").syn())
    assert p.verdict == "drop"  # the engine learnt the component's ban through the pipeline
    assert b.service.host.status()["recorder"] == {"calls": ["start"]}
    b.service.stop()
    assert component.calls == ["start", "close"]


def test_default_workers_one_per_two_cpus():
    from inspector.service import default_workers

    assert [default_workers(c) for c in (1, 2, 3, 4, 8)] == [1, 1, 1, 2, 4]
    assert default_workers() >= 1


def test_loop_after_a_fork_has_its_own_epoll():
    """A forked child that changes its readers leaves the parent's loop as it was."""
    import os
    import time

    from inspector.service.loop import Loop

    loop = Loop(time.time, max_wait=0.01)
    r, w = os.pipe()
    hits = []
    loop.add_reader(r, lambda: (hits.append(1), os.read(r, 16)))
    os.write(w, b"x")
    loop.turn()
    assert hits == [1]
    pid = os.fork()
    if pid == 0:  # the child: drop the parent's reader, watch a pipe of its own
        code = 2
        try:
            loop.remove_reader(r)
            r2, w2 = os.pipe()
            seen = []
            loop.add_reader(r2, lambda: seen.append(1))
            os.write(w2, b"y")
            loop.turn()
            code = 0 if seen else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    os.write(w, b"x")
    loop.turn()
    assert hits == [1, 1]
    loop.close()


def test_unban_of_an_address_inside_a_banned_network_names_that_network(bed):
    # "inspector unban 198.51.100.45" after "inspector ban 198.51.100.40-198.51.100.47": the address
    # stays dropped by 198.51.100.40/29, which the reply must say instead of "it was not banned"
    from inspector.respond.bans import Ban

    now = bed.service.host.clock()
    assert bed.service.host.bans.issue(Ban("198.51.100.40/29", 3600, "manual", path="manual"), now)
    reply = bed.service.host.control.handle({"cmd": "unban", "network": "198.51.100.45"})
    assert reply["ok"] and reply["was_banned"] is False
    assert reply["covered_by"] == ["198.51.100.40/29"]
