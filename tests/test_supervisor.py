"""Workers and the supervisor with fakes (queue, firewall, resets; scripted worker processes): no root."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import time
from dataclasses import asdict
from multiprocessing import Pipe

from inspector.events import MemorySink
from inspector.respond.bans import Ban
from inspector.service import Inputs
from inspector.service.supervisor import Supervisor
from inspector.service.worker import Worker
from inspector.testing import FakeFirewall, FakeQueue, RecordingSender
from tests.conftest import Conn
from tests.test_service import BLOCKED, write_config


def drain(conn) -> list:
    out = []
    while conn.poll():
        message = conn.recv()
        out.extend(message[1] if message[0] == "batch" else [message])
    return out


def test_a_worker_bans_itself_reports_to_the_supervisor_and_takes_its_messages(tmp_path):
    cfg = write_config(tmp_path)
    now = [1000.0]
    here, there = Pipe()
    queue, firewall = FakeQueue(3), FakeFirewall(lambda: now[0])
    worker = Worker(Inputs(str(cfg), str(tmp_path / "rules")), 1, 3, there, [("203.0.113.50", 2000.0, "domain")], [],
                    clock=lambda: now[0], packets=queue, firewall=firewall, resets=RecordingSender(), signals=False)
    worker.start()
    [(kind, started)] = drain(here)
    assert kind == "event" and started["event"] == "started" and started["worker"] == 1
    assert started["queue"] == 3 and started["bans_restored"] == 1

    c = Conn()
    syn, data = queue.put(c.syn()), queue.put(c.send(BLOCKED))
    worker.loop.turn()
    assert (syn.verdict, data.verdict) == ("accept", "accept")
    assert firewall.entries == {"198.51.100.7": 1000.0 + 86400}  # the worker bans in the kernel itself
    messages = drain(here)
    assert [k for k, _ in messages] == ["event", "event", "ban"]  # verdict, ban: one batch for the burst
    assert messages[2][1] == {"ban": asdict(Ban("198.51.100.7", 86400, "domain", "blocked.test", "packet", None, 25)),
                              "now": 1000.0}

    [banned] = [queue.put(Conn(src="203.0.113.50", sport=2).syn())]
    here.send(("add_ban", ("198.51.100.99", 2000.0, "log:sshd")))
    worker.loop.turn()
    other = queue.put(Conn(src="198.51.100.99", sport=3).syn())
    worker.loop.turn()
    assert banned.verdict == "drop" and other.verdict == "drop"
    here.send(("remove_ban", "198.51.100.99"))
    worker.loop.turn()
    again = queue.put(Conn(src="198.51.100.99", sport=4).syn())
    worker.loop.turn()
    assert again.verdict == "accept"

    now[0] += 1.5
    worker.loop.turn()
    stats = [b for k, b in drain(here) if k == "stats"]
    assert stats and stats[-1]["worker"] == 1 and stats[-1]["counts"]["bans"] == 1
    assert stats[-1]["counts"]["reset"] == 1 and stats[-1]["packets"] == 5

    here.send(("stop", None))
    worker.loop.turn()
    assert worker.run() == 0 and queue.closed
    assert drain(here)[-1][1]["event"] == "stopped"


def scripted_worker(inputs, index, queue, conn, bans, own, close):
    """A worker process that binds nothing: it announces itself, reports one ban (worker 0) and
    echoes every message of the supervisor back as an event, until told to stop."""
    for fd in close:
        with contextlib.suppress(OSError):
            os.close(fd)
    conn.send(("event", {"event": "started", "worker": index, "queue": queue, "fail_open": True, "domains": 1,
                         "rules": ["r"], "bans_restored": len(bans)}))
    conn.send(("stats", {"worker": index, "queue": queue, "packets": 10 + index, "counts": {"accept": 10 + index},
                         "live": {}, "rules": {"domains": 1}}))
    if index == 0:
        ban = Ban("203.0.113.7", 600, "domain", "blocked.test", "packet", None, 25)
        conn.send(("batch", [("event", {"event": "ban", "network": ban.network}),
                             ("ban", {"ban": asdict(ban), "now": time.time()})]))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if not conn.poll(0.05):
            continue
        kind, body = conn.recv()
        if kind == "stop":
            conn.send(("event", {"event": "stopped", "worker": index}))
            os._exit(0)
        if kind == "die":
            os._exit(3)
        conn.send(("event", {"event": "echo", "worker": index, "kind": kind, "body": body}))
    os._exit(1)


def turn_until(sup: Supervisor, done, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline, "timed out"
        sup.loop.turn()


def test_supervisor_records_worker_bans_passes_them_on_and_restarts_a_dead_worker(tmp_path):
    cfg = write_config(tmp_path)
    events = MemorySink()
    firewall = FakeFirewall(time.time)
    sup = Supervisor(str(cfg), str(tmp_path / "rules"), {}, 2, firewall=firewall, events=events, own=[],
                     context=multiprocessing.get_context("fork"), signals=False, target=scripted_worker)
    sup.start()
    sup.loop.max_wait = 0.05

    def echoes(kind: str) -> list[dict]:
        return [e for e in events.events if e["event"] == "echo" and e["kind"] == kind]
    try:
        turn_until(sup, lambda: sup.announced and echoes("add_ban"))
        started = [e for e in events.events if e["event"] == "started"]
        assert len(started) == 1 and started[0]["workers"] == 2 and started[0]["fail_open"] is True
        assert [r.network for r in sup.host.bans.active(time.time())] == ["203.0.113.7"]
        # the other worker's engine gets the ban; the one that issued it has it already
        assert [e["worker"] for e in echoes("add_ban")] == [1]
        assert echoes("add_ban")[0]["body"][0] == "203.0.113.7"

        st = sup.host.status()
        assert st["workers"] == 2 and st["packets"] == 21 and st["counts"]["accept"] == 21
        assert st["bans_active"] == 1 and set(st["per_worker"]) == {0, 1}

        reply = sup.host.control.handle({"cmd": "unban", "network": "203.0.113.7"})
        assert reply == {"ok": True, "network": "203.0.113.7", "was_banned": True}
        turn_until(sup, lambda: len(echoes("remove_ban")) == 2)
        assert not sup.host.bans.active(time.time())

        sup.workers[1][1].send(("die", None))
        turn_until(sup, lambda: any(e.get("what") == "worker-exit" for e in events.events)
                   and 1 in sup.workers and sup.workers[1][0].is_alive())
        exits = [e for e in events.events if e.get("what") == "worker-exit"]
        assert exits[0]["worker"] == 1 and exits[0]["code"] == 3
        assert len([e for e in events.events if e["event"] == "started"]) == 1  # announced once
    finally:
        assert sup.stop() == 0
    assert events.events[-1]["event"] == "stopped" and set(events.events[-1]["workers"]) == {0, 1}
    assert all(not proc.is_alive() for proc, _ in sup.workers.values())
