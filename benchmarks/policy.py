#!/usr/bin/env python3
"""Policy-path benchmark: a real Postfix asking ``inspector policy`` vs a DUNNO-only server.

Two network namespaces made for the run (root needed; torn down at the end, also on error):
a Postfix instance (tests/e2e/mta.py, discard: transport) on 192.0.2.25:25 in the server
namespace, and a closed-loop SMTP load in the client namespace: ``--concurrency`` sessions,
each sending ``--per-session`` messages (one RCPT each, so one policy request each) until
``--messages`` messages are accepted or ``--seconds`` pass.  Each round runs three
configurations, interleaved, each on a fresh Postfix:

* ``none``: no check_policy_service (the MTA's own cost);
* ``dunno``: ``check_policy_service`` to a minimal server that answers every request
  ``action=DUNNO`` (this file, ``--dunno-server``): the protocol's floor;
* ``inspector``: ``check_policy_service`` to ``inspector policy`` with ``--domains`` blocked
  domains (the shipped packaging/postfix-main.cf.snippet settings).

Printed per configuration (medians over rounds): accepted messages/s (= policy requests/s
for the two policy rows), RCPT round-trip p50/p99 as the SMTP client sees it (the policy
lookup is inside it), the CPU of every process in the server namespace per accepted
message (Postfix's processes and the policy server; from /proc/PID/stat, with Postfix's
``max_use`` raised so no process exits during a run) and the policy server's own CPU per
request; then the ratios inspector/dunno and the extra CPU per accepted message against
``none`` and against ``dunno``.  Also, without Postfix: ``--direct-requests`` requests over
``--concurrency`` connections straight to each policy server, one request in flight per
connection as Postfix sends them (requests/s, p50/p99).

    sudo .venv/bin/python benchmarks/policy.py [--rounds 3] [--messages 1500] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.bed import CLIENTS, PY, SERVER, Bed, percentile, wait_for  # noqa: E402
from tests.e2e.mta import Postfix  # noqa: E402

OURS, FLOOR = "127.0.0.1:10040", "127.0.0.1:10041"
TICK = os.sysconf("SC_CLK_TCK")

# the SMTP load, run in the client namespace; prints {"accepted", "seconds", "rcpt_ms": [...]} as JSON
LOAD = r"""
import json, smtplib, sys, threading, time
server, src, concurrency, per_session, total, seconds = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:7])
lock = threading.Lock(); state = {"accepted": 0, "errors": 0}; lat = []
deadline = time.monotonic() + seconds
def worker():
    while True:
        with lock:
            if state["accepted"] >= total or time.monotonic() > deadline: return
        try:
            s = smtplib.SMTP(server, 25, source_address=(src, 0), timeout=30, local_hostname="load.test")
            s.ehlo()
            for _ in range(int(per_session)):
                s.mail("a@example.org")
                t = time.perf_counter(); code, _ = s.rcpt("someone@example.net"); dt = time.perf_counter() - t
                if code != 250: raise RuntimeError(f"RCPT {code}")
                code, _ = s.data(b"Subject: load\r\n\r\n" + b"x" * 600 + b"\r\n")
                with lock:
                    lat.append(dt * 1000)
                    if code == 250: state["accepted"] += 1
                    if state["accepted"] >= total or time.monotonic() > deadline: break
            s.quit()
        except Exception as e:
            with lock: state["errors"] += 1
            time.sleep(0.05)
threads = [threading.Thread(target=worker) for _ in range(int(concurrency))]
start = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({**state, "seconds": time.monotonic() - start, "rcpt_ms": lat}))
"""

# requests straight to a policy server, one in flight per connection (as Postfix sends them)
DIRECT = r"""
import json, socket, sys, threading, time
host, port, conns, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
req = (b"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address=198.51.100.10\n"
       b"client_name=unknown\nhelo_name=load.test\nsender=a@example.org\nrecipient=someone@example.net\n"
       b"encryption_protocol=TLSv1.3\n\n")
lat = []; lock = threading.Lock()
def worker(n):
    s = socket.create_connection((host, port)); mine = []
    for _ in range(n):
        t = time.perf_counter(); s.sendall(req); buf = b""
        while not buf.endswith(b"\n\n"): buf += s.recv(4096)
        mine.append((time.perf_counter() - t) * 1000)
    s.close()
    with lock: lat.extend(mine)
threads = [threading.Thread(target=worker, args=(total // conns,)) for _ in range(conns)]
start = time.monotonic()
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps({"seconds": time.monotonic() - start, "lat_ms": lat}))
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def _dunno(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            if line in (b"\n", b"\r\n"):
                writer.write(b"action=DUNNO\n\n")
                await writer.drain()
    finally:
        writer.close()


def dunno_server(listen: str) -> int:
    """The floor: answer every request DUNNO, nothing else (no bounds, no rules)."""
    host, port = listen.rsplit(":", 1)

    async def main() -> None:
        server = await asyncio.start_server(_dunno, host, int(port))
        async with server:
            await server.serve_forever()
    asyncio.run(main())
    return 0


def ns_inode(name: str) -> int:
    return os.stat(f"/run/netns/{name}").st_ino


def ns_cpu(inode: int) -> dict[int, float]:
    """CPU seconds (user + system) of every process in the namespace, by PID."""
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != f"net:[{inode}]":
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(pid)] = (int(fields[11]) + int(fields[12])) / TICK
        except (OSError, IndexError, ValueError):
            continue
    return out


def cpu_delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def pid_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def postfix_main(policy: str | None, snippet: Path) -> dict[str, str]:
    settings = {"max_use": "100000", "max_idle": "300s", "default_process_limit": "100"}
    if policy is None:
        return settings
    for line in snippet.read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            name, _, value = line.partition("=")
            settings[name.strip()] = value.strip().replace("inet:127.0.0.1:10040", f"inet:{policy}")
    return settings


def run_config(bed: Bed, name: str, policy: str | None, policy_pid: int | None, args: argparse.Namespace,
               work: Path) -> dict[str, Any]:
    src = CLIENTS[4]["a"]
    inode = ns_inode(bed.server)
    with Postfix(work / f"pf-{name}", bed.server, mynetworks=["198.51.100.0/24"],
                 main=postfix_main(policy, REPO / "packaging" / "postfix-main.cf.snippet")) as pf:
        # warm up: every smtpd the load will use is started and has its policy connection
        bed.c(PY, "-c", LOAD, SERVER[4], src, str(args.concurrency), "2", str(args.concurrency * 2), "30",
              timeout=60)
        pf.wait_settled(timeout=30)
        before, pol_before = ns_cpu(inode), pid_cpu(policy_pid) if policy_pid else 0.0
        r = bed.c(PY, "-c", LOAD, SERVER[4], src, str(args.concurrency), str(args.per_session),
                  str(args.messages), str(args.seconds), timeout=args.seconds + 60)
        out = json.loads(r.stdout)
        pf.wait_settled(timeout=60)  # the discard deliveries are part of the cost of a message
        after, pol_after = ns_cpu(inode), pid_cpu(policy_pid) if policy_pid else 0.0
    accepted = max(1, out["accepted"])
    lat = out["rcpt_ms"]
    return {"config": name, "accepted": out["accepted"], "errors": out["errors"], "seconds": out["seconds"],
            "per_s": out["accepted"] / out["seconds"], "rcpt_p50_ms": percentile(lat, 50),
            "rcpt_p99_ms": percentile(lat, 99), "cpu_us_per_msg": 1e6 * cpu_delta(before, after) / accepted,
            "policy_cpu_us_per_req": 1e6 * (pol_after - pol_before) / accepted if policy_pid else None}


def direct(bed: Bed, listen: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    host, port = listen.rsplit(":", 1)
    before = pid_cpu(pid)
    r = bed.s(PY, "-c", DIRECT, host, port, str(args.concurrency), str(args.direct_requests), timeout=300)
    out = json.loads(r.stdout)
    n = len(out["lat_ms"])
    return {"per_s": n / out["seconds"], "p50_ms": percentile(out["lat_ms"], 50),
            "p99_ms": percentile(out["lat_ms"], 99), "cpu_us_per_req": 1e6 * (pid_cpu(pid) - before) / n}


def write_inspector_config(work: Path, domains: int) -> Path:
    rng = random.Random(1)
    rules = work / "rules.txt"
    names = {"blocked.test"}
    while len(names) < domains:
        names.add("".join(rng.choices(string.ascii_lowercase, k=10)) + ".example")
    rules.write_text("\n".join(sorted(names)) + "\n")
    cfg = work / "inspector.toml"
    cfg.write_text(f"""\
[[rules]]
path = "{rules}"
[service]
state_file = "{work}/bans.json"
events = "{work}/events.jsonl"
syslog = false
control_socket = "{work}/c.sock"
[policy]
listen = "{OURS}"
""")
    return cfg


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--messages", type=int, default=1500, help="accepted messages per run (bound)")
    p.add_argument("--seconds", type=float, default=60, help="time bound per run")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--per-session", type=int, default=20, help="messages per SMTP session")
    p.add_argument("--domains", type=int, default=10000, help="blocked domains loaded by inspector")
    p.add_argument("--direct-requests", type=int, default=20000, help="requests per direct run (0: skip)")
    p.add_argument("--json", default="/tmp/policy-bench.json")
    p.add_argument("--dunno-server", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dunno_server:
        return dunno_server(args.dunno_server)
    if os.geteuid() != 0:
        print("policy benchmark: needs root (network namespaces, Postfix)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="policy-bench-"))
    os.chmod(work, 0o755)
    bed = Bed(work)
    rows: list[dict[str, Any]] = []
    directs: dict[str, list[dict[str, Any]]] = {"dunno": [], "inspector": []}
    try:
        bed.up()
        cfg = write_inspector_config(work, args.domains)
        ours = bed._spawn("policy", bed.server, [PY, "-m", "inspector", "policy", "--config", str(cfg)])
        bed.stack.callback(ours.stop)
        floor = bed._spawn("dunno", bed.server, [PY, str(Path(__file__).resolve()), "--dunno-server", FLOOR])
        bed.stack.callback(floor.stop)
        for proc, listen in ((ours, OURS), (floor, FLOOR)):
            port = listen.rsplit(":", 1)[1]
            wait_for(lambda port=port: bed.s("ss", "-Hltn", f"sport = :{port}").stdout.strip(), 30,
                     what=f"a policy server on {listen}\n{proc.tail()}")
        configs = [("none", None, None), ("dunno", FLOOR, floor.pid), ("inspector", OURS, ours.pid)]
        for rnd in range(args.rounds):
            order = configs[rnd % 3:] + configs[:rnd % 3]
            for name, policy, pid in order:
                row = run_config(bed, name, policy, pid, args, work)
                row["round"] = rnd
                rows.append(row)
                log(f"round {rnd + 1}: {name:9} {row['per_s']:7.1f} msg/s  RCPT p50 {row['rcpt_p50_ms']:.2f} ms "
                    f"p99 {row['rcpt_p99_ms']:.2f} ms  CPU {row['cpu_us_per_msg']:.0f} us/msg  "
                    f"({row['accepted']} accepted, {row['errors']} errors)")
            if args.direct_requests:
                for name, listen, pid in (("dunno", FLOOR, floor.pid), ("inspector", OURS, ours.pid)):
                    d = direct(bed, listen, pid, args)
                    directs[name].append(d)
                    log(f"round {rnd + 1}: direct {name:9} {d['per_s']:8.0f} req/s  p50 {d['p50_ms']:.3f} ms  "
                        f"p99 {d['p99_ms']:.3f} ms  {d['cpu_us_per_req']:.0f} us CPU/req")
        status = bed.s(PY, "-m", "inspector", "status", "--json", "--config", str(cfg), check=False).stdout
        server_side = (json.loads(status) or {}).get("policy", {}) if status.strip() else {}
    finally:
        bed.close()
    report(rows, directs, server_side, args)
    Path(args.json).write_text(json.dumps({"rows": rows, "direct": directs, "server": server_side}, indent=1))
    return 0


def report(rows: list[dict[str, Any]], directs: dict[str, list[dict[str, Any]]], server: dict[str, Any],
           args: argparse.Namespace) -> None:
    def med(name: str, key: str) -> float:
        vals = [r[key] for r in rows if r["config"] == name and r[key] is not None]
        return statistics.median(vals) if vals else float("nan")

    print(f"\nPostfix -> policy service, {args.concurrency} concurrent sessions, {args.per_session} messages each, "
          f"1 RCPT per message, up to {args.messages} messages per run, {args.rounds} interleaved rounds "
          f"(medians); inspector loads {args.domains} blocked domains")
    print(f"{'config':10} {'msg/s':>8} {'RCPT p50':>9} {'RCPT p99':>9} {'CPU/msg':>9} {'policy CPU/req':>15}")
    for name in ("none", "dunno", "inspector"):
        pol = med(name, "policy_cpu_us_per_req")
        print(f"{name:10} {med(name, 'per_s'):8.1f} {med(name, 'rcpt_p50_ms'):7.2f}ms "
              f"{med(name, 'rcpt_p99_ms'):7.2f}ms {med(name, 'cpu_us_per_msg'):7.0f}us "
              f"{'' if pol != pol else f'{pol:13.0f}us'}")
    def paired(key: str, a: str, b: str, diff: bool = False) -> str:
        """Per round (the two ran minutes apart at most): a/b (or a-b); the median and the range."""
        vals = []
        for rnd in sorted({r["round"] for r in rows}):
            x = [r[key] for r in rows if r["round"] == rnd and r["config"] == a]
            y = [r[key] for r in rows if r["round"] == rnd and r["config"] == b]
            if x and y and x[0] is not None and y[0] is not None:
                vals.append(x[0] - y[0] if diff else x[0] / y[0])
        if not vals:
            return "-"
        spec = ".0f" if diff else ".2f"
        return f"{statistics.median(vals):{spec}} ({min(vals):{spec}}..{max(vals):{spec}})"

    print("per round, median (range): "
          f"requests/s inspector/dunno {paired('per_s', 'inspector', 'dunno')}, "
          f"RCPT p50 {paired('rcpt_p50_ms', 'inspector', 'dunno')}, p99 {paired('rcpt_p99_ms', 'inspector', 'dunno')}")
    print("policy server's own CPU per request (= per accepted message), inspector - dunno: "
          f"{paired('policy_cpu_us_per_req', 'inspector', 'dunno', diff=True)} us; whole server namespace per "
          f"message: inspector - dunno {paired('cpu_us_per_msg', 'inspector', 'dunno', diff=True)} us, "
          f"inspector - none {paired('cpu_us_per_msg', 'inspector', 'none', diff=True)} us")
    cpu = {name: med(name, "cpu_us_per_msg") for name in ("none", "dunno", "inspector")}
    print(f"extra CPU per accepted message: inspector vs none {cpu['inspector'] - cpu['none']:.0f} us, "
          f"inspector vs dunno {cpu['inspector'] - cpu['dunno']:.0f} us, "
          f"dunno vs none {cpu['dunno'] - cpu['none']:.0f} us")
    if server.get("latency_ms"):
        lat = server["latency_ms"]
        print(f"inspector's own time per request (read -> reply written, last {lat['samples']}): "
              f"p50 {lat['p50']:.3f} ms, p99 {lat['p99']:.3f} ms")
    if directs["dunno"]:
        def dmed(name: str, key: str) -> float:
            return statistics.median(d[key] for d in directs[name])
        print(f"\ndirect, no MTA: {args.direct_requests} requests over {args.concurrency} connections, "
              "one in flight each")
        for name in ("dunno", "inspector"):
            print(f"{name:10} {dmed(name, 'per_s'):8.0f} req/s  p50 {dmed(name, 'p50_ms'):.3f} ms  "
                  f"p99 {dmed(name, 'p99_ms'):.3f} ms  {dmed(name, 'cpu_us_per_req'):.0f} us CPU/req")
        print(f"ratio inspector/dunno: {dmed('inspector', 'per_s') / dmed('dunno', 'per_s'):.2f}")
    print(f"(also written to {args.json})")


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda s, f: sys.exit(143))
    sys.exit(main())
