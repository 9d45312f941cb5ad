#!/usr/bin/env python3
"""The live packet path without traffic: what one queued packet costs in userspace, deterministic.

    python benchmarks/livepath.py [--transactions 4000] [--burst 1] [--rounds 3]
    python benchmarks/livepath.py --mode inspector --profile FILE   # cProfile of the inspector path
    python benchmarks/livepath.py --stub-engine     # the service around an engine that accepts at once
    python benchmarks/livepath.py --no-syn          # the same transactions without their SYNs

Instruction counts (deterministic whatever the machine's load): run the child under callgrind,
``unshare -n valgrind --tool=callgrind python benchmarks/livepath.py --child --mode inspector
--rounds 1 --transactions N`` for two values of N and for ``--mode none`` (builds the messages
only), and take the difference per packet; ``livepath_profile.py`` does all of that, and splits
the inspector's figure by function.

Runs itself in a private network namespace (``unshare -n``; root needed), binds a real NFQUEUE
there with the NetfilterQueue binding, and feeds the binding NFQUEUE netlink messages built in
memory (``NFQNL_MSG_PACKET``: the packet header, the mark, the payload) through the same
``run_socket`` reading the service uses, in bursts of ``--burst`` messages per wakeup.  The
packets are those the kernel queues for non-pipelining SMTP transactions (SYN, EHLO, MAIL FROM,
RCPT TO, DATA; every 20th transaction to a blocked domain, which ends with a reset at RCPT and
a ban), from 60,000 distinct sources.  Verdicts go to the kernel for real (one ``sendmsg``
each; the kernel finds no such packet id, so nothing continues up the stack).

* ``bare``: the binding's floor, as ``linerate/bare.py --mode select``: select, ``run_socket``,
  ``packet.accept()``;
* ``inspector``: the service itself (``inspector.service.single.Service`` with its host: event
  file, ipset sets in the namespace, control socket, bans) on a queue whose socket reads the
  built messages: every turn of its loop, the runner, the engine, the verdict, the resets.

Prints CPU microseconds per packet (``time.process_time``, best of the interleaved rounds) of
each and the ratio.  The kernel's own work after a real verdict (the packet continuing through
the TCP stack, in the verdicting process's context) is not in these figures: it is the same
for both, and ``line_rate.py`` measures it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from inspector.bench import ACK, PSH, SERVER4, SYN, tcp_packet  # noqa: E402

QUEUE = 7
_NFQA_PACKET_HDR, _NFQA_MARK, _NFQA_PAYLOAD = 1, 3, 10
_NFQNL_MSG_PACKET = 0


def _attr(kind: int, value: bytes) -> bytes:
    length = 4 + len(value)
    return struct.pack("=HH", length, kind) + value + b"\0" * (-length % 4)


def message(packet_id: int, payload: bytes, mark: int = 0) -> bytes:
    """One NFQNL_MSG_PACKET netlink message as the kernel sends it (hook NF_INET_LOCAL_IN)."""
    body = (struct.pack("=BBH", socket.AF_INET, 0, socket.htons(QUEUE))
            + _attr(_NFQA_PACKET_HDR, struct.pack(">IHB", packet_id, 0x0800, 1))
            + _attr(_NFQA_MARK, struct.pack(">I", mark))
            + _attr(_NFQA_PAYLOAD, payload))
    return struct.pack("=IHHII", 16 + len(body), (3 << 8) | _NFQNL_MSG_PACKET, 0, 0, 0) + body


def workload(transactions: int, seed: int = 16, syn: bool = True) -> tuple[list[bytes], int]:
    """The queued packets of ``transactions`` SMTP transactions, interleaved over 64 at a time
    (``syn`` False: without the SYNs, as if the kernel kept them)."""
    rng = random.Random(seed)
    convs: list[list[bytes]] = []
    for n in range(transactions):
        blocked = n % 20 == 19
        i = n % 60000
        src = (0xC6120000 + i).to_bytes(4, "big") if not blocked else (0xC6130000 + n % 60000).to_bytes(4, "big")
        sport = 20000 + (n * 7) % 40000
        isn = rng.getrandbits(32)
        rcpt = b"RCPT TO:<user@blocked.test>\r\n" if blocked else b"RCPT TO:<user@ok-%d.example>\r\n" % (n % 50)
        out = [tcp_packet(src, SERVER4, sport, 25, isn, SYN)] if syn else []
        seq = isn + 1
        cmds = [b"EHLO client.example\r\n", b"MAIL FROM:<bot@sender.example>\r\n", rcpt]
        if not blocked:
            cmds.append(b"DATA\r\n")
        for c in cmds:
            out.append(tcp_packet(src, SERVER4, sport, 25, seq, ACK | PSH, c))
            seq += len(c)
        convs.append(out)
    packets: list[bytes] = []
    active: list[list[bytes]] = []
    it = iter(convs)
    while True:
        while len(active) < 64:
            c = next(it, None)
            if c is None:
                break
            c.reverse()
            active.append(c)
        if not active:
            break
        k = rng.randrange(len(active))
        packets.append(active[k].pop())
        if not active[k]:
            active[k] = active[-1]
            active.pop()
    return [message(i + 1, p) for i, p in enumerate(packets)], len(packets)


class Messages:
    """What ``run_socket`` reads from: the built messages, ``burst`` per wakeup, then EAGAIN."""

    def __init__(self, messages: list[bytes], burst: int) -> None:
        self.messages = messages
        self.burst = burst
        self.pos = 0
        self.left = burst
        self.on_done: Any = None  # called when the wakeup after the last message ends (stops the service's loop)

    def recv(self, _size: int) -> bytes:
        if not self.left or self.pos >= len(self.messages):
            self.left = self.burst
            if self.on_done is not None and self.pos >= len(self.messages):
                self.on_done()
            raise BlockingIOError(11, "burst done")
        self.left -= 1
        m = self.messages[self.pos]
        self.pos += 1
        return m

    def close(self) -> None:
        pass

    @property
    def done(self) -> bool:
        return self.pos >= len(self.messages)


def run_bare(messages: list[bytes], burst: int) -> tuple[float, int]:
    from netfilterqueue import NetfilterQueue

    nfq = NetfilterQueue()
    count = [0]

    def accept(packet: Any) -> None:
        packet.accept()
        count[0] += 1

    nfq.bind(QUEUE, accept, max_len=4096)
    r, w = os.pipe()
    os.write(w, b"x")  # always readable: every select returns at once, as under load
    src = Messages(messages, burst)
    started = time.process_time()
    try:
        while not src.done:
            ready, _, _ = select.select([r], [], [], 1.0)
            if ready:
                nfq.run_socket(src)
        return time.process_time() - started, count[0]
    finally:
        nfq.unbind()
        os.close(r)
        os.close(w)


def run_inspector(messages: list[bytes], burst: int, workdir: Path,
                  profile: str | None = None) -> tuple[float, int, dict[str, Any]]:
    from inspector.service.single import Service
    from inspector.sources.nfqueue import NfQueue

    (workdir / "blocked.txt").write_text("blocked.test\n")
    for leftover in ("bans.json", "events.jsonl"):
        (workdir / leftover).unlink(missing_ok=True)
    subprocess.run(["ipset", "flush"], check=False)  # the bans of the previous round (restored at start)
    cfg = workdir / "inspector.toml"
    cfg.write_text(f"""\
mode = "enforce"
[ports]
smtp = [25]
[rate]
rules = [{{ports = [25], limit = 1000, window = 60}}]
[[rules]]
path = "{workdir / 'blocked.txt'}"
scope = "domain"
[service]
queue = {QUEUE}
state_file = "{workdir / 'bans.json'}"
events = "{workdir / 'events.jsonl'}"
syslog = false
fail_open = true
control_socket = "{workdir / 'control.sock'}"
""")
    src = Messages(messages, burst)
    r, w = os.pipe()
    os.write(w, b"x")

    class Fed(NfQueue):
        """The service's queue, its socket reads replaced by the built messages."""

        def bind(self, handler: Any) -> None:
            super().bind(handler)
            assert self._messages is not None
            self._messages.close()
            self._messages = src  # type: ignore[assignment]

        def fileno(self) -> int:
            return r

    queue = Fed(QUEUE, 4096, True)
    service = Service(str(cfg), None, {}, queue=queue, signals=False)
    src.on_done = service.loop.stop  # no wrapper around the queue's read: the service's own path only
    service.start()
    runner = service.side.runner
    assert runner is not None
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    started = time.process_time()
    service.loop.run()
    cpu = time.process_time() - started
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    counts = service.side.stats(time.time())["counts"]  # the runner's, and the queue's wakeups
    service.stop()
    os.close(r)
    os.close(w)
    return cpu, service.side.engine.packets, counts


def child(args: argparse.Namespace) -> int:
    # a veth pair and a default route, so that the resets to clients leave the raw socket
    for cmd in (["ip", "link", "set", "lo", "up"], ["ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
                ["ip", "addr", "add", "192.0.2.25/24", "dev", "v0"], ["ip", "link", "set", "v0", "up"],
                ["ip", "link", "set", "v1", "up"], ["ip", "route", "add", "default", "dev", "v0"]):
        subprocess.run(cmd, check=True)
    messages, count = workload(args.transactions, syn=not args.no_syn)
    if args.stub_engine:
        from inspector.engine import Engine
        from inspector.verdict import ACCEPT

        def accept_all(self: Engine, data: bytes, now: float) -> Any:
            self.packets += 1
            return ACCEPT

        Engine.process = accept_all  # type: ignore[method-assign]
    results: dict[str, list[float]] = {"bare": [], "inspector": []}
    extra: dict[str, Any] = {}
    modes = [args.mode] if args.mode else ["bare", "inspector"]
    if args.mode == "none":
        modes = []
    with tempfile.TemporaryDirectory() as tmp:
        for rnd in range(args.rounds):
            for mode in modes if rnd % 2 == 0 else list(reversed(modes)):
                if mode == "bare":
                    cpu, n = run_bare(messages, args.burst)
                else:
                    cpu, n, counts = run_inspector(messages, args.burst, Path(tmp),
                                                   args.profile if rnd == args.rounds - 1 else None)
                    extra["counts"] = counts
                if n != count and mode != "none":
                    raise SystemExit(f"{mode}: handled {n} of {count} packets")
                results[mode].append(cpu * 1e6 / count)
    print(json.dumps({"packets": count, "transactions": args.transactions, "burst": args.burst,
                      "us_per_packet": results, **extra}))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transactions", type=int, default=4000)
    ap.add_argument("--burst", type=int, default=1, help="messages read per wakeup (default 1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--mode", choices=("bare", "inspector", "none"),
                    help="run only this one (none: build the messages only, for instruction-count baselines)")
    ap.add_argument("--profile", metavar="FILE", help="cProfile the last inspector round into FILE")
    ap.add_argument("--stub-engine", action="store_true",
                    help="the engine accepts every packet at once: what the service costs around it")
    ap.add_argument("--no-syn", action="store_true", help="leave the SYNs out (what they cost: the difference)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if os.geteuid() != 0:
        print("livepath: needs root (a private network namespace and an NFQUEUE in it)", file=sys.stderr)
        return 2
    argv = [a for a in sys.argv[1:]]
    out = subprocess.run(["unshare", "-n", sys.executable, __file__, "--child", *argv], capture_output=True,
                         text=True)
    if out.returncode:
        print(out.stderr, file=sys.stderr)
        return out.returncode
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"# live path without traffic: {res['packets']:,} queued packets of {res['transactions']:,} SMTP"
          f" transactions, {res['burst']} per wakeup")
    us = res["us_per_packet"]
    best = {k: min(v) for k, v in us.items() if v}
    for k, v in us.items():
        if v:
            print(f"   {k:<10} {best[k]:6.2f} us/packet (rounds: {', '.join(format(x, '.2f') for x in v)})")
    if "bare" in best and "inspector" in best:
        print(f"   ratio inspector/bare: {best['inspector'] / best['bare']:.2f}"
              f" (extra {best['inspector'] - best['bare']:.2f} us/packet)")
    if "counts" in res:
        print(f"   inspector counts: {json.dumps(res['counts'], sort_keys=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
