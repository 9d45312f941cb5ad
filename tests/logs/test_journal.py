"""The journal backend against real journal files written by systemd-journal-remote.

Entries are appended while a follower reads them; followers are closed (or
dropped, as a crash would) in the middle: every entry is read once, in
order, none lost, none twice.
"""

from __future__ import annotations

import time

import pytest

from inspector.config import load_config
from inspector.logs import LogMonitor
from inspector.logs.journal import JournalFollower
from inspector.logs.settings import LogSettings, LogSource
from inspector.logs.sources import probe

from .journal_writer import JournalWriter, why_no_journal

pytestmark = pytest.mark.skipif(why_no_journal() is not None, reason=str(why_no_journal()))

SSHD = "Failed password for invalid user u{i} from 203.0.113.{h} port {port} ssh2"
SSH = ("_SYSTEMD_UNIT=ssh.service",)


def poll_until(follower: JournalFollower, want: int, timeout: float = 5.0) -> list[str]:
    """Poll until ``want`` lines came (journal-remote writes asynchronously), then once more."""
    out: list[str] = []
    end = time.monotonic() + timeout
    while len(out) < want and time.monotonic() < end:
        out += follower.poll()
        if len(out) < want:
            time.sleep(0.02)
    return out + follower.poll()


def test_followed_while_appended_and_restarted_without_loss_or_duplicate(tmp_path):
    journal, cursor = tmp_path / "journal", tmp_path / "state" / "ssh.cursor"
    writer = JournalWriter(journal)
    try:
        written: list[str] = []

        def write(n: int) -> None:
            for _ in range(n):
                i = len(written)
                msg = SSHD.format(i=i, h=i % 250 + 1, port=40000 + i)
                writer.write(msg)
                writer.write(f"noise {i}", unit="cron.service", ident="CRON")  # another unit: never read
                written.append(msg)

        write(5)
        time.sleep(0.3)
        read: list[str] = []
        f = JournalFollower(SSH, from_start=True, directory=str(journal), cursor_file=cursor)
        read += poll_until(f, 5)
        write(7)
        read += poll_until(f, 7)
        f.close()  # a clean restart ...
        write(4)  # ... with entries written while nobody reads
        f = JournalFollower(SSH, directory=str(journal), cursor_file=cursor)
        read += poll_until(f, 4)
        write(3)
        read += poll_until(f, 3)
        del f  # a crash: no close(), the cursor of the last poll is what survives
        write(6)
        f = JournalFollower(SSH, directory=str(journal), cursor_file=cursor)
        read += poll_until(f, 6)
        assert f.state == "reading" and f.error is None
        f.close()
    finally:
        writer.close()
    assert [line.split(": ", 1)[1] for line in read] == written
    assert all(line.split(" ", 3)[1:3] == ["testhost", "sshd[4242]:"] for line in read)


def test_without_a_cursor_it_starts_at_the_end_and_reads_in_bounded_polls(tmp_path):
    journal = tmp_path / "journal"
    writer = JournalWriter(journal)
    try:
        for i in range(30):
            writer.write(SSHD.format(i=i, h=1, port=i))
        time.sleep(0.3)
        tail = JournalFollower(SSH, directory=str(journal))
        head = JournalFollower(SSH, from_start=True, directory=str(journal), read_max=8)
        assert tail.poll() == []
        assert [len(head.poll()) for _ in range(5)] == [8, 8, 8, 6, 0]
        writer.write(SSHD.format(i=99, h=9, port=99))
        assert [line.rsplit(" from ", 1)[1] for line in poll_until(tail, 1)] == ["203.0.113.9 port 99 ssh2"]
    finally:
        writer.close()


def test_matches_or_and_a_broken_cursor_file(tmp_path):
    journal, cursor = tmp_path / "journal", tmp_path / "c.cursor"
    writer = JournalWriter(journal)
    try:
        writer.write("a", unit="ssh.service")
        writer.write("b", unit="cron.service")
        writer.write("c", unit="dovecot.service", ident="dovecot")
        writer.write("d\nFailed password for root from 198.51.100.1 port 1 ssh2\r\n", unit="ssh.service")
        time.sleep(0.3)
        cursor.write_text("not a cursor\n")
        f = JournalFollower(("_SYSTEMD_UNIT=ssh.service", "+", "SYSLOG_IDENTIFIER=dovecot"), from_start=True,
                            directory=str(journal), cursor_file=cursor)
        lines = poll_until(f, 3)
        assert [line.split(": ", 1)[1] for line in lines] == ["a", "c", "d#012Failed password for root from "
                                                              "198.51.100.1 port 1 ssh2"]  # one entry, one line
        assert f.counts["cursor-errors"] == 1
        f.close()
        assert cursor.read_text().startswith("s=")  # replaced by a real one
    finally:
        writer.close()


def test_monitor_auto_reads_the_journal_when_the_file_is_missing_and_bans(tmp_path):
    journal = tmp_path / "journal"
    writer = JournalWriter(journal)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[service]
state_file = "{tmp_path / 'state' / 'bans.json'}"
[logs]
journal_directory = "{journal}"
[[logs.source]]
filter = "sshd"
path = "{tmp_path / 'no-auth.log'}"
maxretry = 3
[[logs.source]]
filter = "dovecot"
maxretry = 2
""")
    try:
        writer.write("Server listening on 0.0.0.0 port 22.")
        time.sleep(0.3)
        config = load_config(cfg)
        monitor = LogMonitor(config, local=[], utc=True)
        assert {s["backend"] for s in monitor.states()} == {"journal"}
        for i in range(3):
            writer.write(SSHD.format(i=i, h=7, port=i))
        writer.write("imap-login: Aborted login (auth failed, 1 attempts in 2 secs): user=<a>, method=PLAIN, "
                     "rip=2001:db8:7::1, lip=2001:db8::10, TLS, session=<x>", unit="dovecot.service", ident="dovecot")
        writer.write("imap-login: Aborted login (auth failed, 1 attempts in 2 secs): user=<b>, method=PLAIN, "
                     "rip=2001:db8:7::2, lip=2001:db8::10, TLS, session=<y>", unit="dovecot.service", ident="dovecot")
        bans = []
        end = time.monotonic() + 5
        while len(bans) < 2 and time.monotonic() < end:
            bans += monitor.poll(time.time())
            time.sleep(0.02)
        assert sorted((b.network, b.reason) for b in bans) == [("2001:db8:7::/64", "log:dovecot"),

                                                                ("203.0.113.7", "log:sshd")]
        assert {s["state"] for s in monitor.states()} == {"reading"}
        monitor.close()
        assert len(list((tmp_path / "state").glob("journal-*.cursor"))) == 2
    finally:
        writer.close()


def test_probe_names_an_unknown_unit_and_a_missing_directory(tmp_path):
    journal = tmp_path / "journal"
    writer = JournalWriter(journal)
    try:
        writer.write("x", unit="ssh.service")
    finally:
        writer.close()
    settings = LogSettings(journal_directory=str(journal))
    assert probe(LogSource("sshd", backend="journal"), settings) is None  # ssh.service is in the journal
    problem = probe(LogSource("sshd", journal=("_SYSTEMD_UNIT=nosuch-xyz.service",), backend="journal"), settings)
    assert problem is not None and "unknown unit nosuch-xyz.service" in problem.reason
    gone = probe(LogSource("sshd", backend="journal"), LogSettings(journal_directory=str(tmp_path / "none")))
    assert gone is not None and "no directory" in gone.reason
    missing = probe(LogSource("roundcube", path=str(tmp_path / "errors.log")), settings)
    assert missing is not None and "missing file" in missing.reason


def test_probe_knows_an_installed_unit_the_journal_has_not_seen(tmp_path):
    import os

    if not os.path.exists("/lib/systemd/system/ssh.service"):
        pytest.skip("needs Debian's openssh-server (its unit file ssh.service)")
    journal = tmp_path / "journal"
    writer = JournalWriter(journal)
    try:
        writer.write("x", unit="cron.service")
    finally:
        writer.close()
    settings = LogSettings(journal_directory=str(journal))
    assert probe(LogSource("sshd", backend="journal"), settings) is None  # installed, silent so far
    assert probe(LogSource("dovecot", journal=("_SYSTEMD_UNIT=nosuch-xyz.service",), backend="journal"),
                 settings) is not None


def test_a_journal_without_files_is_waited_for(tmp_path):
    empty = tmp_path / "journal"
    empty.mkdir()
    f = JournalFollower(SSH, directory=str(empty))
    assert f.poll() == [] and f.state == "waiting"
    writer = JournalWriter(empty)
    try:
        writer.write(SSHD.format(i=1, h=1, port=1))
        time.sleep(0.3)
        assert f.state == "reading"
        assert len(poll_until(f, 1)) == 1
        # journald's rotation: the file is closed, newer entries go to a new file beside it
        writer.close()
        second = JournalWriter(empty, "system@0001.journal")
        try:
            second.write(SSHD.format(i=2, h=2, port=2))
            second.write(SSHD.format(i=3, h=3, port=3))
            got = poll_until(f, 2)
        finally:
            second.close()
        assert [line.split(" from ")[1].split()[0] for line in got] == ["203.0.113.2", "203.0.113.3"]
    finally:
        writer.close()
        f.close()
