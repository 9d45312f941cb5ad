"""``setup-nfqueue.sh baseline``: a default-DROP INPUT with the listed ports open, in a namespace."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from .bed import CLIENTS, PY, SERVER, Bed, wait_for

pytestmark = pytest.mark.e2e

V = pytest.mark.parametrize("v", [4, 6], ids=["ipv4", "ipv6"])

SCAN = r"""
import sys
from scapy.all import IP, IPv6, TCP, conf, sr1
conf.verb = 0
src, dst, flags = sys.argv[1], sys.argv[2], sys.argv[3]
ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
answer = sr1(ip / TCP(sport=40405, dport=22, flags=flags, seq=1000), timeout=1)
print("answer" if answer is not None else "none")
"""


def _baseline(bed: Bed, *args: str, env: str = "") -> None:
    bed.stack.callback(bed.setup, "remove-baseline", check=False)
    argv = ["env", env] if env else []
    bed.s(*argv, "bash", str(Path(__file__).parents[2] / "scripts" / "setup-nfqueue.sh"), "baseline", *args)


def _counter(bed: Bed, v: int, needle: str) -> int:
    tool = "iptables" if v == 4 else "ip6tables"
    listing = bed.s(tool, "-L", "INSPECTOR-BASE", "-v", "-n", "-x").stdout
    [line] = [x for x in listing.splitlines() if needle in x]
    return int(line.split()[0])


@V
def test_unlisted_port_is_closed_listed_one_open_and_remove_restores(net: Bed, v: int) -> None:
    net.preexisting_rules()
    before = net.snapshot_rules()
    _baseline(net, "--open", "25", "--no-ssh-whitelist")
    tool = "iptables" if v == 4 else "ip6tables"
    assert "-P INPUT DROP" in net.s(tool, "-S", "INPUT").stdout
    assert f"== baseline IPv{v}: INPUT policy DROP, open: 25" in net.setup("status").stdout
    a = CLIENTS[v]["a"]
    assert net.smtp(a)["delivered"]  # listed port, and ESTABLISHED carries the rest of the session
    closed = net.connect(a, 22, timeout=1)
    assert closed["error"] == "timeout", closed  # dropped, not even refused
    # NULL and XMAS scans die in the kernel (no RST comes back from the closed port)
    for flags, rule in (("", "flags:0x3F/0x00"), ("FPU", "flags:0x3F/0x29")):
        seen = _counter(net, v, rule)
        r = net.c(PY, "-c", SCAN, a, SERVER[v], flags, timeout=30)
        assert r.stdout.strip() == "none", r.stdout + r.stderr
        assert _counter(net, v, rule) > seen
    net.setup("remove-baseline")
    assert net.snapshot_rules() == before
    assert net.connect(a, 22, banner=True)["ok"]


def test_ssh_client_and_whitelist_are_accepted_on_every_port(net: Bed) -> None:
    me, other = CLIENTS[4]["c"], CLIENTS[4]["a"]
    _baseline(net, "--open", "25", "--whitelist", "203.0.113.0/24",
              env=f"SSH_CONNECTION={me} 50000 {SERVER[4]} 22")
    assert net.connect(me, 22, banner=True)["ok"]
    assert net.connect(CLIENTS[4]["w"], 22, banner=True)["ok"]
    assert net.connect(other, 22, timeout=1)["error"] == "timeout"


def test_baseline_comes_after_the_inspector_jump_in_either_order(net: Bed) -> None:
    before = net.snapshot_rules()
    _baseline(net, "--open", "25,22", "--no-ssh-whitelist")
    net.install()
    def first() -> list[str]:
        return [line.split()[-1] for line in net.s("iptables", "-S", "INPUT").stdout.splitlines()[1:3]]

    assert first() == ["INSPECTOR", "INSPECTOR-BASE"]
    net.setup("remove-baseline")
    _baseline(net, "--open", "25,22", "--no-ssh-whitelist")  # after install this time
    assert first() == ["INSPECTOR", "INSPECTOR-BASE"]
    assert net.smtp(CLIENTS[4]["a"])["delivered"]
    _baseline(net, "--open", "25,22", "--no-ssh-whitelist")  # idempotent
    assert first() == ["INSPECTOR", "INSPECTOR-BASE"]
    net.setup("remove")
    net.installed = False
    net.setup("remove-baseline")
    assert net.snapshot_rules() == before


def test_try_rolls_the_baseline_back(net: Bed) -> None:
    net.preexisting_rules()
    before = net.snapshot_rules()
    _baseline(net, "--open", "25", "--no-ssh-whitelist", "--try", "0.02")  # about one second
    assert net.connect(CLIENTS[4]["a"], 22, timeout=1)["error"] == "timeout"
    wait_for(lambda: net.snapshot_rules() == before, 8, interval=0.2, what="the rules of before")
    assert net.connect(CLIENTS[4]["a"], 22, banner=True)["ok"]


def test_confirm_keeps_the_baseline(net: Bed) -> None:
    _baseline(net, "--open", "25", "--no-ssh-whitelist", "--try", "0.05")  # three seconds
    assert "baseline trial pending" in net.setup("status").stdout
    assert "confirmed" in net.setup("confirm").stdout
    time.sleep(4)  # past the trial
    assert "-P INPUT DROP" in net.s("iptables", "-S", "INPUT").stdout


def test_baseline_needs_open_ports(net: Bed) -> None:
    before = net.snapshot_rules()
    r = net.setup("baseline", check=False)
    assert r.returncode != 0 and "--open" in r.stderr
    r = net.setup("baseline", "--open", "25;22", check=False)
    assert r.returncode != 0 and "comma-separated" in r.stderr
    assert net.snapshot_rules() == before
