"""IPv4 bans in a hash:net set: networks go in as one entry each, and an older install's
hash:ip set is upgraded by setup-nfqueue.sh with its bans (or used, for addresses, until then)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from .netns import namespace, run_in

SETUP = Path(__file__).resolve().parents[1] / "scripts" / "setup-nfqueue.sh"

pytestmark = pytest.mark.skipif(shutil.which("ipset") is None or shutil.which("iptables") is None,
                                reason="needs ipset and iptables (scripts/bootstrap.sh installs them)")


def test_ipv4_networks_are_one_entry_each() -> None:
    with namespace() as ns:
        script = ("from inspector.firewall import IpsetFirewall\n"
                  "fw = IpsetFirewall(); fw.ensure_sets()\n"
                  "for n in ('198.51.100.7', '198.51.100.16/28', '2001:db8:1::/64'): fw.ban(n, 600)\n"
                  "print(sorted(n for n, _ in fw.bans()))\n"
                  "print(fw.unban('198.51.100.16/28'), fw.unban('198.51.100.16/28'))\n")
        r = run_in(ns, sys.executable, "-c", script, check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["['198.51.100.16/28', '198.51.100.7', '2001:db8:1::/64']", "True False"]
        assert "Type: hash:net" in run_in(ns, "ipset", "list", "-t", "inspector-ban4").stdout


def test_an_old_hash_ip_set_works_for_addresses_and_setup_upgrades_it_keeping_its_bans() -> None:
    with namespace() as ns:
        # what an older setup-nfqueue.sh left: a hash:ip set the INSPECTOR chain references
        run_in(ns, "ipset", "create", "inspector-ban4", "hash:ip", "family", "inet", "timeout", "3600")
        run_in(ns, "ipset", "add", "inspector-ban4", "198.51.100.7", "timeout", "500")
        run_in(ns, "iptables", "-N", "INSPECTOR")
        run_in(ns, "iptables", "-A", "INSPECTOR", "-m", "set", "--match-set", "inspector-ban4", "src", "-j", "DROP")
        script = ("from inspector.firewall import IpsetFirewall, FirewallError\n"
                  "fw = IpsetFirewall(); fw.ensure_sets(); fw.ban('198.51.100.8', 600)\n"
                  "try:\n    fw.ban('198.51.100.16/28', 600)\nexcept FirewallError as e:\n    print(e)\n")
        r = run_in(ns, sys.executable, "-c", script, check=False)
        assert r.returncode == 0, r.stderr
        assert "is hash:ip (made by an older setup-nfqueue.sh)" in r.stdout and "setup-nfqueue.sh install" in r.stdout
        r = run_in(ns, "bash", str(SETUP), "install", "--no-ssh-whitelist", "--workers", "1", check=False)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "upgrading ipset inspector-ban4" in r.stdout
        listing = run_in(ns, "ipset", "list", "inspector-ban4").stdout
        assert "Type: hash:net" in listing
        kept = {line.split()[0]: int(line.split()[2]) for line in listing.splitlines() if line.startswith("198.")}
        assert set(kept) == {"198.51.100.7", "198.51.100.8"} and 400 < kept["198.51.100.7"] <= 500
        assert "inspector-ban4-up" not in run_in(ns, "ipset", "list", "-n").stdout
        chain = run_in(ns, "iptables", "-S", "INSPECTOR").stdout
        assert "--match-set inspector-ban4 src -j DROP" in chain
        assert run_in(ns, "bash", str(SETUP), "install", "--no-ssh-whitelist", "--workers", "1").returncode == 0
        run_in(ns, "bash", str(SETUP), "remove")
        assert "inspector-ban4" not in run_in(ns, "ipset", "list", "-n").stdout
