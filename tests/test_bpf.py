"""The 'SYN, FIN, RST or payload' BPF programs: interpreted here, and the kernel agrees."""

import json
import sys

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

from inspector.bpf import bytecode, program, run
from tests.netns import namespace, run_in

TS = [("Timestamp", (1, 2)), ("NOP", None), ("NOP", None)]


def v4(flags="A", payload=b"", options=()):
    return bytes(IP(src="198.51.100.7", dst="192.0.2.99") / TCP(dport=25, flags=flags, options=list(options)) / payload)


def v6(flags="A", payload=b"", ext=False):
    ip = IPv6(src="2001:db8:1::7", dst="2001:db8::99")
    tcp = TCP(dport=25, flags=flags) / payload
    return bytes(ip / IPv6ExtHdrDestOpt() / tcp if ext else ip / tcp)


CASES = [
    # (name, packet, should be queued)
    ("v4 SYN", v4("S"), True),
    ("v4 SYN with options", v4("S", options=[("MSS", 1460)] + TS), True),
    ("v4 pure ACK", v4("A"), False),
    ("v4 pure ACK with timestamps", v4("A", options=TS), False),
    ("v4 bare FIN", v4("FA"), True),
    ("v4 bare RST", v4("R"), True),
    ("v4 RST+ACK", v4("RA"), True),
    ("v4 one byte, no options", v4("PA", b"x"), True),
    ("v4 one byte with timestamps", v4("PA", b"x", TS), True),
    ("v4 data", v4("PA", b"RCPT TO:<a@b.test>\r\n", TS), True),
    ("v4 FIN with data", v4("FA", b"QUIT\r\n"), True),
    ("v4 fragment", bytes(IP(src="198.51.100.7", dst="192.0.2.99", flags="MF") / TCP(flags="A")), True),
    ("v6 SYN", v6("S"), True),
    ("v6 pure ACK", v6("A"), False),
    ("v6 bare FIN", v6("FA"), True),
    ("v6 one byte", v6("PA", b"x"), True),
    ("v6 extension header", v6("A", ext=True), True),
]


@pytest.mark.parametrize("name, packet, queued", CASES, ids=[c[0] for c in CASES])
def test_program_decides(name, packet, queued):
    family = 6 if packet[0] >> 4 == 6 else 4
    assert bool(run(program(family), packet)) == queued


def test_bytecode_format():
    code = bytecode(4)
    count, *insns = code.split(",")
    assert int(count) == len(insns) == len(program(4))
    assert all(len(i.split()) == 4 for i in insns)


KERNEL = r"""
import json, socket, subprocess, sys
cases = json.loads(sys.stdin.read())
out = {}
for name, hexpkt, family in cases:
    ipt = "iptables" if family == 4 else "ip6tables"
    subprocess.run([ipt, "-F", "OUTPUT"], check=True)
    subprocess.run([ipt, "-A", "OUTPUT", "-m", "bpf", "--bytecode", sys.argv[family == 6 and 2 or 1]], check=True)
    pkt = bytes.fromhex(hexpkt)
    if family == 4:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.sendto(pkt, ("192.0.2.99", 0))
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
        s.sendto(pkt, ("2001:db8::99", 0))
    counters = subprocess.run([ipt, "-L", "OUTPUT", "-v", "-n", "-x"], capture_output=True, text=True).stdout
    out[name] = int(counters.splitlines()[2].split()[0])
print(json.dumps(out))
"""


def test_kernel_agrees():
    with namespace() as ns:
        run_in(ns, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        run_in(ns, "ip", "link", "set", "d0", "up")
        run_in(ns, "ip", "link", "set", "d1", "up")
        run_in(ns, "ip", "addr", "add", "192.0.2.1/24", "dev", "d0")
        run_in(ns, "ip", "addr", "add", "2001:db8::1/64", "dev", "d0", "nodad")
        cases = [(name, pkt.hex(), 6 if pkt[0] >> 4 == 6 else 4) for name, pkt, _ in CASES
                 if "fragment" not in name]
        import subprocess
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", KERNEL, bytecode(4), bytecode(6)],
                           input=json.dumps(cases), capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        expected = {name: int(queued) for name, _, queued in CASES if "fragment" not in name}
        assert got == expected


def test_setup_script_embeds_these_programs():
    from pathlib import Path

    script = (Path(__file__).resolve().parent.parent / "scripts" / "setup-nfqueue.sh").read_text()
    assert f'BPF4="{bytecode(4)}"' in script and f'BPF6="{bytecode(6)}"' in script


# ---- "the first payload byte is '.'" (the SMTP in-body filter, issue 12 kind 5) ----------------------------

DOT_CASES = [
    ("v4 dot first", v4("PA", b".\r\nMAIL FROM:<a@b>\r\n"), True),
    ("v4 dot first with timestamps", v4("PA", b".", TS), True),
    ("v4 dot-stuffed line", v4("PA", b"..x\r\n"), True),
    ("v4 text", v4("PA", b"hello.\r\n"), False),
    ("v4 LF dot inside (the string match's job)", v4("PA", b"x\r\n.\r\n"), False),
    ("v4 pure ACK", v4("A"), False),
    ("v4 pure ACK with timestamps", v4("A", options=TS), False),
    ("v4 fragment", bytes(IP(src="198.51.100.7", dst="192.0.2.99", flags="MF") / TCP(flags="A")), True),
    ("v6 dot first", v6("PA", b".\r\n"), True),
    ("v6 text", v6("PA", b"x.\r\n"), False),
    ("v6 pure ACK", v6("A"), False),
    ("v6 extension header", v6("PA", b"x", ext=True), True),
]


@pytest.mark.parametrize("name, packet, matched", DOT_CASES, ids=[c[0] for c in DOT_CASES])
def test_dot_first_program(name, packet, matched):
    from inspector.bpf import dot_first

    family = 6 if packet[0] >> 4 == 6 else 4
    assert bool(run(dot_first(family), packet)) == matched


def test_kernel_agrees_on_dot_first():
    from inspector.bpf import dot_first

    with namespace() as ns:
        run_in(ns, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
        run_in(ns, "ip", "link", "set", "d0", "up")
        run_in(ns, "ip", "link", "set", "d1", "up")
        run_in(ns, "ip", "addr", "add", "192.0.2.1/24", "dev", "d0")
        run_in(ns, "ip", "addr", "add", "2001:db8::1/64", "dev", "d0", "nodad")
        cases = [(name, pkt.hex(), 6 if pkt[0] >> 4 == 6 else 4) for name, pkt, _ in DOT_CASES
                 if "fragment" not in name]
        import subprocess
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", KERNEL,
                            bytecode(4, dot_first(4)), bytecode(6, dot_first(6))],
                           input=json.dumps(cases), capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout)
        expected = {name: int(m) for name, _, m in DOT_CASES if "fragment" not in name}
        assert got == expected


def test_setup_script_embeds_the_dot_programs():
    from pathlib import Path

    from inspector.bpf import dot_first

    script = (Path(__file__).resolve().parent.parent / "scripts" / "setup-nfqueue.sh").read_text()
    assert f'DOT4="{bytecode(4, dot_first(4))}"' in script and f'DOT6="{bytecode(6, dot_first(6))}"' in script
