"""LogMonitor → BanPipeline.issue: log bans land in the ban store, the firewall and the events the packet path uses."""

import json

from inspector.bans import BanStore
from inspector.config import load_config
from inspector.engine import Engine
from inspector.events import MemorySink
from inspector.logs import LogMonitor
from inspector.respond.bans import Ban, BanPipeline
from inspector.rules import load_rules
from inspector.runner import Runner
from inspector.testing import FakeFirewall, RecordingSender

SSHD = "2026-11-21T13:00:0{}Z host sshd[1]: Failed password for root from {} port 22 ssh2\n"


def setup(tmp_path, extra=""):
    auth = tmp_path / "auth.log"
    mail = tmp_path / "mail.log"
    auth.write_text("2026-11-21T12:00:00Z host sshd[1]: Failed password for root from 203.0.113.9 port 22 ssh2\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[whitelist]
cidrs = ["198.51.100.0/24"]
[logs]
bantime_max = 7200
{extra}
[[logs.source]]
path = "{auth}"
filter = "sshd"
maxretry = 3
bantime = 3600
[[logs.source]]
path = "{mail}"
filter = "postfix-sasl"
backend = "file"
maxretry = 2
""")
    config = load_config(cfg)
    clock = [1795266000.0]  # 2026-11-21T13:00:00Z
    firewall = FakeFirewall(lambda: clock[0])
    store = BanStore(tmp_path / "bans.json")
    events = MemorySink()
    engine = Engine(config, load_rules([]))
    runner = Runner(engine, RecordingSender(), events, BanPipeline(store, firewall, events), lambda: clock[0])
    monitor = LogMonitor(config, local=["192.0.2.10"], utc=True)
    return monitor, runner, engine, store, firewall, events, clock, auth, mail


def drive(monitor, runner, engine, now):
    """What the service does each tick."""
    runner.bans.firewall.clock = lambda: now
    for ban in monitor.poll(now):
        if runner.bans.issue(Ban(ban.network, ban.seconds, ban.reason, ban.rule, "log"), now):
            engine.add_ban(ban.network, now + ban.seconds, ban.reason)


def test_log_bans_go_through_the_one_ban_pipeline(tmp_path):
    monitor, runner, engine, store, firewall, events, clock, auth, mail = setup(tmp_path)
    drive(monitor, runner, engine, clock[0])
    assert firewall.entries == {}  # the line before the start is not read
    with auth.open("a") as f:
        for i, host in enumerate(["203.0.113.5", "203.0.113.5", "198.51.100.7", "192.0.2.10", "127.0.0.1",
                                  "2001:db8:1:2::5"]):
            f.write(SSHD.format(i, host))
    drive(monitor, runner, engine, clock[0] + 1)
    assert firewall.entries == {}
    with auth.open("a") as f:
        f.write(SSHD.format(7, "203.0.113.5"))
        f.write("2026-11-21T13:00:08Z host sshd[1]: Failed password for root from 198.51.100.7 port 22 ssh2\n" * 5)
        f.write("2026-11-21T13:00:09Z host sshd[1]: Failed password for root from ::1 port 22 ssh2\n" * 5)
    with mail.open("a") as f:
        f.write("2026-11-21T13:00:09Z mail postfix/smtpd[7]: warning: unknown[2001:db8:1:2::99]: "
                "SASL LOGIN authentication failed: authentication failure\n")
    drive(monitor, runner, engine, clock[0] + 2)
    assert firewall.entries == {"203.0.113.5": clock[0] + 2 + 3600}
    record = store.records["203.0.113.5"]
    assert (record.reason, record.rule, record.expires) == ("log:sshd", "sshd", clock[0] + 2 + 3600)
    ban_events = [e for e in events.events if e["event"] == "ban"]
    assert ban_events == [{"event": "ban", "time": round(clock[0] + 2, 3), "network": "203.0.113.5",
                           "seconds": 3600, "reason": "log:sshd", "rule": "sshd", "dport": None, "path": "log"}]
    active = [engine.ban_network(k) for k, (expires, _) in engine.bans.items() if expires > clock[0] + 3]
    assert active == ["203.0.113.5"]
    store.save(clock[0] + 3)
    saved = json.loads((tmp_path / "bans.json").read_text())
    assert [b["network"] for b in saved["bans"]] == ["203.0.113.5"]

    # a second postfix failure in the same /64 bans it (the sshd source's count is separate)
    with mail.open("a") as f:
        f.write("2026-11-21T13:00:10Z mail postfix/smtpd[7]: warning: unknown[2001:db8:1:2::98]: "
                "SASL LOGIN authentication failed: authentication failure\n")
    drive(monitor, runner, engine, clock[0] + 3)
    assert "2001:db8:1:2::/64" in firewall.entries
    stats = monitor.stats()
    assert stats["policy"]["whitelisted"] == 13  # the [whitelist] CIDR, the own address, loopback
    assert stats["counts"]["failures:sshd:" + str(auth)] == 17


def test_export_hosts_deny_from_the_store(tmp_path):
    out = tmp_path / "hosts.deny.inspector"
    monitor, runner, engine, store, firewall, events, clock, auth, mail = setup(
        tmp_path, f'hosts_deny = "{out}"\nhosts_deny_daemon = "sshd"')
    runner.bans.issue(Ban("203.0.113.5", 3600, "log:sshd", "sshd", "log"), clock[0])
    runner.bans.issue(Ban("2001:db8::/64", 3600, "domain", "x.test", "packet", None, 25), clock[0])
    assert monitor.export_hosts_deny(r.network for r in store.active(clock[0])) == 2
    assert out.read_text().splitlines()[1:] == ["sshd: 203.0.113.5", "sshd: [2001:db8::]/64"]


def test_no_export_unless_configured(tmp_path):
    monitor = setup(tmp_path)[0]
    assert monitor.export_hosts_deny(["203.0.113.5"]) is None


def test_a_journal_source_without_the_module_is_counted_not_fatal(tmp_path, monkeypatch):
    import inspector.logs as logs

    monkeypatch.setattr(logs, "journal_available", lambda: False)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[[logs.source]]\njournal = ["_SYSTEMD_UNIT=ssh.service"]\nfilter = "sshd"\n')
    monitor = LogMonitor(load_config(cfg), local=[])
    assert monitor.counts["journal-unavailable"] == 1
    assert len(monitor.sources) == 1  # kept, in the error state, so status shows it


def test_a_missing_log_is_waited_for(tmp_path):
    monitor, runner, engine, store, firewall, events, clock, auth, mail = setup(tmp_path)
    assert not mail.exists()
    drive(monitor, runner, engine, clock[0])
    mail.write_text(
        "2026-11-21T13:00:01Z mail postfix/smtpd[7]: warning: unknown[203.0.113.77]: SASL LOGIN authentication "
        "failed: authentication failure\n" * 2)
    drive(monitor, runner, engine, clock[0] + 1)
    assert "203.0.113.77" in firewall.entries


def test_one_file_two_filters_and_a_reload_that_loses_nothing(tmp_path):
    mail = tmp_path / "mail.log"
    mail.write_text("")
    text = f"""
[logs]
[[logs.source]]
path = "{mail}"
filter = "postfix-sasl"
maxretry = 3
[[logs.source]]
path = "{mail}"
filter = "courier"
maxretry = 2
"""
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    monitor = LogMonitor(load_config(cfg), local=[], utc=True)
    assert len(monitor.feeds) == 1 and len(monitor.sources) == 2
    sasl = ("2026-11-21T13:00:00Z mail postfix/smtpd[7]: warning: unknown[203.0.113.5]: SASL LOGIN authentication "
            "failed: authentication failure\n")
    imap = "2026-11-21T13:00:00Z mail imapd: LOGIN FAILED, user=a, ip=[::ffff:203.0.113.6]\n"
    with mail.open("a") as f:
        f.write(sasl * 2 + imap)
    assert monitor.poll(1795266000.0) == []

    # reload: a new monitor takes over the open file and the counts
    cfg.write_text(text.replace("maxretry = 2", "maxretry = 2\nbantime = 60"))
    monitor2 = LogMonitor(load_config(cfg), local=[], utc=True, previous=monitor)
    assert monitor.feeds == {}
    with mail.open("a") as f:
        f.write(sasl + imap)
    bans = monitor2.poll(1795266001.0)
    assert sorted((b.network, b.rule, b.seconds) for b in bans) == [
        ("203.0.113.5", "postfix-sasl", 86400), ("203.0.113.6", "courier", 60)]
    monitor2.close()


def test_each_source_has_a_state(tmp_path):
    monitor, runner, engine, store, firewall, events, clock, auth, mail = setup(tmp_path)
    states = {s["path"]: (s["backend"], s["state"]) for s in monitor.states()}
    assert states == {str(auth): ("file", "reading"), str(mail): ("file", "waiting")}
    mail.write_text("")
    monitor.poll(clock[0])
    assert {s["path"]: s["state"] for s in monitor.states()}[str(mail)] == "reading"
    assert all("state" in entry for entry in monitor.stats()["logs"])


def test_auto_takes_the_journal_when_the_file_is_missing(tmp_path, monkeypatch):
    """backend = "auto": the file when it exists, else the filter's units in the journal (an error state
    naming the missing binding when it cannot be imported: never a silent skip)."""
    import inspector.logs as logs_mod

    monkeypatch.setattr(logs_mod, "journal_available", lambda: False)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f"""
[service]
state_file = "{tmp_path / 'state' / 'bans.json'}"
[[logs.source]]
filter = "sshd"
path = "{tmp_path / 'auth.log'}"
[[logs.source]]
filter = "dovecot"
path = "{tmp_path / 'mail.log'}"
""")
    (tmp_path / "mail.log").write_text("")
    monitor = LogMonitor(load_config(cfg), local=[])
    by_source = {s["sources"][0]: s for s in monitor.states()}
    sshd = by_source[f"sshd:{tmp_path / 'auth.log'}"]
    assert sshd["backend"] == "journal" and sshd["state"] == "error"
    assert "systemd Python binding is not installed" in sshd["error"]
    assert sshd["path"] == "journal:_SYSTEMD_UNIT=ssh.service,_SYSTEMD_UNIT=sshd.service"
    assert by_source[f"dovecot:{tmp_path / 'mail.log'}"]["backend"] == "file"
    assert monitor.poll(0.0) == [] and monitor.counts["journal-unavailable"] == 1
    assert monitor.cursor_dir == tmp_path / "state"
