import os
import random
import shutil

import pytest

from inspector.logs.follow import FileFollower, LineSplitter
from inspector.logs.journal import parse_matches


class Daemon:
    """A process writing its log the way syslog daemons do: an O_APPEND fd it reopens on demand."""

    open_ones: list = []

    def __init__(self, path):
        self.path = path
        self.n = 0
        self.f = open(path, "ab", buffering=0)  # noqa: SIM115 - a daemon's log stays open across calls
        Daemon.open_ones.append(self)

    def write(self, count=1, prefix="line"):
        out = []
        for _ in range(count):
            self.n += 1
            text = f"{prefix} {self.n}"
            self.f.write(text.encode() + b"\n")
            out.append(text)
        return out

    def reopen(self):
        self.f.close()
        self.f = open(self.path, "ab", buffering=0)  # noqa: SIM115 - reopened like a daemon's log

    def close(self):
        self.f.close()


@pytest.fixture(autouse=True)
def _close_daemons():
    yield
    while Daemon.open_ones:
        Daemon.open_ones.pop().f.close()


def test_starts_at_the_end_by_default(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text("old 1\nold 2\n")
    f = FileFollower(log)
    assert f.poll() == []
    with log.open("a") as w:
        w.write("new 1\n")
    assert f.poll() == ["new 1"]
    assert f.poll() == []


def test_from_start_reads_what_is_there(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text("old 1\nold 2\n")
    assert FileFollower(log, from_start=True).poll() == ["old 1", "old 2"]


def test_starting_in_the_middle_of_a_line_skips_its_rest(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text("old 1\nhalf a li")
    f = FileFollower(log)
    with log.open("a") as w:
        w.write("ne\nnew 1\n")
    assert f.poll() == ["new 1"]


def test_partial_lines_wait_for_their_newline(tmp_path):
    log = tmp_path / "auth.log"
    log.write_text("")
    f = FileFollower(log)
    with log.open("a") as w:
        w.write("Failed pass")
        w.flush()
        assert f.poll() == []
        w.write("word for root\nnext")
        w.flush()
        assert f.poll() == ["Failed password for root"]
        w.write("\r\n")
        w.flush()
        assert f.poll() == ["next"]


def test_rotation_by_rename_loses_and_repeats_nothing(tmp_path):
    log = tmp_path / "auth.log"
    d = Daemon(log)
    f = FileFollower(log)
    seen = []
    wrote = d.write(3)
    seen += f.poll()
    wrote += d.write(2)
    os.rename(log, tmp_path / "auth.log.1")  # logrotate: rename, create, then signal the daemon
    log.write_bytes(b"")
    wrote += d.write(2)  # still into the renamed file until it reopens
    seen += f.poll()
    wrote += d.write(1)
    d.reopen()
    wrote += d.write(3)  # into the new file
    seen += f.poll()
    wrote += d.write(1)
    seen += f.poll()
    assert seen == wrote
    assert f.counts["rotations"] == 1
    d.close()


def test_renamed_away_before_the_new_file_exists(tmp_path):
    log = tmp_path / "auth.log"
    d = Daemon(log)
    f = FileFollower(log)
    wrote = d.write(2)
    os.rename(log, tmp_path / "auth.log.1")
    wrote += d.write(2)
    seen = f.poll()  # no file at the path: keep reading the old one
    assert seen == wrote
    d.reopen()  # creates the new file
    wrote += d.write(2)
    seen += f.poll()
    assert seen == wrote


def test_the_old_file_is_closed_after_it_stays_quiet(tmp_path):
    log = tmp_path / "auth.log"
    d = Daemon(log)
    f = FileFollower(log, linger=3)
    os.rename(log, tmp_path / "auth.log.1")
    d.reopen()
    f.poll()
    assert f.stats()["rotated_open"] == 1
    for _ in range(3):
        f.poll()
    assert f.stats()["rotated_open"] == 0


def test_a_last_line_without_newline_in_the_old_file_is_kept(tmp_path):
    log = tmp_path / "auth.log"
    log.write_text("")
    f = FileFollower(log, linger=2)
    with log.open("a") as w:
        w.write("complete\nunfinished")
    os.rename(log, tmp_path / "auth.log.1")
    log.write_text("fresh\n")
    out = f.poll() + f.poll() + f.poll()
    assert sorted(out) == ["complete", "fresh", "unfinished"]


@pytest.mark.parametrize("seed", range(25))
def test_random_rotations_every_line_exactly_once(tmp_path, seed):
    rnd = random.Random(seed)
    log = tmp_path / "mail.log"
    d = Daemon(log)
    f = FileFollower(log, linger=5, read_max=rnd.choice([64, 4096, 1 << 20]))
    wrote, seen = [], []
    generation = 0
    pending_reopen = None  # polls since the rename, while the daemon still writes to the old file
    settled = True  # the follower has opened the current file (two rotations between polls lose one)
    for _ in range(300):
        action = rnd.random()
        if action < 0.5:
            wrote += d.write(rnd.randint(1, 5))
        elif action < 0.8:
            seen += f.poll()
            if pending_reopen is not None:
                pending_reopen += 1
            else:
                settled = True
        elif action < 0.9 and pending_reopen is None and settled:
            settled = False
            generation += 1
            os.rename(log, tmp_path / f"mail.log.{generation}")
            if rnd.random() < 0.7:
                log.write_bytes(b"")  # logrotate's "create"
            pending_reopen = 0
        if pending_reopen is not None and (pending_reopen >= 3 or rnd.random() < 0.3):
            d.reopen()
            pending_reopen = None
    for _ in range(20):
        seen += f.poll()
    assert sorted(seen, key=lambda s: int(s.split()[1])) == wrote  # each line once
    assert seen == wrote  # and in order: the old file is drained before the new one
    d.close()


def test_copytruncate(tmp_path):
    log = tmp_path / "apache.log"
    d = Daemon(log)
    f = FileFollower(log)
    wrote = d.write(5)
    seen = f.poll()
    shutil.copy(log, tmp_path / "apache.log.1")
    os.truncate(log, 0)
    wrote += d.write(2)  # O_APPEND: the daemon writes at the new end, offset 0
    seen += f.poll()
    assert seen == wrote
    assert f.counts["truncations"] == 1
    wrote += d.write(1)
    assert f.poll() == wrote[-1:]


def test_long_lines_are_counted_and_skipped(tmp_path):
    log = tmp_path / "error.log"
    log.write_text("")
    f = FileFollower(log, max_line=100)
    with log.open("a") as w:
        w.write("x" * 500 + "\nshort\n")
        w.flush()
        assert f.poll() == ["short"]
        w.write("y" * 80)  # a long line arriving in pieces
        w.flush()
        assert f.poll() == []
        w.write("y" * 80)
        w.flush()
        assert f.poll() == []
        w.write("y" * 1000 + "\nafter\n")
        w.flush()
        assert f.poll() == ["after"]
    assert f.too_long == 2


def test_not_utf8_is_replaced(tmp_path):
    log = tmp_path / "auth.log"
    log.write_bytes(b"")
    f = FileFollower(log)
    with log.open("ab") as w:
        w.write(b"user=r\xe9sum\xe9 \xff\x00 end\n")
    assert f.poll() == ["user=r\ufffdsum\ufffd \ufffd\x00 end"]


def test_a_file_that_appears_later_is_read_from_its_start(tmp_path):
    log = tmp_path / "later.log"
    f = FileFollower(log)
    assert f.poll() == [] and f.error is None
    log.write_text("first\nsecond\n")
    assert f.poll() == ["first", "second"]


def test_a_deleted_and_recreated_file(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("")
    f = FileFollower(log, linger=1)
    log.unlink()
    assert f.poll() == []
    log.write_text("new\n")
    assert f.poll() == ["new"]


def test_unreadable_file_is_reported_and_retried(tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads any file")
    log = tmp_path / "x.log"
    log.write_text("a\n")
    log.chmod(0)
    f = FileFollower(log, from_start=True)
    assert f.poll() == [] and "Permission denied" in f.error
    log.chmod(0o644)
    assert f.poll() == ["a"]


def test_a_burst_is_read_over_several_polls(tmp_path):
    log = tmp_path / "big.log"
    log.write_text("")
    f = FileFollower(log, read_max=100_000)
    lines = [f"line {i} " + "z" * 50 for i in range(20000)]
    log.write_text("\n".join(lines) + "\n")
    first = f.poll()
    assert 0 < len(first) < len(lines)
    got = first
    while len(got) < len(lines):
        more = f.poll()
        assert more
        got += more
    assert got == lines


def test_line_splitter_marks_long_lines_in_place():
    s = LineSplitter(max_line=10, mark=True)
    out = s.feed(b"ok\n" + b"x" * 50 + b"\nfine\n" + b"y" * 20)
    assert out[0] == "ok" and out[2] == "fine" and out[1] != "ok" and len(out) == 4
    assert s.feed(b"yyy\nlast\n") == ["last"]
    assert s.too_long == 2


def test_journal_matches_follow_journalctl_syntax():
    # the journal itself is tested on real journal files in test_journal.py
    assert parse_matches(["A=1", "B=2", "+", "C=3"]) == [["A=1", "B=2"], ["C=3"]]
    assert parse_matches(["_SYSTEMD_UNIT=ssh.service", "_SYSTEMD_UNIT=sshd.service"]) == [
        ["_SYSTEMD_UNIT=ssh.service", "_SYSTEMD_UNIT=sshd.service"]]
