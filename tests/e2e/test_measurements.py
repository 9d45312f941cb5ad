"""Measurements of the live inspector, printed (run with ``-s`` to see them) and written as JSON
to /tmp/inspector-e2e-measurements.json (or $INSPECTOR_E2E_MEASUREMENTS).

* the time from the offending packet (the client's RCPT send) to the source's ipset
  entry, over 20 blocked IPv4 sessions and 5 IPv6 ones (an ipset watcher in the server
  namespace polls every millisecond, so figures carry about 1-2 ms of polling);
* the time until the client and the server see the reset;
* the share of a 1 MB mail's client packets that reach userspace (NFQUEUE id_sequence
  delta against conntrack's packet count for the connection; nf_conntrack_acct is on).

Small and bounded, so CI runs it too; the assertions are loose sanity bounds.
"""

from __future__ import annotations

import json
import os
import re
import select
from pathlib import Path

import pytest

from .bed import BAN_SET, BLOCKED, CLIENTS, HERE, PY, SERVER, Bed, ban_network, percentile

pytestmark = [pytest.mark.e2e, pytest.mark.measurement]

OUT = Path(os.environ.get("INSPECTOR_E2E_MEASUREMENTS", "/tmp/inspector-e2e-measurements.json"))
N4, N6 = 20, 5


def queue_ids(bed: Bed) -> int:
    """Packets handed to userspace so far (the queue's id_sequence), 0 if no queue is bound."""
    text = bed.s("cat", "/proc/net/netfilter/nfnetlink_queue").stdout
    return sum(int(f[7]) for f in (line.split() for line in text.splitlines()) if len(f) >= 8)


def conntrack_orig(bed: Bed, src: str, sport: int) -> dict[str, int]:
    """Original-direction packets/bytes (and the mark) of one connection, from conntrack."""
    family = "ipv6" if ":" in src else "ipv4"
    r = bed.s("conntrack", "-L", "-f", family, "-p", "tcp", "--src", src, "--sport", str(sport), check=False)
    for line in r.stdout.splitlines():
        m = re.search(r"packets=(\d+) bytes=(\d+)", line)
        if m:
            mark = re.search(r"mark=(\d+)", line)
            return {"packets": int(m.group(1)), "bytes": int(m.group(2)), "mark": int(mark.group(1)) if mark else 0}
    return {}


def engine_packets(bed: Bed) -> int | None:
    """Packets the running inspector has seen, from its control socket's ``status`` (None if it
    does not answer: the figure is optional, /proc is the primary source)."""
    import socket

    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(str(bed.control_socket))
            s.sendall(b'{"cmd": "status"}\n')
            data = b""
            while not data.endswith(b"\n") and len(data) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        return int(json.loads(data)["packets"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summary(values: list[float]) -> dict[str, float]:
    ms = [x * 1000 for x in values]
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 3), "p99_ms": round(percentile(ms, 99), 3),
            "max_ms": round(max(ms), 3) if ms else float("nan")}


def blocked_sessions(bed: Bed, sources: list[str], v: int) -> dict[str, dict[str, float]]:
    """One blocked SMTP session per source while a watcher records when each ban shows up."""
    watcher = bed._spawn(f"watch{v}", bed.server, [PY, str(HERE / "watch_ipset.py"), BAN_SET[v],
                                                   str(len(sources)), "40"], stdout_pipe=True)
    try:
        assert watcher.popen.stdout is not None
        ready, _, _ = select.select([watcher.popen.stdout], [], [], 10)
        assert ready and watcher.popen.stdout.readline().strip() == b"ready", watcher.tail()
        actions = [{"op": "smtp", "src": src, "dst": SERVER[v], "rcpts": [f"user@{BLOCKED}"], "timeout": 3}
                   for src in sources]
        results = bed.client_run(actions, timeout=60)
        ready, _, _ = select.select([watcher.popen.stdout], [], [], 45)
        seen = json.loads(watcher.popen.stdout.readline() or b"{}") if ready else {}
    finally:
        watcher.stop()
    client, server, ban = [], [], []
    for r in results:
        assert r.get("error") in ("reset", "closed"), r
        client.append(r["error_after"])
        lost = [e for e in bed.server_events(event="lost", peer=r["src"], sport=r["sport"])
                if e["error"] == "ConnectionResetError"]
        if lost:
            server.append(lost[0]["t"] - r["t_offending"])
        first = seen.get(ban_network(r["src"]))
        if first is not None:
            ban.append(first - r["t_offending"])
    assert len(ban) == len(sources), f"only {len(ban)} of {len(sources)} bans seen in the ipset: {seen}"
    assert len(server) == len(sources), "the server did not see every reset"
    return {"ban": summary(ban), "client_reset": summary(client), "server_reset": summary(server)}


def long_mail_share(bed: Bed, src: str, size: int) -> dict[str, object]:
    before, engine_before = queue_ids(bed), engine_packets(bed)
    r = bed.smtp(src, ["user@example.org"], body_size=size, timeout=10)
    assert r["delivered"], r
    queued = queue_ids(bed) - before
    engine_after = engine_packets(bed)
    ct = conntrack_orig(bed, src, r["sport"])
    out: dict[str, object] = {"mail_bytes": size, "queued_packets": queued, "seconds": round(
        r["t_delivered"] - r["t_data"], 3)}
    if engine_before is not None and engine_after is not None:
        out["engine_packets"] = engine_after - engine_before
    if ct:
        # conntrack counts skbs after GRO; a full-size segment carries at most 1448 bytes of payload here
        segments = max(ct["packets"], -(-ct["bytes"] // 1500))
        out.update({"conntrack_packets": ct["packets"], "conntrack_bytes": ct["bytes"], "conntrack_mark": ct["mark"],
                    "segments_at_least": segments, "share_to_userspace": round(queued / segments, 4)})
    return out


def test_measurements(live: Bed) -> None:
    v4 = [f"198.51.100.{100 + i}" for i in range(N4)]
    v6 = [f"2001:db8:{0x100 + i:x}::10" for i in range(N6)]
    live.add_client_addresses(v4 + v6)
    result: dict[str, object] = {
        "ipv4": blocked_sessions(live, v4, 4),
        "ipv6": blocked_sessions(live, v6, 6),
        "long_mail_ipv4": long_mail_share(live, CLIENTS[4]["c"], 1_000_000),
        "long_mail_ipv6": long_mail_share(live, CLIENTS[6]["c"], 1_000_000),
        "smtp_server": live.smtp_kind,
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print("\n== inspector end-to-end measurements (also in", OUT, ")")
    for fam in ("ipv4", "ipv6"):
        for what, label in (("ban", "offending packet -> ipset entry"), ("client_reset", "client sees the reset"),
                            ("server_reset", "server sees the reset")):
            s = result[fam][what]  # type: ignore[index]
            print(f"{fam} {label:<32} n={s['n']:<3} p50 {s['p50_ms']:8.2f} ms  p99 {s['p99_ms']:8.2f} ms"
                  f"  max {s['max_ms']:8.2f} ms")
    for fam in ("long_mail_ipv4", "long_mail_ipv6"):
        print(f"{fam}: {json.dumps(result[fam])}")

    # loose sanity bounds (a loaded 2-core CI machine must still pass)
    for fam in ("ipv4", "ipv6"):
        assert result[fam]["ban"]["p99_ms"] < 1000  # type: ignore[index]
        assert result[fam]["client_reset"]["p99_ms"] < 1000  # type: ignore[index]
        assert result[fam]["server_reset"]["p99_ms"] < 1000  # type: ignore[index]
    for fam in ("long_mail_ipv4", "long_mail_ipv6"):
        share = result[fam].get("share_to_userspace")  # type: ignore[union-attr]
        if share is not None:
            assert share < 0.5, result[fam]
