"""A worker's messages to the supervisor: immediate outside a burst, one batch per burst."""

from multiprocessing import Pipe

from inspector.service.worker import Outbox as _Outbox


def drain(conn):
    out = []
    while conn.poll():
        out.append(conn.recv())
    return out


def test_outside_a_burst_each_message_goes_at_once():
    here, there = Pipe()
    box = _Outbox(here)
    box.put("event", {"event": "started"})
    assert drain(there) == [("event", {"event": "started"})]


def test_a_burst_is_one_batch_and_a_single_message_stays_plain():
    here, there = Pipe()
    box = _Outbox(here)
    box.hold()
    box.put("event", {"n": 1})
    box.put("ban", {"network": "198.51.100.7/32"})
    assert drain(there) == []  # nothing leaves before the burst ends
    box.flush()
    assert drain(there) == [("batch", [("event", {"n": 1}), ("ban", {"network": "198.51.100.7/32"})])]
    box.hold()
    box.put("event", {"n": 2})
    box.flush()
    box.flush()  # nothing left: nothing sent
    assert drain(there) == [("event", {"n": 2})]
    box.put("event", {"n": 3})  # after flush() the box no longer holds
    assert drain(there) == [("event", {"n": 3})]


def test_a_long_burst_is_sent_in_bounded_pieces():
    here, there = Pipe()
    box = _Outbox(here)
    box.hold()
    n = _Outbox.MAX_ITEMS * 2 + 5
    for i in range(n):
        box.put("event", {"n": i})
    sent = drain(there)
    assert [len(m[1]) for m in sent] == [_Outbox.MAX_ITEMS, _Outbox.MAX_ITEMS]
    box.flush()
    sent += drain(there)
    got = [body["n"] for m in sent for _kind, body in m[1]]
    assert got == list(range(n))  # nothing lost, order kept


def test_a_slow_burst_is_sent_after_the_delay(monkeypatch):
    here, there = Pipe()
    box = _Outbox(here)
    clock = [100.0]
    monkeypatch.setattr("inspector.service.worker.monotonic", lambda: clock[0])
    box.hold()
    box.put("event", {"n": 1})
    clock[0] += _Outbox.MAX_DELAY * 1.5
    box.put("event", {"n": 2})
    assert drain(there) == [("batch", [("event", {"n": 1}), ("event", {"n": 2})])]
