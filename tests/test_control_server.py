"""The control server: its own thread, a million items streamed, slow and idle clients (issue 11, 6 and 7)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from inspector import control
from inspector.control import ControlServer, control_request, control_stream
from inspector.perms import NeedsRoot


@pytest.fixture
def server(tmp_path: Path):  # noqa: ANN201
    srv = ControlServer()
    srv.register("echo", lambda request: {"ok": True, "got": request.get("x")})
    srv.register_stream("many", lambda request: ({"ok": True, "count": int(request["n"])},
                                                 ({"i": i} for i in range(int(request["n"])))))
    path = str(tmp_path / "c.sock")
    srv.listen(path)
    srv.start()
    yield srv, path
    srv.close()


def test_a_million_items_stream_through_the_socket(server) -> None:  # noqa: ANN001
    _, path = server
    answer = control_stream(path, {"cmd": "many", "n": 1_000_000}, timeout=30)
    assert answer is not None
    header, items = answer
    assert header == {"ok": True, "count": 1_000_000, "stream": "many"}
    count = 0
    for count, item in enumerate(items, 1):  # noqa: B007 - the last index is the count
        pass
    assert count == 1_000_000 and item == {"i": 999_999}


def test_collected_stream_and_plain_replies(server) -> None:  # noqa: ANN001
    _, path = server
    assert control_request(path, {"cmd": "many", "n": 3})["many"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert control_request(path, {"cmd": "echo", "x": "é\x1b"}) == {"ok": True, "got": "é\x1b"}
    assert control_request(path, {"cmd": "nope"})["ok"] is False


def test_a_slow_client_does_not_hold_the_others(server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    srv, path = server
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(path)
    slow.send(b'{"cmd"')  # and nothing more for now
    started = time.monotonic()
    for _ in range(20):
        assert control_request(path, {"cmd": "echo", "x": 1}, timeout=2)["got"] == 1
    assert time.monotonic() - started < 2
    slow.send(b': "echo", "x": 2}\n')
    assert json.loads(slow.makefile("rb").readline()) == {"ok": True, "got": 2}
    slow.close()


def test_request_size_deadline_and_client_bounds(server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    srv, path = server
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(b"x" * (control.LINE_LIMIT + 10))
        assert b"longer than" in s.makefile("rb").readline()
    monkeypatch.setattr(control, "REQUEST_DEADLINE", 0.3)
    idle = []
    for _ in range(control.MAX_CLIENTS):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        idle.append(s)
    time.sleep(0.1)
    extra = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    extra.connect(path)
    assert b"busy" in extra.makefile("rb").readline()
    extra.close()
    time.sleep(1.0)  # the idle ones pass their deadline and are dropped
    assert all(s.recv(10) == b"" for s in idle)
    for s in idle:
        s.close()
    assert srv.counts["busy"] == 1 and srv.counts["timeouts"] == control.MAX_CLIENTS
    assert control_request(path, {"cmd": "echo", "x": 3})["got"] == 3


def test_no_service_and_no_permission(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert control_request(str(tmp_path / "none.sock"), {"cmd": "status"}) is None

    def denied(self: socket.socket, address: object) -> None:
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(socket.socket, "connect", denied)
    with pytest.raises(NeedsRoot, match="needs root: cannot ask the running service"):
        control_request(str(tmp_path / "x.sock"), {"cmd": "status"})
