"""Forged packets must never cause a ban, a state change or an eviction (issue 11, items 1-3),
end to end: ``setup-nfqueue.sh install`` + ``inspector run`` in namespaces, forged frames
from the client namespace on a packet socket (``forge.py``), real sessions from the
differential sender (``differential/sender.py``: exact segments, its own SYN).

Each test fails on the code before the proven-connection rule: a SYN carrying an envelope
banned its spoofed source, five payload-free SYNs banned any address (the server's own /64
too), a SYN carrying ``QUIT`` let the real envelope through, and 25,000 spoofed SYNs evicted a
split envelope's flow so that its second half passed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .bed import BAN_SET, CLIENTS, PY, SERVER, Bed, wait_for

pytestmark = pytest.mark.e2e

HERE = Path(__file__).resolve().parent
V = pytest.mark.parametrize("v", [4, 6], ids=["ipv4", "ipv6"])
SPOOFED = {4: ["198.51.100.99", "198.51.100.98"], 6: ["2001:db8:5::99", "2001:db8:6::98"]}
ENVELOPE = "MAIL FROM:<x@blocked.test>\r\nRCPT TO:<x@blocked.test>\r\n"


def peer_mac(bed: Bed) -> str:
    return bed.s("cat", "/sys/class/net/veth-s/address").stdout.strip()


def forge(bed: Bed, batches: list[dict], timeout: float = 60) -> int:
    spec = bed.dir / f"forge-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps({"iface": "veth-c", "peer_mac": peer_mac(bed), "batches": batches}))
    return int(bed.c(PY, str(HERE / "forge.py"), str(spec), timeout=timeout).stdout)


def sender(bed: Bed, session: dict) -> subprocess.Popen[str]:
    """The differential sender for one session, in the background; the client kernel's RSTs dropped."""
    for tool in ("iptables", "ip6tables"):
        if bed.c(tool, "-C", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP", check=False).returncode:
            bed.c(tool, "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP")
    session.setdefault("pcap", str(bed.dir / f"session-{session['sport']}.pcap"))
    spec = bed.dir / f"sender-{session['sport']}.json"
    spec.write_text(json.dumps({"iface": "veth-c", "peer_mac": peer_mac(bed), "sessions": [session]}))
    script = str(HERE / "differential" / "sender.py")
    return subprocess.Popen(["ip", "netns", "exec", bed.client, sys.executable, script, str(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def seg(text: str, wait: float = 0.05) -> dict:
    return {"data": text.encode().hex(), "flags": "PA", "wait": wait}


def queue_total(bed: Bed) -> int:
    """Packets the kernel has queued to userspace so far (id_sequence, all queues)."""
    text = bed.s("cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    return sum(int(line.split()[-2]) for line in text.splitlines() if line.strip())


def bans(bed: Bed) -> dict[str, int]:
    return {**bed.ipset(BAN_SET[4]), **bed.ipset(BAN_SET[6])}


@V
def test_forged_syns_ban_nobody_not_even_the_servers_own_64(live: Bed, v: int) -> None:
    one, many = SPOOFED[v]
    batches = [
        {"src": one, "dst": SERVER[v], "dport": 25, "payload": ENVELOPE.encode().hex()},  # item 1: one SYN
        {"src": many, "dst": SERVER[v], "dport": 22, "count": 8},                         # the rate limit
    ]
    if v == 6:  # the server's own /64 (a neighbour's address, and its own)
        batches += [{"src": "2001:db8::99", "dst": SERVER[6], "dport": 22, "count": 8, "sport": 3000},
                    {"src": "2001:db8::99", "dst": SERVER[6], "dport": 25, "payload": ENVELOPE.encode().hex()}]
    assert forge(live, batches) == sum(b.get("count", 1) for b in batches)
    time.sleep(1.0)
    assert bans(live) == {}, "a forged SYN banned its source"
    assert [e for e in live.events() if e.get("event") in ("verdict", "ban")] == []
    # and the service is fine: a real client still delivers
    ok = live.smtp(CLIENTS[v]["b"], ["user@example.org"])
    assert ok["delivered"], ok


@V
def test_syn_data_does_not_open_a_bypass(live: Bed, v: int) -> None:
    src = CLIENTS[v]["c"]
    session = {"src": src, "dst": SERVER[v], "dport": 25, "sport": 41000, "isn": 5000, "settle": 0.3,
               "syn_data": b"QUIT\r\n".hex(),
               "segments": [seg("EHLO me\r\n"), seg("MAIL FROM:<a@example.org>\r\n"),
                            seg("RCPT TO:<victim@blocked.test>\r\n"), seg("DATA\r\n"),
                            seg("Subject: t\r\n\r\nhi\r\n.\r\n")]}
    proc = sender(live, session)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)[0]["synack"], out
    assert live.server_events(event="rcpt", peer=src) == [], "the MTA accepted the blocked recipient"
    verdict = live.wait_event(event="verdict", src=src)
    assert (verdict["reason"], verdict["verdict"]) == ("domain", "reset"), verdict
    assert wait_for(lambda: live.banned(src), 3, what="the real sender's ban")


def test_spoofed_syn_flood_cannot_evict_a_split_envelope(bed: Bed) -> None:
    bed.write_config(extra="[flows]\nmax = 20000\n")
    bed.start_inspector()
    src = CLIENTS[6]["c"]
    session = {"src": src, "dst": SERVER[6], "dport": 25, "sport": 41001, "isn": 7000, "settle": 0.3,
               "segments": [seg("EHLO me\r\n"), seg("MAIL FROM:<a@example.org>\r\n"),
                            seg("RCPT TO:<victim@bl", wait=8.0),  # the flood comes in this pause
                            seg("ocked.test>\r\n"), seg("DATA\r\n"), seg("Subject: t\r\n\r\nhi\r\n.\r\n")]}
    proc = sender(bed, session)
    time.sleep(2.0)
    queued = queue_total(bed)
    started = time.monotonic()
    sent = forge(bed, [{"src": "2001:db8:100::1", "dst": SERVER[6], "dport": 25, "count": 25_000,
                        "spread64": True, "pace": 6000}])
    flood_seconds = time.monotonic() - started
    assert sent == 25_000
    # every forged SYN reached the inspector (none passed by queue overflow): the flood is real
    assert wait_for(lambda: queue_total(bed) - queued >= 25_000, 5, what="25,000 SYNs queued")
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0, err
    assert flood_seconds < 7.0, f"the flood took {flood_seconds:.1f}s, longer than the session's pause"
    assert bed.server_events(event="rcpt", peer=src) == [], "the split envelope passed after the flood"
    verdict = bed.wait_event(event="verdict", src=src)
    assert (verdict["reason"], verdict["match"]) == ("domain", "<victim@blocked.test>"), verdict
    banned = bans(bed)
    assert list(banned) == ["2001:db8:3::/64"], banned  # the real sender's /64 only


def test_a_syn_flood_past_the_limit_does_not_fill_the_queue(bed: Bed) -> None:
    """40,000 SYNs as fast as the sender goes: at most --syn-limit (10,000/s, burst 10,000) reach
    the queue, so it keeps room for data; a session whose SYN came during the flood is still
    inspected (picked up midstream if its SYN was not queued) and its blocked recipient reset."""
    bed.start_inspector()
    src = CLIENTS[4]["c"]
    session = {"src": src, "dst": SERVER[4], "dport": 25, "sport": 41002, "isn": 8000, "settle": 0.3,
               "segments": [seg("EHLO me\r\n", wait=6.0),  # the flood ends in this pause
                            seg("MAIL FROM:<a@example.org>\r\n"), seg("RCPT TO:<victim@blocked.test>\r\n"),
                            seg("DATA\r\n"), seg("Subject: t\r\n\r\nhi\r\n.\r\n")]}
    queued = queue_total(bed)
    flood = subprocess.Popen(["ip", "netns", "exec", bed.client, sys.executable, str(HERE / "forge.py"),
                              str(_spec(bed, [{"src": "198.51.100.97", "dst": SERVER[4], "dport": 25,
                                               "count": 40_000}]))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.2)
    proc = sender(bed, session)
    f_out, f_err = flood.communicate(timeout=60)
    assert flood.returncode == 0 and int(f_out) == 40_000, f_err
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 0 and json.loads(out)[0]["synack"], err or out
    flood_queued = queue_total(bed) - queued
    assert flood_queued < 40_000, f"every SYN of the flood was queued ({flood_queued})"
    assert bed.server_events(event="rcpt", peer=src) == [], "the blocked recipient passed during the flood"
    verdict = bed.wait_event(event="verdict", src=src)
    assert (verdict["reason"], verdict["verdict"]) == ("domain", "reset"), verdict
    assert "198.51.100.97" not in bans(bed)


def _spec(bed: Bed, batches: list[dict]) -> Path:
    spec = bed.dir / f"forge-{time.monotonic_ns()}.json"
    spec.write_text(json.dumps({"iface": "veth-c", "peer_mac": peer_mac(bed), "batches": batches}))
    return spec
