"""``[whitelist] files`` and ``hosts`` in the running service: the kernel whitelist sets and the bans follow.

The host name resolves through the inspector's own ``/etc/hosts``: ``ip netns exec``
bind-mounts ``/etc/netns/<namespace>/hosts`` over it for the processes it starts
in the server namespace (removed after the test).
"""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from .bed import BLOCKED, CLIENTS, Bed, wait_for
from .test_inspector import assert_reset_both_ways, wait_banned

pytestmark = pytest.mark.e2e

HOST = "friend.example.test"


def _members(bed: Bed, name: str) -> set[str]:
    return set(bed.ipset(name))


def test_file_and_host_entries_reach_the_kernel_sets_and_follow_changes(bed: Bed, tmp_path: Path) -> None:
    a, b, c = CLIENTS[4]["a"], CLIENTS[4]["b"], CLIENTS[4]["c"]
    b6 = CLIENTS[6]["b"]
    etc = Path("/etc/netns") / bed.server
    etc.mkdir(parents=True)
    bed.stack.callback(shutil.rmtree, etc, True)
    hosts = etc / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n{b} {HOST}\n{b6} {HOST}\n")
    wl = tmp_path / "friends.txt"
    wl.write_text(f"# the office\n{a}\n")
    bed.write_config()
    text = bed.config_file.read_text()
    bed.config_file.write_text(text.replace("[whitelist]\n", f'[whitelist]\nfiles = ["{wl}"]\nhosts = ["{HOST}"]\n'))
    assert bed.cli("check").returncode == 0
    bed.start_inspector()
    assert {a, b} <= _members(bed, "inspector-white4")
    assert f"{b6}" in _members(bed, "inspector-white6")
    # whitelisted in the kernel: a blocked recipient from a goes through uninspected
    assert bed.smtp(a, [f"x@{BLOCKED}"])["delivered"]
    assert bed.banned(a) is None

    # the file changes (and the host moves): SIGHUP re-reads and re-resolves at once
    wl.write_text("# nobody\n")
    hosts.write_text(f"127.0.0.1 localhost\n{c} {HOST}\n")
    assert bed.inspector is not None
    bed.inspector.send(signal.SIGHUP)
    wait_for(lambda: c in _members(bed, "inspector-white4") and a not in _members(bed, "inspector-white4"), 5,
             what="the whitelist sets to follow the file and the host")
    members = _members(bed, "inspector-white4")
    assert b not in members and "203.0.113.0/24" in members  # the setup script's own entry stays
    assert b6 not in _members(bed, "inspector-white6")
    r = bed.smtp(a, [f"x@{BLOCKED}"], timeout=3)
    assert_reset_both_ways(bed, r)
    wait_banned(bed, a)

    # the name stops resolving: the last good answer stays, and the failure is reported
    hosts.write_text("127.0.0.1 localhost\n")
    bed.inspector.send(signal.SIGHUP)
    failed = bed.wait_event(event="whitelist_source_failed", kind="host")
    assert HOST in failed["error"] and "keeping 1 address" in failed["error"], failed
    assert c in _members(bed, "inspector-white4")
