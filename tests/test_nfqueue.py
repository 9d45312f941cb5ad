import json
import struct
import sys

import pytest

from inspector.sources.nfqueue import FAIL_OPEN, build_config_flags, parse_queue_stats
from tests.netns import namespace, run_in


def test_config_message_layout():
    msg = build_config_flags(7, FAIL_OPEN, FAIL_OPEN, seq=99)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), (3 << 8) | 2, 0x5, 99, 0)
    assert msg[16:20] == bytes([0, 0, 0, 7])  # AF_UNSPEC, version 0, queue 7 big-endian
    assert msg[20:32] == struct.pack("=HH", 8, 5) + struct.pack(">I", 1) + struct.pack("=HH", 8, 4)


def test_parse_proc_stats():
    text = "    3  12345     5 2 65531    10     2     300  1\n"
    [s] = parse_queue_stats(text)
    assert (s.queue, s.portid, s.waiting, s.queue_dropped, s.user_dropped, s.id_sequence) == (3, 12345, 5, 10, 2, 300)


SCRIPT = r"""
import json, socket
from netfilterqueue import NetfilterQueue
from inspector.sources.nfqueue import FAIL_OPEN, set_queue_flags, queue_stats
nfq = NetfilterQueue()
nfq.bind(5, lambda p: p.accept(), max_len=16)
out = {"own": set_queue_flags(nfq.get_fd(), 5, FAIL_OPEN)}
out["clear"] = set_queue_flags(nfq.get_fd(), 5, 0, mask=FAIL_OPEN)
out["unbound"] = set_queue_flags(nfq.get_fd(), 6, FAIL_OPEN)
other = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
other.bind((0, 0))
out["other"] = set_queue_flags(other.fileno(), 5, FAIL_OPEN)
out["stats"] = [s.queue for s in queue_stats()]
nfq.unbind()
print(json.dumps(out))
"""


def test_fail_open_flag_on_a_real_queue():
    pytest.importorskip("netfilterqueue", reason="needs NetfilterQueue (the 'live' extra)")
    with namespace() as ns:
        r = run_in(ns, sys.executable, "-c", SCRIPT, check=False)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out == {"own": 0, "clear": 0, "unbound": 19, "other": 1, "stats": [5]}
