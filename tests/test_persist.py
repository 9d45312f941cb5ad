"""A full disk loses nothing: writes are counted, retried and caught up (issue 11, item 8)."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import pytest

from inspector import persist
from inspector.bans import BanRecord, BanStore
from inspector.persist import EventLog, StateWriter

REAL_WRITE = os.write


class FlakyDisk:
    """``os.write`` that fails with ENOSPC while ``full``, after writing part of the data (as a
    filling disk does), and counts its calls."""

    def __init__(self) -> None:
        self.full = False
        self.calls = 0

    def write(self, fd: int, data: memoryview | bytes) -> int:
        self.calls += 1
        if self.full:
            REAL_WRITE(fd, bytes(data[: max(1, len(data) // 3)]))  # a torn partial write first
            raise OSError(errno.ENOSPC, "No space left on device")
        return REAL_WRITE(fd, data)


def wait(pred, timeout: float = 5.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(persist, "RETRY_EVERY", 0.05)


def test_event_log_keeps_every_event_through_a_full_disk(tmp_path: Path) -> None:
    disk, notes = FlakyDisk(), []
    log = EventLog(tmp_path / "events.jsonl", notify=notes.append, writer=disk.write)
    log.emit({"event": "started"})
    assert log.flush(2)
    disk.full = True
    for i in range(300):
        log.emit({"event": "ban", "n": i})
    wait(lambda: log.health()["write_errors"] >= 2)
    health = log.health()
    assert health["failing"] and health["pending"] > 0 and health["dropped"] == 0
    assert "No space left on device" in health["last_error"]
    assert len(notes) == 1 and "cannot write the event log" in notes[0]  # reported once, not per retry
    disk.full = False
    assert log.flush(5)
    log.close()
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]  # no torn line: every line parses
    assert [e["n"] for e in events if e["event"] == "ban"] == list(range(300))
    assert log.health()["written"] == 301 and not log.health()["failing"]
    assert "written again" in notes[-1]


def test_event_log_bounds_its_backlog_and_counts_what_it_drops(tmp_path: Path) -> None:
    disk = FlakyDisk()
    disk.full = True
    log = EventLog(tmp_path / "events.jsonl", writer=disk.write, max_backlog=100)
    for i in range(250):
        log.emit({"event": "verdict", "n": i})
    assert log.health()["dropped"] == 150
    disk.full = False
    assert log.flush(5)
    log.close()
    kept = [json.loads(x)["n"] for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert kept == list(range(150, 250))  # the newest are kept, the oldest dropped and counted


def test_event_log_emit_never_waits_on_the_disk(tmp_path: Path) -> None:
    def slow(fd: int, data: memoryview | bytes) -> int:
        time.sleep(0.5)
        return os.write(fd, data)
    log = EventLog(tmp_path / "events.jsonl", writer=slow)
    started = time.perf_counter()
    for i in range(1000):
        log.emit({"event": "verdict", "n": i})
    assert time.perf_counter() - started < 0.4  # far less than one slow write
    assert log.flush(10)
    log.close()


def test_ban_store_retries_a_failed_journal_append_without_a_torn_line(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bans.json"
    store = BanStore(path)
    store.add(BanRecord("198.51.100.1", 1000.0, "domain", "blocked.test", 1.0))
    store.save(1.0)  # the first save writes the file
    disk = FlakyDisk()
    monkeypatch.setattr("inspector.bans.os.write", disk.write)
    disk.full = True
    for i in range(2, 12):
        store.add(BanRecord(f"198.51.100.{i}", 1000.0, "rate", None, 2.0))
    with pytest.raises(OSError):
        store.save(2.0)
    assert store.write_errors == 1 and store.pending == 10
    assert "No space left" in str(store.health()["last_error"])
    disk.full = False
    store.save(3.0)
    assert store.pending == 0
    again = BanStore(path)
    assert again.load(4.0) == 11
    assert again.records["198.51.100.11"].reason == "rate"


def test_ban_store_failed_rewrite_keeps_the_old_file_and_retries(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bans.json"
    store = BanStore(path)
    store.add(BanRecord("198.51.100.1", 1000.0, "domain", None, 1.0))
    store.save(1.0)

    def full(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr("inspector.bans.atomic_write", full)
    store.add(BanRecord("198.51.100.2", 1000.0, "domain", None, 2.0))
    with pytest.raises(OSError):
        store.save(2.0, compact=True)
    assert store.pending == 1
    monkeypatch.undo()
    store.save(3.0, compact=True)
    assert BanStore(path).load(4.0) == 2


def test_state_writer_retries_until_the_disk_has_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = BanStore(tmp_path / "bans.json")
    store.add(BanRecord("198.51.100.1", 1000.0, "domain", None, 1.0))
    disk, notes, saves = FlakyDisk(), [], []
    monkeypatch.setattr("inspector.bans.os.write", disk.write)

    def save() -> bool:
        saves.append(1)
        try:
            store.save(1.0)
        except OSError:
            return False
        return True
    store.save(1.0)
    disk.full = True
    writer = StateWriter(save, store, notify=notes.append, interval=0.01)
    try:
        store.add(BanRecord("198.51.100.2", 1000.0, "domain", None, 1.0))
        wait(lambda: store.write_errors >= 3)
        assert writer.health()["failing"] and len(notes) == 1 and "ban state" in notes[0]
        disk.full = False
        wait(lambda: store.pending == 0 and not writer.health()["failing"])
        assert "written again" in notes[-1]
    finally:
        writer.close()
    assert BanStore(tmp_path / "bans.json").load(2.0) == 2


def test_a_corrupt_state_file_keeps_what_the_journal_holds(tmp_path: Path) -> None:
    path = tmp_path / "bans.json"
    store = BanStore(path)
    store.add(BanRecord("198.51.100.1", 1000.0, "domain", "blocked.test", 1.0))
    store.save(1.0, compact=True)
    store.add(BanRecord("198.51.100.2", 1000.0, "log:sshd", "sshd", 2.0))
    store.save(2.0, compact=False)
    path.write_text("{not json")
    again = BanStore(path)
    from inspector.bans import StateError

    with pytest.raises(StateError, match="journal's bans are kept"):
        again.load(3.0)
    assert again.records["198.51.100.2"].reason == "log:sshd"
    again.save(3.0, compact=True)
    third = BanStore(path)
    assert third.load(4.0) == 1 and third.records["198.51.100.2"].reason == "log:sshd"
    assert list(tmp_path.glob("bans.json.corrupt-*"))


def test_metrics_show_failed_and_waiting_writes() -> None:
    from inspector.metrics import StatusCollector

    st = {"storage": {"state": {"write_errors": 3, "pending": 7}, "events": {"write_errors": 5, "pending": 11,
                                                                              "dropped": 2}}}
    families = {f.name: f for f in StatusCollector(lambda: st).collect()}
    errors = {s.labels["file"]: s.value for s in families["inspector_write_errors"].samples
              if s.name.endswith("_total")}
    waiting = {s.labels["file"]: s.value for s in families["inspector_writes_pending"].samples}
    assert errors == {"state": 3, "events": 5} and waiting == {"state": 7, "events": 11}
    assert [s.value for s in families["inspector_events_dropped"].samples if s.name.endswith("_total")] == [2]
