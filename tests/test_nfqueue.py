import json
import struct
import sys

import pytest

from inspector.sources.nfqueue import FAIL_OPEN, build_config_flags, build_copy_range, parse_queue_stats
from tests.netns import namespace, run_in


def test_config_message_layout():
    msg = build_config_flags(7, FAIL_OPEN, FAIL_OPEN, seq=99)
    length, kind, flags, seq, pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq, pid) == (len(msg), (3 << 8) | 2, 0x5, 99, 0)
    assert msg[16:20] == bytes([0, 0, 0, 7])  # AF_UNSPEC, version 0, queue 7 big-endian
    assert msg[20:32] == struct.pack("=HH", 8, 5) + struct.pack(">I", 1) + struct.pack("=HH", 8, 4)


def test_copy_range_message_layout():
    msg = build_copy_range(3, 0xFFFF, seq=5)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), (3 << 8) | 2, 0x5, 5) and length % 4 == 0
    assert msg[16:20] == bytes([0, 0, 0, 3])
    # NFQA_CFG_PARAMS (2): packed struct nfqnl_msg_config_params, 5 bytes, padded to 8
    assert msg[20:32] == struct.pack("=HH", 9, 2) + struct.pack(">IB", 0xFFFF, 2) + b"\0" * 3


WHOLE = r"""
import json, socket, subprocess, time
from netfilterqueue import NetfilterQueue
from inspector.sources.nfqueue import WholeMessages, set_copy_range
subprocess.run(["ip", "link", "set", "lo", "mtu", "65536"], check=True)
subprocess.run(["iptables", "-A", "INPUT", "-p", "udp", "--dport", "9998", "-j", "NFQUEUE", "--queue-num", "4"],
               check=True)
seen = []
def keep(p):
    seen.append(len(p.get_payload()))
    p.accept()
nfq = NetfilterQueue()
nfq.bind(4, keep)
answer = set_copy_range(nfq.get_fd(), 4)
reader = WholeMessages(nfq.get_fd())
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 9998))
rx.settimeout(2)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for size in (100, 9000, 60000):
    tx.sendto(b"x" * size, ("127.0.0.1", 9998))
deadline = time.monotonic() + 5
while len(seen) < 3 and time.monotonic() < deadline:
    nfq.run_socket(reader)
    time.sleep(0.01)
got = sorted(len(rx.recv(65536)) for _ in range(len(seen)))
print(json.dumps({"answer": answer, "seen": seen, "delivered": got}))
"""


def test_whole_packets_reach_userspace():
    """Past the binding's 4016-byte copy cap: a 60,000-byte datagram arrives whole."""
    pytest.importorskip("netfilterqueue", reason="needs NetfilterQueue (the 'live' extra)")
    with namespace() as ns:
        r = run_in(ns, sys.executable, "-c", WHOLE, check=False)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out == {"answer": 0, "seen": [128, 9028, 60028], "delivered": [100, 9000, 60000]}


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


OVERLOAD = r"""
import json, socket, subprocess, sys, threading, time
from netfilterqueue import NetfilterQueue
from inspector.sources.nfqueue import FAIL_OPEN, set_queue_flags, queue_stats
fail_open = sys.argv[1] == "on"
subprocess.run(["iptables", "-A", "INPUT", "-p", "udp", "--dport", "9999", "-j", "NFQUEUE", "--queue-num", "7"],
               check=True)
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 9999))
rx.settimeout(0.5)
def slow(p):
    time.sleep(0.02)  # an overloaded inspector: 50 packets/s
    p.accept()
nfq = NetfilterQueue()
nfq.bind(7, slow, max_len=4)
if fail_open:
    assert set_queue_flags(nfq.get_fd(), 7, FAIL_OPEN) == 0
t = threading.Thread(target=lambda: nfq.run(), daemon=True)
t.start()
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(200):
    tx.sendto(b"%d" % i, ("127.0.0.1", 9999))
got = 0
deadline = time.monotonic() + 6
while time.monotonic() < deadline:
    try:
        rx.recv(64)
        got += 1
    except socket.timeout:
        if not t.is_alive() or got >= 200:
            break
[q] = [s for s in queue_stats() if s.queue == 7]
print(json.dumps({"received": got, "queue_dropped": q.queue_dropped}))
"""


@pytest.mark.parametrize("mode", ["on", "off"])
def test_overloaded_queue_fails_open_only_when_configured(mode):
    pytest.importorskip("netfilterqueue", reason="needs NetfilterQueue (the 'live' extra)")
    with namespace() as ns:
        r = run_in(ns, sys.executable, "-c", OVERLOAD, mode, check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        if mode == "on":  # the kernel lets what the queue cannot hold through
            assert out["received"] >= 190 and out["queue_dropped"] == 0, out
        else:  # without the flag a full queue drops
            assert out["received"] < 100 and out["queue_dropped"] > 100, out


def test_whole_messages_end_a_burst_so_the_loop_gets_its_turn():
    """run_socket() stops at EAGAIN; under a flood the socket never empties, so the reader
    says EAGAIN after ``burst`` messages, and reads on at the next call."""
    import errno
    import socket

    from inspector.sources.nfqueue import WholeMessages

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader = WholeMessages(b.fileno(), burst=3)
    for i in range(5):
        a.send(b"m%d" % i)
    got, stops = [], 0
    for _ in range(8):
        try:
            got.append(reader.recv(4096))
        except BlockingIOError as e:
            assert e.errno == errno.EAGAIN
            stops += 1
    # 3 messages, a burst stop, 2 messages, then the socket is empty (a real EAGAIN, twice)
    assert got == [b"m0", b"m1", b"m2", b"m3", b"m4"] and stops == 3
    a.send(b"big" * 20000)
    assert len(reader.recv(4096)) == 60000  # far past run_socket's own 4096
    reader.close()
    a.close()
    b.close()
