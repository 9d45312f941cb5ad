"""The control socket under hostile or large use: big replies, slow clients, terminal escapes."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from pathlib import Path

import pytest

from inspector.control import ControlServer, control_request


def _serve(server: ControlServer, rounds: int) -> threading.Thread:
    def run() -> None:
        for _ in range(rounds):
            ready, _, _ = select.select([server.fileno()], [], [], 5)
            if ready:
                server.serve_one()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_a_reply_over_64_kib_arrives_whole(tmp_path: Path) -> None:
    # `inspector bans` with a few hundred bans is a reply of several 100 KiB
    server = ControlServer()
    bans = [{"network": f"198.51.100.{i % 256}", "reason": "manual", "rule": "r" * 60, "seconds_left": 100,
             "expires_at": "2026-11-30T10:00:00Z", "origin": "mx1"} for i in range(5000)]
    server.register("bans", lambda r: {"ok": True, "bans": bans})
    server.listen(str(tmp_path / "c.sock"))
    try:
        t = _serve(server, 1)
        reply = control_request(str(tmp_path / "c.sock"), {"cmd": "bans"})
        t.join(5)
        assert reply is not None and len(reply["bans"]) == 5000
    finally:
        server.close()


def test_a_reply_that_is_not_json_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(100)
        conn.sendall(b'{"ok": tr')  # cut off
        conn.close()
    threading.Thread(target=answer, daemon=True).start()
    with pytest.raises(ValueError):
        control_request(str(path), {"cmd": "status"})
    listener.close()


@pytest.mark.parametrize("trickle", [False, True])
def test_a_slow_client_holds_the_loop_at_most_a_second(tmp_path: Path, trickle: bool) -> None:
    # serve_one runs in the service's loop (the packet loop in single-process mode)
    server = ControlServer()
    server.listen(str(tmp_path / "c.sock"))
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(tmp_path / "c.sock"))
    stop = threading.Event()

    def drip() -> None:
        for _ in range(40):  # bounded: at most 40 bytes over 12 s
            if stop.wait(0.3):
                return
            try:
                client.send(b" ")
            except OSError:
                return
    if trickle:
        threading.Thread(target=drip, daemon=True).start()
    try:
        begun = time.monotonic()
        select.select([server.fileno()], [], [], 5)
        server.serve_one()
        took = time.monotonic() - begun
        assert took < 2.5, took
    finally:
        stop.set()
        client.close()
        server.close()


def test_bans_print_no_terminal_escapes() -> None:
    from inspector.admin import printable

    text = "\x1b[31mred\x1b[0m\x1b]0;title\x07 tab\there\u202enew\nline\x9b"
    out = printable(text)
    assert all(c.isprintable() for c in out), out
    assert "red" in out and "\\x1b" in out and "\\n" in out
    assert printable("spam run é") == "spam run é"
    assert json.dumps(printable(None)) == '""'


def test_status_prints_no_terminal_escapes() -> None:
    from inspector.status import render

    st = {"ok": True, "pid": 1, "mode": "enforce", "paths": ["policy"], "uptime": 5, "bans_active": 1,
          "bans_by_reason": {"x\x1b[2J": 1},
          "recent_bans": [{"network": "198.51.100.7", "reason": "x\x1b[2J", "seconds_left": 60,
                           "rule": "\x1b]0;t\x07"}],
          "fleet": {"enabled": True, "connected": False, "last_error": "invalid entry from \x1b[31mmx9"}}
    out = render("/run/x.sock", st)
    assert "\x1b" not in out and "\x07" not in out and "\\x1b" in out
    assert "\n" in out


def test_policy_only_status_shows_the_fleet_and_the_log_sources() -> None:
    # `inspector policy` runs the fleet and the log sources too (the Host owns them)
    from inspector.status import render

    st = {"ok": True, "pid": 1, "mode": "enforce", "paths": ["policy"], "uptime": 5, "bans_active": 0,
          "policy": {"listen": "127.0.0.1:10040", "connections": 0, "counts": {}},
          "fleet": {"enabled": True, "host": "mx1", "connected": False, "outbox": 2,
                    "last_error": "publish: ConnectionError"},
          "logs": {"sources": [{"name": "sshd:journal", "state": "error", "reason": "no journal files"}]}}
    out = render("/run/x.sock", st)
    assert "fleet: NOT CONNECTED as mx1" in out and "outbox 2" in out
