import json

import pytest

from inspector.bans import BanRecord, BanStore, StateError


def test_save_and_restore_skips_expired(tmp_path):
    path = tmp_path / "state" / "bans.json"
    store = BanStore(path)
    store.add(BanRecord("198.51.100.7", 1000.0, "domain", "blocked.test", 100.0))
    store.add(BanRecord("2001:db8:1::/64", 200.0, "rate", None, 100.0))
    store.save(150.0)
    restored = BanStore(path)
    assert restored.load(now=300.0) == 1
    assert [r.network for r in restored.active(300.0)] == ["198.51.100.7"]
    assert restored.records["198.51.100.7"].rule == "blocked.test"


def test_later_expiry_wins_and_remove(tmp_path):
    store = BanStore(tmp_path / "b.json")
    store.add(BanRecord("192.0.2.1", 500.0, "rate"))
    store.add(BanRecord("192.0.2.1", 400.0, "domain"))
    assert store.records["192.0.2.1"].expires == 500.0
    assert store.remove("192.0.2.1") and not store.remove("192.0.2.1")


def test_corrupt_state_is_moved_aside_not_lost(tmp_path):
    path = tmp_path / "bans.json"
    path.write_text("{not json")
    store = BanStore(path)
    with pytest.raises(StateError, match="moved to .*bans.json.corrupt-42"):
        store.load(now=42.0)
    assert (tmp_path / "bans.json.corrupt-42").read_text() == "{not json"
    assert not path.exists()
    store.add(BanRecord("192.0.2.1", 500.0, "rate"))
    store.save(43.0)
    assert json.loads(path.read_text())["bans"][0]["network"] == "192.0.2.1"


def test_unknown_version_is_refused(tmp_path):
    path = tmp_path / "bans.json"
    path.write_text(json.dumps({"version": 99, "bans": []}))
    with pytest.raises(StateError, match="unknown state format"):
        BanStore(path).load(now=1.0)


def test_failed_write_keeps_previous_state(tmp_path, monkeypatch):
    path = tmp_path / "bans.json"
    store = BanStore(path)
    store.add(BanRecord("192.0.2.1", 500.0, "rate"))
    store.save(1.0)
    before = path.read_text()
    store.add(BanRecord("192.0.2.2", 500.0, "rate"))

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr("inspector.fsutil.os.fsync", boom)  # fails after the temp file is written
    with pytest.raises(OSError):
        store.save(2.0, compact=True)  # the atomic rewrite fails part-way
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["bans.json"]  # no temp file left behind


def test_journal_appends_then_compacts_and_survives_a_torn_line(tmp_path):
    path = tmp_path / "bans.json"
    store = BanStore(path)
    store.add(BanRecord("192.0.2.1", 500.0, "rate"))
    store.save(1.0, compact=True)
    for i in range(2, 20):
        store.add(BanRecord(f"192.0.2.{i}", 500.0, "rate"))
        store.save(1.0)  # small journal appends, the file is not rewritten
    store.remove("192.0.2.1")
    store.save(1.0)
    assert json.loads(path.read_text())["bans"][0]["network"] == "192.0.2.1"  # the file lags ...
    journal = path.with_name("bans.json.journal")
    assert len(journal.read_text().splitlines()) == 19
    with journal.open("a") as f:
        f.write('{"network": "192.0.2.99", "exp')  # a crash mid-append
    again = BanStore(path)
    assert again.load(now=2.0) == 18  # ... but file + journal give the truth
    assert "192.0.2.1" not in again.records and "192.0.2.19" in again.records
    again.save(2.0, compact=True)
    assert not journal.exists() and len(json.loads(path.read_text())["bans"]) == 18


def test_journal_compacts_when_as_long_as_the_store(tmp_path):
    path = tmp_path / "bans.json"
    store = BanStore(path)
    for i in range(200):
        store.add(BanRecord(f"198.18.0.{i}", 500.0, "rate"))
        store.save(1.0)
    # work per ban stays bounded: the file was rewritten a few times, not 200
    assert len(path.with_name("bans.json.journal").read_text().splitlines()) < 200
    assert BanStore(path).load(now=2.0) == 200
