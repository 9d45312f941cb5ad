"""scripts/setup-nfqueue.sh in a namespace: install, status, remove restores the rules exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from .bed import CLIENTS, PY, SERVER, SETUP, Bed, wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("preexisting", [True, False], ids=["with-admin-rules", "empty-firewall"])
def test_remove_restores_the_rules_exactly(net: Bed, preexisting: bool) -> None:
    if not SETUP.exists():
        pytest.fail(f"{SETUP} is missing")
    if preexisting:
        net.preexisting_rules()
    before = net.snapshot_rules()
    net.install()
    installed = net.snapshot_rules()
    assert installed != before
    # no --workers: one queue per two CPUs, at least one (inspector.service.default_workers)
    from inspector.firewall import parse_queues
    from inspector.service import default_workers

    assert parse_queues(net.s("iptables", "-S", "INSPECTOR").stdout)[1] == default_workers()
    assert any("INSPECTOR" in line for line in installed["iptables-save"])
    assert any("INSPECTOR" in line for line in installed["ip6tables-save"])
    status = net.setup("status")
    assert "INSPECTOR" in status.stdout, status.stdout
    net.install()  # idempotent: a second install changes nothing
    assert net.snapshot_rules() == installed

    r = net.setup("remove")
    net.installed = False
    assert net.snapshot_rules() == before
    assert "inspector-ban4" not in net.s("ipset", "list", "-n").stdout
    assert net.setup("remove").returncode == 0  # twice is fine
    assert net.snapshot_rules() == before, r.stdout
    # traffic flows as before
    assert net.smtp(CLIENTS[4]["a"], ["user@example.org"])["delivered"]


def _chain_installed(bed: Bed) -> bool:
    return bed.s("iptables", "-S", "INSPECTOR", check=False).returncode == 0


def _try_pidfile(bed: Bed) -> Path:
    """Where the setup script keeps the trial timer's PID for this namespace."""
    inode = bed.s("stat", "-L", "-c", "%i", "/proc/self/ns/net").stdout.strip()
    return Path(f"/run/inspector/setup-try-{inode}.pid")


def _drop_stale_pidfile(pidfile: Path) -> None:
    # A pidfile whose timer is gone would make a later `remove` (teardown) signal whatever
    # process group reuses that PID: delete it.  A live timer is left to `remove` to cancel.
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return
    if not Path(f"/proc/{pid}").exists():
        pidfile.unlink(missing_ok=True)


def test_try_removes_everything_unless_confirmed(net: Bed) -> None:
    net.preexisting_rules()
    before = net.snapshot_rules()
    pidfile = _try_pidfile(net)
    try:
        net.install("--try", "0.02")  # about one second
        assert _chain_installed(net)
        assert pidfile.exists()
        wait_for(lambda: not _chain_installed(net), 6, interval=0.2, what="the trial to remove the chain")
        wait_for(lambda: net.snapshot_rules() == before, 3, interval=0.2, what="the rules of before")
        wait_for(lambda: not pidfile.exists(), 3, interval=0.1, what="the trial's pidfile to go")
    finally:
        _drop_stale_pidfile(pidfile)


def test_confirm_keeps_the_rules_and_ends_the_timer(net: Bed) -> None:
    pidfile = _try_pidfile(net)
    net.install("--try", "1")
    assert "trial pending" in net.setup("status").stdout
    timer = int(pidfile.read_text())
    r = net.setup("confirm")
    assert "confirmed" in r.stdout, r.stdout
    assert not pidfile.exists()
    wait_for(lambda: not Path(f"/proc/{timer}").exists(), 3, what="the trial timer to end")
    assert _chain_installed(net)
    assert "trial pending" not in net.setup("status").stdout


NEW_ACK = r"""
import sys
from scapy.all import IP, IPv6, TCP, conf, sr1
conf.verb = 0
src, dst = sys.argv[1], sys.argv[2]
ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
answer = sr1(ip / TCP(sport=40404, dport=25, flags="A", seq=1000, ack=2000), timeout=1)
print("answer" if answer is not None else "none")
"""


@pytest.mark.parametrize("v", [4, 6], ids=["ipv4", "ipv6"])
def test_new_connection_without_syn_is_dropped(bed: Bed, v: int) -> None:
    """A stray ACK (no connection) gets no RST from the server: the chain drops NEW without SYN."""
    r = bed.c(PY, "-c", NEW_ACK, CLIENTS[v]["b"], SERVER[v], timeout=30)
    assert r.stdout.strip() == "none", r.stdout + r.stderr
    tool = "iptables" if v == 4 else "ip6tables"
    listing = bed.s(tool, "-L", "INSPECTOR", "-v", "-n", "-x").stdout
    [rule] = [line for line in listing.splitlines() if "ctstate NEW" in line]
    assert int(rule.split()[0]) >= 1, listing


def test_fail_closed_drops_while_no_inspector_runs(bed: Bed) -> None:
    a = CLIENTS[4]["a"]
    bed.setup("install", "--fail-closed", "--queue", "0", "--ports", "25,22", "--no-ssh-whitelist")
    assert "--queue-bypass" not in bed.s("iptables", "-S", "INSPECTOR").stdout
    r = bed.smtp(a, ["user@example.org"], timeout=2)
    assert not r["delivered"] and r["stage"] == "connect", r
    bed.start_inspector()  # bound again: traffic flows through the inspector
    r = bed.smtp(CLIENTS[4]["b"], ["user@example.org"], timeout=3)
    assert r["delivered"], r


@pytest.mark.parametrize("v", [4, 6], ids=["ipv4", "ipv6"])
def test_a_kernel_whitelisted_source_passes_even_when_banned(net: Bed, v: int) -> None:
    """No lockout: the SSH client setup-nfqueue.sh whitelists (and every --whitelist) stays reachable
    when a ban covers it anyway (a log ban of the admin's mistyped passwords, a manual range, a
    fleet peer's ban: the service knows only [whitelist], not the kernel whitelist sets)."""
    a = CLIENTS[v]["a"]
    net.install("--whitelist", a)
    ban_set = "inspector-ban4" if v == 4 else "inspector-ban6"
    net.s("ipset", "add", ban_set, a if v == 4 else f"{a}/64", "timeout", "600")
    r = net.smtp(a, ["user@example.org"], timeout=5)
    assert r["delivered"], r


def test_reply_chain_queues_only_server_payload_and_remove_takes_it_away(net: Bed) -> None:
    """--reply-mark (default 0x10000000): the server's side of SMTP connections marked "replies" is
    queued from OUTPUT; that chain never drops and always bypasses; --reply-mark 0 installs none."""
    before = net.snapshot_rules()
    net.install()
    for tool in ("iptables", "ip6tables"):
        rules = net.s(tool, "-S").stdout.splitlines()
        jumps = [line for line in rules if line.endswith("-j INSPECTOR-REPLY")]
        assert len(jumps) == 1 and jumps[0].startswith("-A OUTPUT") and "--sports 25,22" in jumps[0], jumps
        chain = net.s(tool, "-S", "INSPECTOR-REPLY").stdout.splitlines()
        assert not any("DROP" in line or "REJECT" in line for line in chain), chain
        queued = [line for line in chain if "NFQUEUE" in line]
        assert queued and all("--queue-bypass" in line and "0x10000000/0x10000000" in line and "-m bpf" in line
                              for line in queued), queued
        # the state rules: a 354 on the server's packet moves the connection into its body
        assert any("--set-xmark 0x20000000/0x30000000" in line for line in chain), chain
        inspector = net.s(tool, "-S", "INSPECTOR").stdout
        assert "--set-xmark 0x10000000/0x30000000" in inspector and "--set-xmark 0x0/0x30000000" in inspector
    net.install("--reply-mark", "0")
    for tool in ("iptables", "ip6tables"):
        assert "INSPECTOR-REPLY" not in net.s(tool, "-S").stdout
    r = net.setup("install", "--reply-mark", "0x20000000", check=False)
    assert r.returncode != 0 and "--reply-mark must be" in r.stderr, r.stderr
    net.setup("remove")
    net.installed = False
    assert net.snapshot_rules() == before


def test_ssh_whitelist_says_when_it_finds_no_client(net: Bed) -> None:
    """Under sudo (env_reset) or su - the SSH client's address is gone from the environment: install
    says so instead of whitelisting nobody in silence; with it, the client is whitelisted."""
    argv = ["bash", str(SETUP), "install", "--queue", "0", "--ports", "25,22", "--workers", "1"]
    try:
        r = net.s("env", "-u", "SSH_CONNECTION", "-u", "SSH_CLIENT", *argv, timeout=60)
        assert "no SSH client found to whitelist" in r.stdout, r.stdout
        net.setup("remove")
        r = net.s("env", "SSH_CONNECTION=198.51.100.7 50022 192.0.2.25 22", *argv, timeout=60)
        assert "whitelisting this SSH session's client 198.51.100.7" in r.stdout, r.stdout
        assert "no SSH client found" not in r.stdout
        assert "198.51.100.7" in net.s("ipset", "list", "inspector-white4").stdout
    finally:
        net.setup("remove", check=False)
