import json
import struct
import subprocess
import sys

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import CookedLinux, Dot1Q, Ether
from scapy.utils import PcapNgWriter, wrpcap

from inspector.sources.pcap import CaptureError, CaptureReader

IP_PKT = IP(src="198.51.100.7", dst="192.0.2.25") / TCP(sport=4000, dport=25, flags="S")


def read_all(path):
    with open(path, "rb") as f:
        reader = CaptureReader(f, str(path))
        return list(reader), reader


@pytest.mark.parametrize("frame", [
    Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP_PKT,
    Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / Dot1Q(vlan=5) / IP_PKT,
    CookedLinux() / IP_PKT,
])
def test_link_types(tmp_path, frame):
    frame.time = 1700000000.25
    wrpcap(str(tmp_path / "a.pcap"), [frame])
    [(ts, data)], _ = read_all(tmp_path / "a.pcap")
    assert data == bytes(IP_PKT) and ts == pytest.approx(1700000000.25)


def test_raw_ip_and_non_ip(tmp_path):
    from scapy.layers.l2 import ARP

    wrpcap(str(tmp_path / "r.pcap"), [IP_PKT], linktype=101)
    [(_, data)], _ = read_all(tmp_path / "r.pcap")
    assert data == bytes(IP_PKT)
    wrpcap(str(tmp_path / "arp.pcap"), [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / ARP()])
    packets, reader = read_all(tmp_path / "arp.pcap")
    assert packets == [] and reader.non_ip == 1


def test_pcapng(tmp_path):
    frame = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP_PKT
    frame.time = 1700000001.5
    w = PcapNgWriter(str(tmp_path / "a.pcapng"))
    w.write(frame)
    w.write(frame)
    w.close()
    packets, reader = read_all(tmp_path / "a.pcapng")
    assert reader.format == "pcapng" and len(packets) == 2
    assert packets[0][1] == bytes(IP_PKT) and packets[0][0] == pytest.approx(1700000001.5)


def test_truncated_capture_yields_what_was_read_then_errors(tmp_path):
    wrpcap(str(tmp_path / "t.pcap"), [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP_PKT] * 3)
    data = (tmp_path / "t.pcap").read_bytes()
    (tmp_path / "t.pcap").write_bytes(data[:-10])
    got = []
    with open(tmp_path / "t.pcap", "rb") as f, pytest.raises(CaptureError, match="truncated packet .* after 2 packets"):
        for item in CaptureReader(f, "t.pcap"):
            got.append(item)
    assert len(got) == 2


def test_not_a_capture(tmp_path):
    (tmp_path / "x.pcap").write_bytes(b"hello world, not a capture")
    with pytest.raises(CaptureError, match="not a pcap or pcapng file"):
        read_all(tmp_path / "x.pcap")


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "inspector", *args], capture_output=True, text=True, cwd=cwd)


def test_check_prints_summary():
    r = cli("check")
    assert r.returncode == 0, r.stderr
    assert "blocked domains:" in r.stdout and r.stdout.strip().endswith("OK")


def test_check_reports_rule_errors(tmp_path):
    (tmp_path / "bad.txt").write_text("ok.example\nfoo..bar\n")
    r = cli("check", "--rules", str(tmp_path / "bad.txt"))
    assert r.returncode == 1
    assert r.stderr.strip() == f"inspector: error: {tmp_path / 'bad.txt'}:2: invalid domain 'foo..bar'"


def test_check_reports_config_errors(tmp_path):
    (tmp_path / "c.toml").write_text("[rate]\nlimit = -1\n")
    r = cli("check", "--config", str(tmp_path / "c.toml"))
    assert r.returncode == 1 and f"{tmp_path / 'c.toml'}:2: rate.limit: must be between" in r.stderr


def test_replay_outputs_json_lines_and_summary(tmp_path):
    from tests.conftest import Conn

    (tmp_path / "r.txt").write_text("blocked.test\n")
    c = Conn()
    packets = [c.syn(), c.send(b"MAIL FROM:<b@ok.test>\r\nRCPT TO:<a@blocked.test>\r\n"), Conn(sport=1).syn()]
    wrpcap(str(tmp_path / "c.pcap"), [IP(p) for p in packets], linktype=101)
    r = cli("replay", str(tmp_path / "c.pcap"), "--rules", str(tmp_path / "r.txt"))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    first, second, summary = lines
    assert {k: first[k] for k in ("verdict", "reason", "src", "dst", "dport", "rule", "match", "ban")} == {
        "verdict": "reset", "reason": "domain", "src": "198.51.100.7", "dst": "192.0.2.25", "dport": 25,
        "rule": "blocked.test", "match": "<a@blocked.test>", "ban": 86400}
    assert isinstance(first["time"], float) and first["sport"] == 40000
    assert (second["verdict"], second["reason"]) == ("drop", "banned")
    s = summary["summary"]
    assert s["packets"] == 3 and s["flows"] == 1 and s["malformed"] == 0
    assert s["verdicts"] == {"banned": 1, "domain": 1} and s["packets_per_s"] > 0


def test_replay_truncated_capture_exits_non_zero_after_report(tmp_path):
    wrpcap(str(tmp_path / "t.pcap"), [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP_PKT] * 3)
    data = (tmp_path / "t.pcap").read_bytes()
    (tmp_path / "t.pcap").write_bytes(data[:-5])
    r = cli("replay", str(tmp_path / "t.pcap"))
    assert r.returncode == 2
    summary = json.loads(r.stdout.splitlines()[-1])["summary"]
    assert summary["packets"] == 2 and "truncated" in summary["error"]
    assert "inspector: error:" in r.stderr and "truncated packet" in r.stderr


def test_replay_missing_file(tmp_path):
    r = cli("replay", str(tmp_path / "none.pcap"))
    assert r.returncode == 2 and "cannot read" in r.stderr


def test_raw_struct_pcap_big_endian(tmp_path):
    raw = bytes(IP_PKT)
    hdr = struct.pack(">IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    rec = struct.pack(">IIII", 5, 500000, len(raw), len(raw)) + raw
    (tmp_path / "be.pcap").write_bytes(hdr + rec)
    [(ts, data)], _ = read_all(tmp_path / "be.pcap")
    assert ts == 5.5 and data == raw


def test_replay_into_a_closed_pipe_is_quiet(tmp_path):
    from tests.conftest import Conn

    (tmp_path / "r.txt").write_text("blocked.test\n")
    packets = []
    for i in range(3000):
        c = Conn(sport=1000 + i)
        packets += [c.syn(), c.send(b"RCPT TO:<a@blocked.test>\r\n")]
    wrpcap(str(tmp_path / "c.pcap"), [IP(p) for p in packets], linktype=101)
    command = f"{sys.executable} -m inspector replay {tmp_path / 'c.pcap'} --rules {tmp_path / 'r.txt'} | head -1"
    r = subprocess.run(command,
                       shell=True, capture_output=True, text=True, check=False)
    assert r.stdout.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
