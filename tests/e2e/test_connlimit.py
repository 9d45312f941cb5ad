"""``[connlimit]`` end to end: real idle connections from the client namespace, conntrack, ipset bans."""

from __future__ import annotations

import json
import subprocess

import pytest

from .bed import CLIENTS, PY, SERVER, Bed, ban_network, wait_for

pytestmark = pytest.mark.e2e

HOLD = r"""
import json, socket, sys, time
srcs, dst, n, hold = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in dst else socket.AF_INET
socks, failed = [], 0
for i in range(n):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.bind((srcs[i % len(srcs)], 0))
        s.connect((dst, 25))
        socks.append(s)
    except OSError:
        failed += 1
        s.close()
        if failed >= 3:  # banned (or the server's backlog overflowed): stop knocking
            break
print(json.dumps({"connected": len(socks), "failed": failed}), flush=True)
time.sleep(min(hold, 60))
"""

CONFIG = """
[rate]
rules = [{ports = [25], limit = 100000, window = 60}]
[connlimit]
limit = 150
ban = 600
interval = 1
"""


class Holder:
    """Idle connections held open by a process in the client namespace (killed by PID at the end)."""

    def __init__(self, bed: Bed, srcs: list[str], n: int, hold: float = 30) -> None:
        v = 6 if ":" in srcs[0] else 4
        self.proc = subprocess.Popen(["ip", "netns", "exec", bed.client, PY, "-c", HOLD, json.dumps(srcs), SERVER[v],
                                      str(n), str(hold)], stdout=subprocess.PIPE, text=True)
        bed.stack.callback(self.stop)
        assert self.proc.stdout is not None
        self.result = json.loads(self.proc.stdout.readline() or "{}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.mark.parametrize("v", [4, 6], ids=["ipv4", "ipv6"])
def test_200_idle_connections_from_one_source_are_banned_fewer_are_not(bed: Bed, v: int) -> None:
    bed.write_config(extra=CONFIG)
    bed.start_inspector()
    a, b, w = CLIENTS[v]["a"], CLIENTS[v]["b"], CLIENTS[v]["w"]
    if v == 6:
        # two addresses of one /64, 100 connections each: the /64 is the source that counts
        second = a.rsplit(":", 1)[0] + ":11"
        bed.add_client_addresses([second])
        heavy = Holder(bed, [a, second], 200)
    else:
        heavy = Holder(bed, [a], 200)
    light = Holder(bed, [b], 100)
    friend = Holder(bed, [w], 200)  # whitelisted: never counted
    # the ban may come while the heavy source is still connecting (a read every second): its last
    # connections then time out, which is the point
    assert heavy.result["connected"] > 150 and light.result["connected"] == 100, (heavy.result, light.result)
    assert friend.result["connected"] > 150, friend.result
    left = wait_for(lambda: bed.banned(a), 8, interval=0.2, what=f"{ban_network(a)} banned by connlimit")
    assert 600 - 30 <= left <= 600
    ban = bed.wait_event(event="ban", network=ban_network(a))
    assert ban["reason"] == "connlimit" and ban["dport"] == 25, ban
    assert ban["rule"].endswith("connections to port 25 (limit 150)"), ban
    assert int(ban["rule"].split()[0]) > 150
    # two more reads of the table: the others stay free, the banned one is not banned again
    polls = json.loads(bed.cli("status", "--json").stdout)["connlimit"]["polls"]
    wait_for(lambda: json.loads(bed.cli("status", "--json").stdout)["connlimit"]["polls"] >= polls + 2, 6,
             interval=0.3, what="two more conntrack reads")
    assert bed.banned(b) is None and bed.banned(w) is None
    assert len(bed.events(event="ban", reason="connlimit")) == 1
    status = json.loads(bed.cli("status", "--json").stdout)["connlimit"]
    assert status["bans"] == 1 and status["errors"] == 0, status
    assert "connlimit: 1 bans" in bed.cli("status").stdout
    # the kernel drops the banned source from now on
    assert bed.connect(a, 25, timeout=1)["error"] == "timeout"
