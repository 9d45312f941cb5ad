"""Log evidence end to end: a failure line in a followed log bans its source in the kernel."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import threading
import time
from pathlib import Path

import pytest

from .bed import CLIENTS, SERVER, Bed, wait_for

pytestmark = pytest.mark.e2e

LINE = "{ts} server sshd[{pid}]: Failed password for invalid user admin from {ip} port {port} ssh2\n"


def logs_config(bed: Bed, path: str) -> str:
    return f"""
[logs]
poll_interval = 0.1
[[logs.source]]
path = "{path}"
filter = "sshd"
maxretry = 2
findtime = 60
bantime = 3600
"""


def write_failures(log, ip: str, n: int) -> float:
    ts = time.strftime("%b %d %H:%M:%S")
    with log.open("a") as f:
        for i in range(n):
            f.write(LINE.format(ts=ts, pid=1000 + i, ip=ip, port=40000 + i))
    return time.monotonic()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_log_failures_ban_in_the_ipset(bed: Bed, workers: str) -> None:
    log = bed.dir / "auth.log"
    log.write_text("")
    bed.write_config(extra=logs_config(bed, str(log)))
    bed.setup("install", "--workers", workers, "--queue", "0", "--ports", "25,22", "--no-ssh-whitelist")
    bed.start_inspector("--workers", workers)
    a, b = CLIENTS[4]["a"], CLIENTS[4]["b"]
    assert bed.connect(a, 22, banner=True)["ok"]
    # loopback (a local webmail) and one failure below maxretry are never banned
    write_failures(log, "127.0.0.1", 5)
    write_failures(log, b, 1)
    delays = []
    for ip in [a, "198.51.100.12", "2001:db8:3::10"]:
        written = write_failures(log, ip, 2)
        wait_for(lambda ip=ip: bed.banned(ip) is not None, 3, interval=0.002, what=f"{ip} banned")
        delays.append(time.monotonic() - written)
    ban = bed.wait_event(event="ban", reason="log:sshd")
    assert ban["rule"] == "sshd" and ban["seconds"] == 3600
    assert 3590 <= bed.banned(a) <= 3600
    assert not bed.connect(a, 22, banner=True, timeout=1)["ok"]  # dropped in the kernel now
    assert bed.banned(b) is None and bed.banned("127.0.0.1") is None
    assert bed.connect(b, 22, banner=True)["ok"]
    print(f"\nlog line -> ipset entry ({workers} worker(s)): median {statistics.median(delays) * 1000:.0f} ms, "
          f"max {max(delays) * 1000:.0f} ms (poll every 100 ms)")


SSHD_PORT = 2222


def _why_no_sshd() -> str | None:
    from tests.logs.journal_writer import why_no_journal

    if not os.path.exists("/usr/sbin/sshd") or shutil.which("ssh-keygen") is None or shutil.which("ssh") is None:
        return "needs Debian's openssh-server and openssh-client (scripts/bootstrap.sh installs them)"
    return why_no_journal()


class SshdToJournal:
    """Debian's sshd in the server namespace (``-D -e``, its own config and host key), each line it logs
    written to a journal file by systemd-journal-remote as an ``ssh.service`` entry."""

    def __init__(self, bed: Bed, journal_dir: Path) -> None:
        from tests.logs.journal_writer import JournalWriter

        d = bed.dir / "sshd"
        d.mkdir()
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "host_ed25519")], check=True,
                       timeout=30)
        (d / "sshd_config").write_text(f"""\
Port {SSHD_PORT}
ListenAddress 0.0.0.0
ListenAddress ::
HostKey {d / 'host_ed25519'}
PidFile {d / 'sshd.pid'}
PasswordAuthentication yes
KbdInteractiveAuthentication no
PubkeyAuthentication no
UsePAM no
StrictModes no
MaxAuthTries 10
MaxStartups 50
LogLevel INFO
""")
        # the privilege separation directory Debian's unit creates (RuntimeDirectory=sshd)
        self.made_run = not os.path.isdir("/run/sshd")
        if self.made_run:
            os.makedirs("/run/sshd", mode=0o755)
        self.writer = JournalWriter(journal_dir)
        self.proc = subprocess.Popen(["ip", "netns", "exec", bed.server, "/usr/sbin/sshd", "-D", "-e",
                                      "-f", str(d / "sshd_config")],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")  # sshd -e ends lines with "\r\n": kept
            self.lines.append(line)
            self.writer.write(line, unit="ssh.service", ident="sshd", pid=self.proc.pid)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.writer.close()
        if self.made_run:
            shutil.rmtree("/run/sshd", ignore_errors=True)


def brute_force(bed: Bed, src: str, attempts: int) -> subprocess.CompletedProcess[str]:
    """``ssh`` from ``src`` in the client namespace, a wrong password per prompt (SSH_ASKPASS), no tty."""
    askpass = bed.dir / "askpass.sh"
    askpass.write_text("#!/bin/sh\necho wrong-password\n")
    askpass.chmod(0o755)
    env = {**os.environ, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force", "DISPLAY": ":0"}
    cmd = ["ip", "netns", "exec", bed.client, "ssh", "-p", str(SSHD_PORT), "-b", src, "-o", "BatchMode=no",
           "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
           "-o", "PreferredAuthentications=password", "-o", "PubkeyAuthentication=no",
           "-o", f"NumberOfPasswordPrompts={attempts}", "-o", "LogLevel=ERROR",
           "nosuchuser@" + (SERVER[6] if ":" in src else SERVER[4]), "true"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
                          start_new_session=True)


def test_sshd_brute_force_read_from_the_journal_is_banned_in_the_kernel(net: Bed) -> None:
    """A stock Debian 12: no auth.log, sshd logs to the journal. ``backend = "auto"`` with a missing file
    reads ssh.service's entries; a password brute force from the client namespace ends in the ipset."""
    reason = _why_no_sshd()
    if reason:
        pytest.skip(reason)
    journal = net.dir / "journal"
    net.preexisting_rules()
    net.install("--ports", f"25,22,{SSHD_PORT}")
    sshd = SshdToJournal(net, journal)
    try:
        a, b = CLIENTS[4]["a"], CLIENTS[4]["b"]
        wait_for(lambda: net.connect(b, SSHD_PORT, banner=True, timeout=2)["ok"], 10, interval=0.2,
                 what="sshd answering")
        net.write_config(extra=f"""
[logs]
poll_interval = 0.1
journal_directory = "{journal}"
[[logs.source]]
filter = "sshd"
path = "{net.dir / 'no-such-auth.log'}"
backend = "auto"
maxretry = 3
findtime = 60
bantime = 3600
""")
        check = net.cli("check")
        assert check.returncode == 0, check.stderr
        assert f"backend auto -> journal in {journal} _SYSTEMD_UNIT=ssh.service" in check.stdout
        assert "WARNING" not in check.stdout, check.stdout
        net.start_inspector()
        started = time.monotonic()
        r = brute_force(net, a, 3)
        assert r.returncode != 0  # three wrong passwords
        try:
            wait_for(lambda: net.banned(a) is not None, 10, interval=0.05, what=f"{a} banned")
        except TimeoutError:
            print("sshd logged:", *map(repr, sshd.lines), sep="\n  ")
            print(net.cli("status", "--json").stdout)
            raise
        took = time.monotonic() - started
        assert sum("Failed password for invalid user nosuchuser from " + a in line for line in sshd.lines) == 3
        ban = net.wait_event(event="ban", reason="log:sshd")
        assert ban["rule"] == "sshd" and ban["seconds"] == 3600
        assert 3590 <= net.banned(a) <= 3600
        assert not net.connect(a, SSHD_PORT, banner=True, timeout=1)["ok"]  # dropped in the kernel now
        assert net.connect(b, SSHD_PORT, banner=True)["ok"] and net.banned(b) is None
        status = net.cli("status")
        assert "log reading  journal" in status.stdout, status.stdout
        print(f"\nsshd brute force (3 wrong passwords) -> ipset entry: {took * 1000:.0f} ms, via the journal")
    finally:
        sshd.close()
