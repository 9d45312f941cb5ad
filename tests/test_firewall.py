"""The ipset adapter against the real kernel, inside a throwaway network namespace."""

import json
import shutil
import sys

import pytest

from inspector.testing import FakeFirewall
from tests.netns import namespace, run_in

SCRIPT = r"""
import json, sys
from inspector.firewall import IpsetFirewall, SetNames, FirewallError
fw = IpsetFirewall(SetNames("t-ban4", "t-ban6"), maxelem=1000)
fw.ensure_sets()
fw.ensure_sets()  # idempotent
fw.ban("198.51.100.7", 86400)
fw.ban("2001:db8:1::/64", 3600)
fw.ban("198.51.100.8", 10**9)  # clamped to ipset's maximum
out = {"bans": sorted(fw.bans())}
out["unban"] = fw.unban("198.51.100.8")
out["unban_again"] = fw.unban("198.51.100.8")
out["after"] = sorted(n for n, _ in fw.bans())
print(json.dumps(out))
"""


def test_ipset_adapter_in_a_namespace():
    if shutil.which("ipset") is None:
        pytest.skip("needs the ipset tool to cross-check (scripts/bootstrap.sh installs it)")
    with namespace() as ns:
        r = run_in(ns, sys.executable, "-c", SCRIPT, check=False)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        bans = dict(out["bans"])
        assert set(bans) == {"198.51.100.7", "198.51.100.8", "2001:db8:1::/64"}
        assert 86390 <= bans["198.51.100.7"] <= 86400
        assert 3590 <= bans["2001:db8:1::/64"] <= 3600
        assert bans["198.51.100.8"] > 2_000_000
        assert out["unban"] is True and out["unban_again"] is False
        assert out["after"] == ["198.51.100.7", "2001:db8:1::/64"]
        # the kernel agrees, seen through the ipset tool; the /64 matches any address in it
        listing = run_in(ns, "ipset", "list", "t-ban6").stdout
        assert "2001:db8:1::/64 timeout" in listing and "maxelem 1000" in listing
        assert run_in(ns, "ipset", "test", "t-ban6", "2001:db8:1::99", check=False).returncode == 0
        assert run_in(ns, "ipset", "test", "t-ban6", "2001:db8:2::1", check=False).returncode != 0


def test_ipset_adapter_names_a_full_set():
    with namespace() as ns:
        script = ("from inspector.firewall import *\n"
                  "fw = IpsetFirewall(SetNames('f4', 'f6'), maxelem=2)\nfw.ensure_sets()\n"
                  "fw.ban('192.0.2.1', 60); fw.ban('192.0.2.2', 60)\n"
                  "try:\n    fw.ban('192.0.2.3', 60)\nexcept FirewallError as e:\n    print(e)\n")
        r = run_in(ns, sys.executable, "-c", script, check=False)
        assert r.returncode == 0, r.stderr
        assert "ipset f4 is full (maxelem 2): 192.0.2.3 not banned" in r.stdout


def test_fake_firewall_records_and_expires():
    now = [100.0]
    fw = FakeFirewall(lambda: now[0])
    fw.ban("198.51.100.7", 60)
    assert fw.bans() == [("198.51.100.7", 60)]
    now[0] = 161.0
    assert fw.bans() == []
    assert fw.unban("198.51.100.7") is True and fw.unban("x") is False


def test_existing_sets_are_used_if_they_fit():
    if shutil.which("ipset") is None:
        pytest.skip("needs the ipset tool")
    with namespace() as ns:
        run_in(ns, "ipset", "create", "e4", "hash:ip", "timeout", "60", "maxelem", "10")
        run_in(ns, "ipset", "create", "e6", "hash:ip", "family", "inet6")  # wrong type, no timeout
        script = ("from inspector.firewall import *\n"
                  "fw = IpsetFirewall(SetNames('e4', 'e6'))\n"
                  "try:\n    fw.ensure_sets()\nexcept FirewallError as e:\n    print(e)\n")
        r = run_in(ns, sys.executable, "-c", script, check=False)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == ("ipset e6 exists as hash:ip inet6 without timeout support, but bans need "
                                    "hash:net inet6 with timeout support; remove it (ipset destroy e6) or "
                                    "choose another name")


def test_ban_speed_raw_netlink_against_pyroute2():
    """Not a timed assertion: prints the figures, and checks both paths put the same entries in the set."""
    with namespace() as ns:
        script = r"""
import json, socket, time
from pyroute2 import IPSet
from inspector.firewall import IpsetFirewall, SetNames
fw = IpsetFirewall(SetNames("s4", "s6"), maxelem=100000)
fw.ensure_sets()
n = 2000
t = time.perf_counter()
for i in range(n):
    fw.ban(f"198.18.{i // 250}.{i % 250 + 1}", 600)
raw = (time.perf_counter() - t) / n
ips = IPSet()
t = time.perf_counter()
for i in range(n):
    ips.add("s4", f"198.19.{i // 250}.{i % 250 + 1}", timeout=600, exclusive=False)
py = (time.perf_counter() - t) / n
print(json.dumps({"raw_us": raw * 1e6, "pyroute2_us": py * 1e6, "entries": len(fw.bans())}))
"""
        r = run_in(ns, sys.executable, "-c", script, check=False, timeout=120)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        print(f"\nban: raw netlink {out['raw_us']:.1f} us, pyroute2 {out['pyroute2_us']:.1f} us per add")
        assert out["entries"] == 4000
