"""Fleet scale, in simulation: one Redis, one publishing host, many subscribing hosts.

No packet path and no kernel sets: each host is the real :class:`~inspector.fleet.FleetClient`
in a process of its own, with a ban pipeline that only notes when each ban arrived.  It prints

* propagation (publisher's ``issue`` to each subscriber's ``issue``) p50/p99/max over every
  (ban, subscriber) pair, for ``--bans`` bans issued at each ``--rates`` per second; and the CPU
  it took: Redis's (``INFO cpu``) and the subscribers' own, per ban delivered to one host;
* Redis memory per 100,000 active bans: ``used_memory`` before and after publishing
  ``--memory-bans`` bans (stream + snapshot sorted set + detail hash), and each key's
  ``MEMORY USAGE``.

redis-server runs as a child process with its own config on a UNIX socket only (``port 0``),
in a temporary directory, and is stopped by PID at the end.  Bounded: every phase has a
deadline.  Usage::

    python benchmarks/fleet.py [--subscribers 50] [--bans 1000] [--rates 100,1000] [--memory-bans 100000]

On a machine with fewer CPUs than subscribers, the subscribers' own CPU bounds the higher
rates (every simulated host is a Python process sharing the same cores); the Redis CPU per
delivered ban is what bounds a real fleet, where each host has its own CPUs.
"""

from __future__ import annotations

import argparse
import ipaddress
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inspector.fleet import FleetBan, FleetClient, FleetSettings  # noqa: E402


class LocalBan:
    def __init__(self, network: str, seconds: int) -> None:
        self.network, self.seconds, self.reason, self.rule, self.path, self.origin = \
            network, seconds, "manual", None, "manual", None


def start_redis(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    sock = tmp / "redis.sock"
    conf = tmp / "redis.conf"
    conf.write_text(f"port 0\nunixsocket {sock}\nunixsocketperm 700\ndir {tmp}\nsave \"\"\nappendonly no\n"
                    f"logfile {tmp / 'redis.log'}\nmaxclients 1000\n")
    proc = subprocess.Popen(["redis-server", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if redis.Redis(unix_socket_path=str(sock)).ping():
                return proc, f"unix://{sock}"
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"redis-server did not start: {(tmp / 'redis.log').read_text(errors='replace')[-500:]}")


def subscriber(index: int, url: str, expected: int, conn: Connection, deadline: float) -> None:
    arrived: dict[str, float] = {}

    def issue(ban: FleetBan, now: float) -> bool:
        arrived[ban.network] = time.time()
        return True

    client = FleetClient(FleetSettings(url=url, host=f"sub{index}", batch=500), None, issue,
                         lambda n, now: True, lambda e: None)
    client.start()
    while not client.connected and time.time() < deadline:
        time.sleep(0.02)
    conn.send("ready")
    cpu0 = time.process_time()
    while len(arrived) < expected and time.time() < deadline:
        time.sleep(0.05)
    cpu = time.process_time() - cpu0
    client.close()
    conn.send((arrived, cpu))


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def publish(url: str, nets: list[str], rate: float, timeout: float) -> tuple[dict[str, float], float]:
    """Issue ``nets`` at ``rate`` per second (0: as fast as possible); wait until all are out."""
    client = FleetClient(FleetSettings(url=url, host="pub", batch=500), None, lambda b, now: True,
                         lambda n, now: True, lambda e: None)
    client.start()
    issued: dict[str, float] = {}
    t0 = time.time()
    for i, net in enumerate(nets):
        if rate:
            ahead = t0 + i / rate - time.time()
            if ahead > 0:
                time.sleep(ahead)
        issued[net] = time.time()
        client.on_local("ban", LocalBan(net, 86400))
    deadline = time.time() + timeout
    while client.status()["outbox"] and time.time() < deadline:
        time.sleep(0.02)
    took = time.time() - t0
    left = client.status()["outbox"]
    client.close()
    if left:
        raise SystemExit(f"the publisher still had {left} bans to send after {timeout}s")
    return issued, took


def redis_cpu(admin: Any) -> float:
    info = admin.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def propagation(url: str, admin: Any, subscribers: int, nets: list[str], rate: float, timeout: float) -> None:
    ctx = multiprocessing.get_context("fork")
    deadline = time.time() + timeout
    pipes, procs = [], []
    for i in range(subscribers):
        parent, child = ctx.Pipe()
        p = ctx.Process(target=subscriber, args=(i, url, len(nets), child, deadline), daemon=True)
        p.start()
        child.close()
        pipes.append(parent)
        procs.append(p)
    for parent in pipes:
        if not parent.poll(max(0.1, deadline - time.time())):
            raise SystemExit("a subscriber did not get ready in time")
        parent.recv()
    cpu0 = redis_cpu(admin)
    issued, took = publish(url, nets, rate, timeout)
    delays: list[float] = []
    missed = 0
    sub_cpu = 0.0
    for parent in pipes:
        arrived, cpu = parent.recv() if parent.poll(max(0.1, deadline - time.time() + 5)) else ({}, 0.0)
        sub_cpu += cpu
        missed += sum(1 for n in nets if n not in arrived)
        delays += [arrived[n] - issued[n] for n in nets if n in arrived]
    server_cpu = redis_cpu(admin) - cpu0
    for p in procs:
        p.join(5)
        if p.is_alive():
            os.kill(p.pid or 0, signal.SIGKILL)
    delivered = max(1, len(delays))
    print(f"propagation: {len(nets)} bans at {rate:g}/s (issued in {took:.2f}s) to {subscribers} subscriber "
          f"processes on {os.cpu_count()} CPUs: p50 {percentile(delays, 50) * 1000:.1f} ms, "
          f"p99 {percentile(delays, 99) * 1000:.1f} ms, max {max(delays) * 1000:.1f} ms, missed {missed}; "
          f"CPU per ban delivered to one host: Redis {server_cpu / delivered * 1e6:.1f} us, "
          f"subscriber {sub_cpu / delivered * 1e6:.1f} us")


def addresses(base: str, n: int) -> list[str]:
    start = ipaddress.ip_address(base)
    return [str(start + i) for i in range(n)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subscribers", type=int, default=50)
    ap.add_argument("--bans", type=int, default=1000, help="bans timed from publisher to every subscriber")
    ap.add_argument("--rates", default="100,1000", help="bans per second issued, one run each (0: unpaced)")
    ap.add_argument("--memory-bans", type=int, default=100_000, help="active bans for the memory figure")
    ap.add_argument("--timeout", type=float, default=120, help="deadline of each phase (seconds)")
    args = ap.parse_args()
    if shutil.which("redis-server") is None:
        print("needs redis-server (apt-get install redis-server)", file=sys.stderr)
        return 2
    import redis

    tmp = Path(tempfile.mkdtemp(prefix="insp-fleet-bench-"))
    server, url = start_redis(tmp)
    admin = redis.Redis(unix_socket_path=str(tmp / "redis.sock"))
    try:
        # -- propagation: one publisher, N subscriber processes, at each rate -----------------
        for n, rate in enumerate(float(r) for r in args.rates.split(",")):
            admin.flushall()
            nets = addresses(f"198.18.{n * 16}.0", args.bans)
            propagation(url, admin, args.subscribers, nets, rate, args.timeout)

        # -- memory: N active bans in the stream and the snapshot -------------------------
        admin.flushall()
        before = int(admin.info("memory")["used_memory"])
        nets = [str(ipaddress.ip_address("198.18.0.0") + i) for i in range(args.memory_bans // 2)]
        nets += [f"2001:db8:{i >> 16:x}:{i & 0xffff:x}::/64" for i in range(args.memory_bans - len(nets))]
        _, took = publish(url, nets, 0, args.timeout)
        after = int(admin.info("memory")["used_memory"])
        per = (after - before) * 100_000 / len(nets)
        keys = {k: admin.memory_usage(k, samples=0) or 0 for k in ("inspector:bans", "inspector:bans:active",
                                                                   "inspector:bans:detail")}
        print(f"memory: {len(nets)} active bans (half IPv4 addresses, half IPv6 /64s) published in {took:.1f}s "
              f"({len(nets) / took:,.0f}/s); Redis used_memory +{(after - before) / 1e6:.1f} MB = "
              f"{per / 1e6:.1f} MB per 100,000 active bans; by key: "
              + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in keys.items()))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
