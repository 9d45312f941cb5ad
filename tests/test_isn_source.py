"""Why the SYN still reaches userspace (issue 16): only the SYN gives the stream's start.

The kernel rules queue, besides the SYN, only packets of connections conntrack has seen
complete their handshake (ASSURED).  Taking the stream's start from the first such packet
instead of the SYN would save one queued packet per connection, but Linux completes a handshake
with any in-window segment (``tcp_check_req`` -> ``tcp_in_window`` in
``net/ipv4/tcp_minisocks.c``), also one that carries data after a gap: the receiver then holds it
out of order and delivers the bytes before it once they come.  An engine that took that
segment's sequence number as the start would never see the bytes before it.  This test shows it
on the running kernel, in a namespace of its own.
"""

from __future__ import annotations

import json
import sys

import pytest

from tests.netns import namespace, run_in

SCRIPT = r"""
import json, socket, subprocess, threading, time
from scapy.all import IP, TCP, Raw, conf, L3RawSocket, send
conf.L3socket = L3RawSocket
# the client side has no socket: keep its kernel from resetting the server's SYN-ACK
subprocess.run(["iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", "40000", "--tcp-flags", "RST", "RST",
                "-j", "DROP"], check=True)
srv = socket.socket()
srv.bind(("127.0.0.1", 2525))
srv.listen(5)
srv.settimeout(5)
got = {}
def serve():
    try:
        c, _ = srv.accept()
        c.settimeout(3)
        data = b""
        while len(data) < 26:
            d = c.recv(100)
            if not d:
                break
            data += d
        got["data"] = data.decode()
    except OSError as e:
        got["error"] = repr(e)
t = threading.Thread(target=serve)
t.start()
cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
cap.bind(("lo", 0))
cap.settimeout(2)
ip = IP(src="127.0.0.1", dst="127.0.0.1")
isn = 1000
send(ip / TCP(sport=40000, dport=2525, flags="S", seq=isn, window=65535), verbose=0)
synack = None
deadline = time.time() + 3
while synack is None and time.time() < deadline:
    p = IP(cap.recv(65535)[14:])
    if p.haslayer(TCP) and p[TCP].sport == 2525 and p[TCP].flags == "SA":
        synack = p
first, second = b"RCPT TO:<x@blo", b"cked.test>\r\n"
ack = synack[TCP].seq + 1
# the handshake's last packet carries the second half, after a gap of len(first) bytes
send(ip / TCP(sport=40000, dport=2525, flags="PA", seq=isn + 1 + len(first), ack=ack, window=65535) / Raw(second),
     verbose=0)
time.sleep(0.2)
send(ip / TCP(sport=40000, dport=2525, flags="PA", seq=isn + 1, ack=ack, window=65535) / Raw(first), verbose=0)
t.join(8)
print(json.dumps(got))
"""


def test_a_handshake_completed_by_data_after_a_gap_still_delivers_the_bytes_before_it():
    pytest.importorskip("scapy", reason="needs scapy")
    with namespace() as ns:
        r = run_in(ns, sys.executable, "-c", SCRIPT, check=False, timeout=60)
        assert r.returncode == 0, r.stderr
        # the receiver has the whole line: its first 14 bytes came after the packet that
        # completed the handshake, below that packet's sequence number
        assert json.loads(r.stdout.strip().splitlines()[-1]) == {"data": "RCPT TO:<x@blocked.test>\r\n"}
