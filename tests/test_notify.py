"""``[notify]``: config errors, the daily report, rate-limited ban notices, sendmail, Apprise to real sinks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from inspector.config import ConfigError, load_config
from inspector.notify import Notifier, NotifyError, NotifySettings, SendmailChannel, next_report_time

from .netns import namespace, run_in

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class FakeBan:
    network: str
    seconds: int = 600
    reason: str = "domain"
    rule: str | None = "blocked.test"
    dport: int | None = 25


class FakeChannel:
    def __init__(self, name: str = "fake", fail: bool = False) -> None:
        self.name = name
        self.fail = fail
        self.sent: list[tuple[str, str]] = []

    def send(self, title: str, body: str) -> None:
        if self.fail:
            raise NotifyError("connection refused")
        self.sent.append((title, body))


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _config(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "inspector.toml"
    p.write_text(body)
    return p


@pytest.mark.parametrize(("body", "line", "words"), [
    ('[notify]\nsendmail = "/usr/sbin/sendmail"\nreport_at = "25:00"\n', 3, "HH:MM"),
    ('[notify]\nsendmail = "/usr/sbin/sendmail"\nreport = "weekly"\n', 3, "'daily' or 'off'"),
    ('[notify]\nsendmail = "sendmail"\n', 2, "absolute path"),
    ('[notify]\nbans = true\n', 1, "no channel"),
    ('[notify]\nsendmail = "/usr/sbin/sendmail"\nban_limit = 0\n', 3, "between"),
    ('[notify]\nsendmail = "/usr/sbin/sendmail"\nmail_to = ["-oQ/tmp"]\n', 3, "addresses"),
    ('mode = "enforce"\n[notify]\nsendmail = "/usr/sbin/sendmail"\ncolour = "red"\n', 4, "unknown setting"),
    ('[notify]\nsendmail = "/usr/sbin/sendmail"\nbans = "yes"\n', 3, "true or false"),
    ('[notify]\nurls = ["nonsense"]\n', 2, "Apprise URLs"),
    ('[notify]\nurls = ["nosuchscheme://x"]\n', 2, "Apprise cannot use"),
])
def test_config_errors_name_file_and_line(tmp_path: Path, body: str, line: int, words: str) -> None:
    if "Apprise cannot" in words:
        pytest.importorskip("apprise")
    path = _config(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}:{line}: notify"), e.value
    assert words in str(e.value)


def test_config_parses_and_check_prints_it(tmp_path: Path) -> None:
    path = _config(tmp_path, '[notify]\nsendmail = "/usr/sbin/sendmail"\nmail_to = ["admin@example.org"]\n'
                             'report_at = "06:30"\nbans = true\nban_limit = 3\nban_window = 600\n')
    n = load_config(path).notify
    assert n == NotifySettings(sendmail="/usr/sbin/sendmail", mail_to=("admin@example.org",), report_at="06:30",
                               bans=True, ban_limit=3, ban_window=600)
    assert load_config(None).notify is None
    out = subprocess.run([sys.executable, "-m", "inspector", "check", "--config", str(path)], capture_output=True,
                         text=True, check=True).stdout
    assert "notify: sendmail to admin@example.org; report daily at 06:30; ban notices at most 3 per 600s" in out


def test_next_report_time_is_the_next_local_hhmm() -> None:
    t = time.mktime((2026, 6, 10, 6, 59, 0, 0, 0, -1))
    assert next_report_time(t, "07:00") == t + 60
    assert next_report_time(t + 60, "07:00") == pytest.approx(t + 60 + 86400, abs=3600)  # DST may shift an hour


def test_daily_report_is_sent_once_a_day_for_the_window_since_the_last() -> None:
    start = time.mktime((2026, 6, 10, 6, 0, 0, 0, 0, -1))
    clock, ch = Clock(start), FakeChannel()
    windows: list[tuple[float, float]] = []

    def report(since: float, until: float) -> str:
        windows.append((since, until))
        return "3 bans\n"

    n = Notifier(NotifySettings(sendmail="/x", report_at="07:00"), [ch], report, clock, "mx1")
    n.tick(start + 1800)
    assert ch.sent == []
    n.tick(start + 3600)
    assert len(ch.sent) == 1 and ch.sent[0][1] == "3 bans\n" and "mx1" in ch.sent[0][0]
    n.tick(start + 3700)
    assert len(ch.sent) == 1
    n.tick(start + 3600 + 86400)
    assert len(ch.sent) == 2
    assert windows == [(start, start + 3600), (start + 3600, start + 3600 + 86400)]
    assert NotifySettings(report="off").report == "off"
    off = Notifier(NotifySettings(sendmail="/x", report="off"), [ch], report, clock, "mx1")
    off.tick(start + 10 * 86400)
    assert len(ch.sent) == 2 and off.status()["next_report"] is None


def test_ban_notices_are_rate_limited_and_the_rest_summarised() -> None:
    clock, ch = Clock(1_000_000.0), FakeChannel()
    n = Notifier(NotifySettings(sendmail="/x", report="off", bans=True, ban_limit=2, ban_window=600), [ch],
                 lambda a, b: "", clock, "mx1")
    for i in range(5):
        n.on_ban("ban", FakeBan(f"198.51.100.{i}"))
    n.on_ban("unban", "198.51.100.1")  # lifts are not notified
    assert ch.sent == []  # the listener only queues
    n.tick(clock.t)
    assert [t for t, _ in ch.sent] == ["inspector on mx1: banned 198.51.100.0", "inspector on mx1: banned 198.51.100.1"]
    assert "reason: domain" in ch.sent[0][1] and "inspector unban 198.51.100.0" in ch.sent[0][1]
    assert n.status()["suppressed"] == 3
    n.tick(clock.t + 599)
    assert len(ch.sent) == 2  # the window is still full
    n.tick(clock.t + 601)
    assert ch.sent[-1][0] == "inspector on mx1: 3 more bans"
    assert n.status()["suppressed"] == 0
    n.on_ban("ban", FakeBan("2001:db8:1::/64"))
    n.tick(clock.t + 602)
    assert ch.sent[-1][0] == "inspector on mx1: banned 2001:db8:1::/64"  # one slot was left in this window


def test_notices_off_queue_nothing() -> None:
    ch = FakeChannel()
    n = Notifier(NotifySettings(sendmail="/x", report="off"), [ch], lambda a, b: "", Clock(0.0), "mx1")
    n.on_ban("ban", FakeBan("198.51.100.7"))
    n.tick(1.0)
    assert ch.sent == [] and n.status()["pending"] == 0


def test_a_failing_channel_is_counted_and_reported_not_raised() -> None:
    events: list[dict[str, object]] = []
    bad, good = FakeChannel("bad", fail=True), FakeChannel("good")
    n = Notifier(NotifySettings(sendmail="/x", report="off", bans=True), [bad, good], lambda a, b: "",
                 Clock(0.0), "mx1", emit=events.append)
    n.on_ban("ban", FakeBan("198.51.100.7"))
    n.tick(0.0)
    assert len(good.sent) == 1  # the other channel still got it
    st = n.status()
    assert st["failed"] == 1 and st["sent"] == 1 and st["last_error"] == "bad: connection refused"
    assert events == [{"event": "notify_failed", "channel": "bad", "error": "connection refused"}]


def test_the_thread_sends_and_close_flushes() -> None:
    ch = FakeChannel()
    n = Notifier(NotifySettings(sendmail="/x", report="off", bans=True), [ch], lambda a, b: "", time.time, "mx1",
                 interval=0.05)
    n.start()
    try:
        n.on_ban("ban", FakeBan("198.51.100.7"))
        deadline = time.monotonic() + 5
        while not ch.sent and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(ch.sent) == 1
        n.on_ban("ban", FakeBan("198.51.100.8"))
    finally:
        n.close()
    assert len(ch.sent) == 2


def _fake_sendmail(tmp_path: Path, rc: int = 0) -> Path:
    script = tmp_path / "sendmail"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\ncat > "{tmp_path}/stdin"\nexit {rc}\n')
    script.chmod(0o755)
    return script


def test_sendmail_channel_passes_an_argument_list_and_a_mail(tmp_path: Path) -> None:
    ch = SendmailChannel(str(_fake_sendmail(tmp_path)), ["root", "admin@example.org"], "inspector@example.org")
    ch.send("inspector report", "line one\n")
    assert (tmp_path / "argv").read_text().split() == ["-oi", "-f", "inspector@example.org", "--", "root",
                                                       "admin@example.org"]
    mail = (tmp_path / "stdin").read_text()
    assert "Subject: inspector report" in mail and "To: root, admin@example.org" in mail and "line one" in mail
    failing = SendmailChannel(str(_fake_sendmail(tmp_path / "..", rc=75)), ["root"], "inspector")
    with pytest.raises(NotifyError, match="exited 75"):
        failing.send("t", "b")
    with pytest.raises(NotifyError, match="sendmail"):
        SendmailChannel(str(tmp_path / "missing"), ["root"], "inspector").send("t", "b")


def test_report_notify_through_sendmail(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    now = time.time()
    events.write_text(json.dumps({"event": "ban", "time": now - 60, "network": "198.51.100.7", "seconds": 600,
                                  "reason": "domain"}) + "\n")
    path = _config(tmp_path, f'[notify]\nsendmail = "{_fake_sendmail(tmp_path)}"\n[service]\nevents = "{events}"\n')
    r = subprocess.run([sys.executable, "-m", "inspector", "report", "--notify", "--config", str(path)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    mail = (tmp_path / "stdin").read_text()
    assert "Subject: inspector report for" in mail


SEND = r"""
import json, sys, time
from inspector.notify import AppriseChannel, Notifier, NotifySettings
from dataclasses import dataclass

@dataclass(frozen=True)
class Ban:
    network: str
    seconds: int = 600
    reason: str = "connlimit"
    rule: str | None = None
    dport: int | None = 25

urls = ["mailto://127.0.0.1:2525?from=inspector@example.org&to=admin@example.org&mode=insecure",
        "json://127.0.0.1:8080/hook"]
s = NotifySettings(urls=tuple(urls), report="off", bans=True, ban_limit=2, ban_window=3600)
n = Notifier(s, [AppriseChannel(urls)], lambda a, b: "", time.time, "mx1")
for i in range(4):
    n.on_ban("ban", Ban(f"198.51.100.{i}"))
n.tick(time.time())
dead = Notifier(s, [AppriseChannel(["json://127.0.0.1:8081/nobody"])], lambda a, b: "", time.time, "mx1")
dead.on_ban("ban", Ban("198.51.100.9"))
dead.tick(time.time())
print(json.dumps({"ok": n.status(), "dead": dead.status()}))
"""


def test_apprise_mail_and_webhook_reach_local_sinks(tmp_path: Path) -> None:
    pytest.importorskip("apprise")
    pytest.importorskip("aiosmtpd")
    out = tmp_path / "sinks.jsonl"
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps({"event": "ban", "time": time.time() - 60, "network": "198.51.100.7",
                                  "seconds": 600, "reason": "domain"}) + "\n")
    with namespace() as ns:
        sinks = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, str(HERE / "notify_sinks.py"), str(out),
                                  "60"], stdout=subprocess.PIPE, text=True)
        try:
            assert sinks.stdout is not None and sinks.stdout.readline().strip() == "ready"
            env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
            r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SEND], capture_output=True,
                               text=True, timeout=60, env=env, check=False)
            assert r.returncode == 0, r.stderr
            status = json.loads(r.stdout)
            cfg = _config(tmp_path, '[notify]\nurls = ["mailto://127.0.0.1:2525?from=inspector@example.org&'
                                    'to=admin@example.org&mode=insecure", "json://127.0.0.1:8080/report"]\n'
                                    f'[service]\nevents = "{events}"\n')
            report = run_in(ns, sys.executable, "-m", "inspector", "report", "--notify", "--config", str(cfg),
                            check=False)
            assert report.returncode == 0, report.stderr
        finally:
            sinks.terminate()
            sinks.wait(timeout=10)
            if sinks.stdout is not None:
                sinks.stdout.close()
    got = [json.loads(line) for line in out.read_text().splitlines()]
    mails = [g for g in got if g["kind"] == "mail"]
    hooks = [json.loads(g["body"]) for g in got if g["kind"] == "http" and g["path"] == "/hook"]
    # two notices and nothing more within the limit, through both channels
    assert sorted(h["title"] for h in hooks) == ["inspector on mx1: banned 198.51.100.0",
                                                  "inspector on mx1: banned 198.51.100.1"]
    assert sum("banned 198.51.100." in m["data"] for m in mails) == 2
    assert all(m["rcpt_tos"] == ["admin@example.org"] for m in mails)
    assert status["ok"]["suppressed"] == 2 and status["ok"]["failed"] == 0
    assert status["dead"]["failed"] == 1 and "apprise" in status["dead"]["last_error"]
    # the daily report, sent on demand, arrived as mail and as a webhook, with the event log's ban in it
    [rep] = [json.loads(g["body"]) for g in got if g["kind"] == "http" and g["path"] == "/report"]
    assert rep["title"].startswith("inspector report for")
    assert "events read: 1" in rep["message"] and "domain" in rep["message"], rep["message"]
    assert any("Subject: inspector report for" in m["data"] for m in mails)
