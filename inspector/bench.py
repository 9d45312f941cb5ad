"""Synthetic workloads and the engine benchmark (``inspector bench``, ``benchmarks/engine.py``).

Packets are built with ``struct`` (checksums left zero: the engine, like the
kernel path it sits behind, does not re-verify them).  Everything is seeded
and deterministic.
"""

from __future__ import annotations

import ipaddress
import random
import resource
import struct
import time
from collections.abc import Iterator
from pathlib import Path

from .config import Config
from .engine import Engine
from .rules import DOMAIN, RuleFile, load_rules

SERVER4 = bytes([192, 0, 2, 25])
SERVER6 = ipaddress.IPv6Address("2001:db8::25").packed
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def tcp_packet(src: bytes, dst: bytes, sport: int, dport: int, seq: int, flags: int, payload: bytes = b"") -> bytes:
    """A raw IPv4 or IPv6 TCP packet (the family follows the length of ``src``, 4 or 16 bytes) with these ports,
    sequence number, flags and payload; checksums are left zero (the engine does not check them).
    """
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 1, 0x50, flags, 65535, 0, 0) + payload
    if len(src) == 4:
        return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst) + tcp
    return struct.pack("!IHBB16s16s", 0x60000000, len(tcp), 6, 64, src, dst) + tcp


def source(i: int) -> bytes:
    """The i-th distinct client source: 198.18.0.0/15 first, then IPv6 /64s in 2001:db8::/32."""
    if i < 131072:
        return (0xC6120000 + i).to_bytes(4, "big")
    return ipaddress.IPv6Address((0x20010DB8 << 96) | ((i - 131072 + 1) << 64) | 1).packed


def smtp_session(src: bytes, sport: int, blocked: bool, rng: random.Random) -> list[bytes]:
    """The client packets of one SMTP session from ``src``: handshake, EHLO, envelope (to a blocked domain when
    ``blocked``), a short message, QUIT.
    """
    dst = SERVER4 if len(src) == 4 else SERVER6
    isn = rng.getrandbits(32)
    rcpt = b"user@blocked-%d.example" % rng.randrange(2) if blocked else b"user@ok-%d.example" % rng.randrange(1000)
    cmds = [b"EHLO client.example\r\n", b"MAIL FROM:<bot@sender.example>\r\n", b"RCPT TO:<" + rcpt + b">\r\n",
            b"DATA\r\n", b"Subject: hi\r\n\r\n" + b"x" * 600 + b"\r\n.\r\n", b"QUIT\r\n"]
    out = [tcp_packet(src, dst, sport, 25, isn, SYN), tcp_packet(src, dst, sport, 25, isn + 1, ACK)]
    seq = isn + 1
    for c in cmds:
        out.append(tcp_packet(src, dst, sport, 25, seq, ACK | PSH, c))
        seq += len(c)
        out.append(tcp_packet(src, dst, sport, 25, seq, ACK))  # the ACK of the server's reply
    out.append(tcp_packet(src, dst, sport, 25, seq, ACK | FIN))
    return out


def ssh_session(src: bytes, sport: int, rng: random.Random) -> list[bytes]:
    """The client packets of one SSH connection from ``src``: handshake, banner, a few encrypted-looking segments.
    """
    dst = SERVER4 if len(src) == 4 else SERVER6
    isn = rng.getrandbits(32)
    out = [tcp_packet(src, dst, sport, 22, isn, SYN), tcp_packet(src, dst, sport, 22, isn + 1, ACK)]
    seq = isn + 1
    for chunk in (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", bytes(rng.getrandbits(8) for _ in range(1000)),
                  bytes(48), bytes(300), bytes(120)):
        out.append(tcp_packet(src, dst, sport, 22, seq, ACK | PSH, chunk))
        seq += len(chunk)
        out.append(tcp_packet(src, dst, sport, 22, seq, ACK))
    out.append(tcp_packet(src, dst, sport, 22, seq, ACK | FIN))
    return out


def mixed_workload(packets: int, flood_sources: int, seed: int = 1, step: float = 0.0001) -> list[tuple[float, bytes]]:
    """About ``packets`` packets: SMTP sessions (1 in 10 to a blocked domain), SSH
    sessions, and one flood SYN from each of ``flood_sources`` sources, interleaved
    across 256 concurrent conversations."""
    rng = random.Random(seed)
    flood_share = min(flood_sources, packets // 5)
    sessions: list[list[bytes]] = []
    total = 0
    n = 0
    while total < packets - flood_share:
        src = source(131072 - 1 - (n % 30000))  # clients from the top of 198.18.0.0/15, few connections each
        if n % 3 == 2:
            s = ssh_session(src, 20000 + n % 40000, rng)
        else:
            s = smtp_session(src, 20000 + n % 40000, n % 10 == 0, rng)
        sessions.append(s)
        total += len(s)
        n += 1
    flood = [tcp_packet(source(i), SERVER4 if i < 131072 else SERVER6, 1024 + i % 60000, 25 if i % 2 else 22,
                        rng.getrandbits(32), SYN) for i in range(flood_share)]
    out: list[tuple[float, bytes]] = []
    active: list[list[bytes]] = []
    pending = iter(sessions)
    fl = iter(flood)
    every = max(1, (total + flood_share) // max(1, flood_share)) if flood_share else 0
    t = 0.0
    i = 0
    while True:
        while len(active) < 256:
            session = next(pending, None)
            if session is None:
                break
            session.reverse()
            active.append(session)
        if not active:
            break
        k = rng.randrange(len(active))
        p = active[k].pop()
        if not active[k]:
            active[k] = active[-1]
            active.pop()
        out.append((t, p))
        t += step
        i += 1
        if every and i % every == 0:
            f = next(fl, None)
            if f is not None:
                out.append((t, f))
                t += step
    for f in fl:
        out.append((t, f))
        t += step
    return out


def domain_rules(count: int, directory: Path, seed: int = 7) -> list[RuleFile]:
    """A rule file of ``count`` domains that includes the workload's blocked ones."""
    rng = random.Random(seed)
    path = directory / f"domains-{count}.txt"
    with path.open("w") as f:
        f.write("blocked-0.example\nblocked-1.example\n")
        letters = "abcdefghijklmnopqrstuvwxyz"
        for i in range(max(0, count - 2)):
            f.write("".join(rng.choice(letters) for _ in range(10)) + f"{i}.{rng.choice(('com', 'net', 'org'))}\n")
    return [RuleFile(path, DOMAIN)]


def peak_rss_mb() -> float:
    """This process's peak RSS.  ``VmHWM`` belongs to the address space, so a
    child started by fork+exec does not inherit its parent's peak (getrusage's
    ``ru_maxrss`` does, on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_engine(engine: Engine, workload: list[tuple[float, bytes]]) -> tuple[float, int]:
    """CPU seconds to process the workload; and the number of non-accept verdicts."""
    process = engine.process
    blocked = 0
    started = time.process_time()
    for ts, data in workload:
        if process(data, ts).reason is not None:
            blocked += 1
    return time.process_time() - started, blocked


def flood(engine: Engine, sources: int) -> Iterator[None]:
    """Feed ``engine`` one SYN from each of ``sources`` distinct addresses (IPv6 past 131,072), yielding after each
    (the memory benchmark samples between them).
    """
    for i in range(sources):
        engine.process(tcp_packet(source(i), SERVER4 if i < 131072 else SERVER6, 1024 + i % 60000, 25, i, SYN),
                       i * 1e-5)
        yield None


def main_bench(packets: int, sources: int, domains: int, seed: int) -> int:
    """``inspector bench``: the engine over a synthetic mixed workload; prints packets/s on one core, the verdicts and
    the peak RSS. Returns 0.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rules = load_rules(domain_rules(domains, Path(tmp)))
    engine = Engine(Config(), rules)
    t = time.perf_counter()
    workload = mixed_workload(packets, sources, seed)
    built = time.perf_counter() - t
    cpu, verdicts = run_engine(engine, workload)
    print(f"workload: {len(workload)} packets ({sources} flood sources) built in {built:.1f}s")
    print(f"engine: {len(workload) / cpu:,.0f} packets/s on one core ({cpu:.2f}s CPU, "
          f"{cpu / len(workload) * 1e6:.2f} us/packet)")
    by_reason = {k: v for k, v in sorted(engine.counts.items()) if k.startswith("verdict:")}
    print(f"verdicts: {verdicts} non-accept; {by_reason}")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")
    return 0
