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


def test_batch_accept_message_layout():
    from inspector.sources.nfqueue import build_batch_accept

    msg = build_batch_accept(5, 0xDEADBEEF)
    length, kind, flags, seq, _pid = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), (3 << 8) | 3, 0x1, 0)  # NFQNL_MSG_VERDICT_BATCH, request
    assert msg[16:20] == bytes([0, 0, 0, 5])
    # NFQA_VERDICT_HDR (2): NF_ACCEPT, then the id, both big-endian
    assert msg[20:32] == struct.pack("=HH", 12, 2) + struct.pack(">II", 1, 0xDEADBEEF)


class _Binding:
    """The NetfilterQueue binding's part NfQueue.read uses: run_socket hands the packets over."""

    def __init__(self, handler, packets):
        self.handler, self.packets = handler, packets

    def run_socket(self, _messages):
        for p in self.packets:
            self.handler(p)


class _Out:
    def __init__(self, fail=False):
        self.sent, self.fail = [], fail

    def send(self, data):
        if self.fail:
            raise OSError(105, "No buffer space available")
        self.sent.append(bytes(data))

    def close(self):
        pass


def _packet(i):
    from inspector.testing import FakePacket

    p = FakePacket(b"")
    p.id = i
    return p


@pytest.mark.parametrize("fail", [False, True])
def test_accepts_of_a_burst_go_in_one_batch_verdict(fail):
    """The accepts noted during a burst get one batch verdict up to the last id when the burst
    ends; a single one, or a batch that cannot be sent, gets one verdict per packet."""
    from inspector.sources.nfqueue import NfQueue, build_batch_accept

    q = NfQueue(3)
    q._out = _Out(fail)
    packets = [_packet(i) for i in (10, 11, 12)]
    q._nfq = _Binding(q.accept_later, packets)
    q.read()
    if fail:
        assert [p.verdict for p in packets] == ["accept"] * 3 and q.batches == 0
    else:
        assert q._out.sent == [build_batch_accept(3, 12)] and q.batches == 1 and q.batched == 3
        assert [p.verdict for p in packets] == [None] * 3  # the kernel accepted them by the batch
    one = _packet(13)
    q._nfq = _Binding(q.accept_later, [one])
    q.read()
    assert one.verdict == "accept" and len(q._out.sent) == (0 if fail else 1)


def test_noted_accepts_are_given_even_when_the_handler_raises():
    from inspector.sources.nfqueue import NfQueue

    q = NfQueue(3)
    q._out = _Out()
    first = _packet(1)

    def handler(p):
        if p is first:
            q.accept_later(p)
        else:
            raise RuntimeError("a bug")

    q._nfq = _Binding(handler, [first, _packet(2)])
    with pytest.raises(RuntimeError):
        q.read()
    assert first.verdict == "accept"



BATCH = r"""
import json, socket, subprocess, time
from inspector.sources.nfqueue import NfQueue, queue_stats
subprocess.run(["iptables", "-A", "INPUT", "-p", "udp", "--dport", "9997", "-j", "NFQUEUE", "--queue-num", "5"],
               check=True)
q = NfQueue(5)
seen = []
def handle(p):
    seen.append(p.id)
    if len(seen) % 10 == 0:
        p.drop()  # an individual verdict in the middle of a burst
    else:
        q.accept_later(p)
q.bind(handle)
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
rx.bind(("127.0.0.1", 9997))
rx.settimeout(0.5)
tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(100):
    tx.sendto(b"%d" % i, ("127.0.0.1", 9997))
deadline = time.monotonic() + 5
while len(seen) < 100 and time.monotonic() < deadline:
    q.read()
    time.sleep(0.005)
got = set()
while True:
    try:
        got.add(int(rx.recv(64)))
    except socket.timeout:
        break
[s] = [s for s in queue_stats() if s.queue == 5]
print(json.dumps({"seen": len(seen), "delivered": sorted(got), "waiting": s.waiting, "batches": q.batches,
                  "batched": q.batched}))
q.close()
"""


def test_batch_accepts_on_a_real_queue():
    """Accepts batched per burst reach the receiver; packets dropped one by one in between stay
    dropped; nothing is left waiting in the queue."""
    pytest.importorskip("netfilterqueue", reason="needs NetfilterQueue (the 'live' extra)")
    with namespace() as ns:
        r = run_in(ns, sys.executable, "-c", BATCH, check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["seen"] == 100 and out["waiting"] == 0, out
        assert out["delivered"] == [i for i in range(100) if (i + 1) % 10], out
        assert out["batches"] >= 1 and out["batched"] > 0, out
