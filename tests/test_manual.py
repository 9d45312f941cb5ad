"""Manual ban targets: addresses, networks and ranges as the fewest networks; durations."""

from __future__ import annotations

import ipaddress

import pytest

from inspector.cli import build_parser
from inspector.manual import TargetError, ban_form, parse_duration, parse_target


@pytest.mark.parametrize("target, networks", [
    ("198.51.100.7", ["198.51.100.7"]),
    ("198.51.100.7/24", ["198.51.100.0/24"]),
    ("198.51.100.0-198.51.100.255", ["198.51.100.0/24"]),
    ("198.51.100.10-198.51.100.20", ["198.51.100.10/31", "198.51.100.12/30", "198.51.100.16/30",
                                     "198.51.100.20"]),
    ("198.51.100.9 - 198.51.100.9", ["198.51.100.9"]),
    ("2001:db8::5", ["2001:db8::/64"]),  # an IPv6 address: its /64, as every IPv6 ban
    ("2001:db8::/48", ["2001:db8::/48"]),
    ("2001:db8::1-2001:db8::3", ["2001:db8::1", "2001:db8::2/127"]),
])
def test_targets_become_the_fewest_networks(target: str, networks: list[str]) -> None:
    assert parse_target(target) == networks


def test_a_range_is_covered_exactly() -> None:
    first, last = ipaddress.ip_address("192.0.2.3"), ipaddress.ip_address("198.18.77.200")
    nets = [ipaddress.ip_network(n) for n in parse_target(f"{first}-{last}")]
    assert nets[0].network_address == first and nets[-1].broadcast_address == last
    assert sum(n.num_addresses for n in nets) == int(last) - int(first) + 1
    assert len(nets) <= 62  # at most 2 * (32 - 1) networks


@pytest.mark.parametrize("bad", ["", "example.org", "198.51.100.20-198.51.100.10", "198.51.100.1-2001:db8::1",
                                 "198.51.100.1-", "300.1.1.1", "198.51.100.0/33"])
def test_bad_targets_say_why(bad: str) -> None:
    with pytest.raises(TargetError):
        parse_target(bad)


def test_durations() -> None:
    assert [parse_duration(t) for t in ("3600", "90s", "30m", "12h", "1d", "2w")] == \
        [3600, 90, 1800, 43200, 86400, 1209600]
    for bad in ("0", "1y", "-5", "", "1.5h"):
        with pytest.raises(TargetError):
            parse_duration(bad)


def test_ban_form_of_an_unban() -> None:
    assert ban_form("198.51.100.7") == "198.51.100.7"
    assert ban_form("198.51.100.7", ipv4_prefix=24) == "198.51.100.0/24"
    assert ban_form("198.51.100.16/28") == "198.51.100.16/28"
    assert ban_form("198.51.100.16/32") == "198.51.100.16"
    assert ban_form("2001:db8::5") == "2001:db8::/64"


def test_cli_accepts_ban_and_unban_targets() -> None:
    args = build_parser().parse_args(["ban", "198.51.100.10-198.51.100.20", "--time", "2h", "--reason", "spam run"])
    assert (args.target, args.time, args.reason) == ("198.51.100.10-198.51.100.20", "2h", "spam run")
    assert build_parser().parse_args(["unban", "2001:db8::/48"]).address == "2001:db8::/48"
