#!/usr/bin/env python3
"""Line-rate benchmark: inspector against no filter and the seeds' iptables recipe, on the real
kernel, inside two network namespaces made for the run (root needed; the host's own firewall
is never touched, and everything is torn down at the end, also on error or Ctrl-C).

    python benchmarks/line_rate.py [--quick] [--seconds S] [--rounds R] [--concurrency C]
    python benchmarks/line_rate.py --flood [--flood-sources N] [--flood-rounds R]
    python benchmarks/line_rate.py --all            # both
    python benchmarks/line_rate.py --profile        # plus py-spy on an inspector worker

Default mode (SMTP line rate, then the bulk-mail check; about 6 minutes):

* an aiosmtpd sink on port 25 in the server namespace (192.0.2.25); a load generator in the
  client namespace keeps C concurrent connections busy with full SMTP transactions (EHLO,
  MAIL FROM, RCPT TO, DATA, a ~600-byte body, '.', QUIT) from tens of thousands of sources in
  198.18.0.0/16 (AnyIP: the client namespace owns the whole 198.18.0.0/15); every 20th
  transaction (5 %, ``--blocked-every``) goes to ``blocked.test`` from a pool of its own
  (198.19.0.0/16): plain, UPPER CASE, or with the domain split over two TCP segments;
* filters, interleaved round-robin (the order rotates each round), the same load each time:
  no filter; the seeds' recipe (``-m string --algo bm "@blocked.test" -j REJECT --reject-with
  tcp-reset`` and the ``recent`` 4-in-60-s pair); the binding's floor (``linerate/bare.py``, a
  NetfilterQueue loop that accepts everything, behind the same rules); inspector
  (``setup-nfqueue.sh install --workers N`` + ``inspector run``, one row per ``--smtp-workers``
  count, default 1 and one per CPU) with its default configuration and, when the installed
  version supports it, with ``[stream] decide = "depth"`` (the default is "early"); Suricata 7 as
  an NFQ IPS with one ``reject`` rule (``linerate/filters.py``: ``Suricata``), only if installed
  (``apt-get install -t bookworm-backports suricata``; skipped with a note otherwise);
* then one 10 MB message through the inspector (each configuration), counting the packets of
  its connection that reach userspace.

``--flood``: SYNs from 100,000 distinct sources (a raw socket, as fast as Python sends) against
inspector with 1 and with 2 workers, interleaved over a few rounds; a few sources open real
connections during the flood (bare SYNs never count: only connections whose handshake completed
do), exceed the rate limit, and are then shown to be dropped by the kernel's ban rule
without reaching the queue.  ``--quick`` runs everything, small, as a CI smoke test.

Results are printed as tables and written to /tmp/line-rate-results.json (``--json``).
How every figure is measured is printed with the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import contextlib

from linerate import procfs, profile
from linerate.bed import SERVER4, Bed, wait_for
from linerate.filters import (
    REPO,
    Bare,
    Inspector,
    NoFilter,
    Recipe,
    Suricata,
    supports_decide_early,
    suricata_binary,
)

HERE = Path(__file__).resolve().parent / "linerate"
LOADGEN, SINK, FLOOD = HERE / "loadgen.py", HERE / "sink.py", HERE / "flood.py"
KINDS = ("plain", "upper", "split")
ATTACKERS = [f"198.19.255.{i}" for i in range(1, 9)]
SILENT = ["iptables", "-w", "-t", "raw", "-A", "PREROUTING", "-p", "tcp", "--sport", "25", "--tcp-flags", "SYN,ACK",
          "SYN,ACK", "-j", "DROP"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the sink -------------------------------------------------------------------------------

class Sink:
    def __init__(self, bed: Bed, python: str) -> None:
        self.proc = bed.spawn("sink", bed.server, [python, str(SINK), "--max-seconds", "3600", "--timeout", "30"],
                              stdin=True)
        line = self.proc.readline(20)
        if b"ready" not in line:
            raise RuntimeError(f"the SMTP sink did not start:\n{self.proc.tail()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stats(self) -> dict[str, int]:
        assert self.proc.popen.stdin is not None
        self.proc.popen.stdin.write(b"stats\n")
        self.proc.popen.stdin.flush()
        line = self.proc.readline(10)
        if not line:
            raise RuntimeError(f"the SMTP sink does not answer:\n{self.proc.tail()}")
        return json.loads(line)

    def cpu(self) -> float:
        return procfs.proc_cpu_seconds(self.pid) or 0.0


# -- SMTP line rate -------------------------------------------------------------------------

def load_config(args: argparse.Namespace, **over: Any) -> dict[str, Any]:
    cfg = {"dst": SERVER4, "port": 25, "seconds": args.seconds, "concurrency": args.concurrency,
           "procs": args.procs, "max_tx": int(4000 * args.seconds) + 1000, "timeout": 10.0, "body_size": 600,
           "blocked_every": args.blocked_every, "split_pause": 0.02,
           "legit_base": "198.18.0.0", "legit_count": 65000, "blocked_base": "198.19.0.0", "blocked_count": 64000}
    cfg.update(over)
    return cfg


def run_load(bed: Bed, python: str, load: dict[str, Any], name: str,
             on_go: Any = None, on_done: Any = None) -> dict[str, Any]:
    gen = bed.spawn(name, bed.client, [python, str(LOADGEN), json.dumps(load)])
    try:
        if gen.readline(60).strip() != b"go":
            raise RuntimeError(f"load generator did not start:\n{gen.tail()}")
        if on_go:
            on_go()
        line = gen.readline(float(load["seconds"]) + float(load["timeout"]) + 60)
        if line.strip() != b"done":
            raise RuntimeError(f"load generator did not finish (got {line!r}):\n{gen.tail()}")
        if on_done:
            on_done()
        out = gen.readline(60)
        if not out:
            raise RuntimeError(f"load generator gave no result:\n{gen.tail()}")
        return json.loads(out)
    finally:
        gen.stop()


def smtp_run(bed: Bed, sink: Sink, flt: Any, load: dict[str, Any], python: str, tag: str) -> dict[str, Any]:
    marks: dict[str, Any] = {}
    try:
        flt.start()
        s0 = sink.stats()

        def go() -> None:
            marks["f0"], marks["sink0"], marks["m0"] = flt.sample(), sink.cpu(), procfs.machine_cpu()

        def done() -> None:
            marks["f1"], marks["sink1"], marks["m1"] = flt.sample(), sink.cpu(), procfs.machine_cpu()

        res = run_load(bed, python, load, f"gen-{tag}", go, done)
        time.sleep(0.3)
        s1 = sink.stats()
        status = None
        errors = []
        if isinstance(flt, Inspector):
            time.sleep(1.2)  # workers report their counts to the supervisor once a second
            status = flt.status()
            errors = [e for e in flt.events() if e.get("event") == "error"]
            alive = all(flt.alive().values())
            alerts = flt.alerts() if isinstance(flt, Suricata) else None
    finally:
        flt.stop()
    out: dict[str, Any] = {"filter": flt.name, "label": flt.label, "tx": res["transactions"],
                           "tx_per_s": res["tx_per_s"], "p50_ms": res["p50_ms"], "p99_ms": res["p99_ms"],
                           "max_ms": res["max_ms"], "outcomes": res["outcomes"], "gen_cpu_s": res["cpu"],
                           "sink_cpu_s": marks["sink1"] - marks["sink0"], "window_s": res["window"]}
    oc = res["outcomes"]
    legit = sum(v for k, v in oc.items() if k.startswith("legit:"))
    out["legit"] = legit
    out["legit_failed"] = legit - oc.get("legit:ok", 0)
    for kind in KINDS:
        total = sum(v for k, v in oc.items() if k.startswith(kind + ":"))
        out[kind] = {"expected": total, "blocked": total - oc.get(f"{kind}:delivered", 0),
                     "reset": oc.get(f"{kind}:reset", 0)}
    out["sink"] = {k: s1.get(k, 0) - s0.get(k, 0) for k in ("connections", "delivered", "delivered_blocked",
                                                              "reset_by_peer")}
    out["sink"]["open_after"] = s1.get("open", 0)
    f0, f1 = marks["f0"], marks["f1"]
    wall = marks["m1"][1] - marks["m0"][1]
    ncpu = os.cpu_count() or 1
    out["cpus_busy"] = (marks["m1"][0] - marks["m0"][0]) / wall * ncpu if wall else None
    filter_cpu = 0.0
    if isinstance(flt, Inspector):
        filter_cpu = sum(f1["cpu"].get(p, 0) - f0["cpu"].get(p, 0) for p in f1["cpu"])
    # the generator's CPU covers its whole life (a fraction of a second more than the window)
    ours = (out["sink_cpu_s"] + out["gen_cpu_s"] + filter_cpu) / (res["t_end"] - res["t_go"])
    out["cpus_ours"] = ours
    out["cpus_others"] = max(0.0, out["cpus_busy"] - ours) if out["cpus_busy"] is not None else None
    if isinstance(flt, Inspector):
        cpu = filter_cpu
        queued = f1["queue"]["id_sequence"] - f0["queue"]["id_sequence"]
        out.update({"cpu_s": cpu, "queued": queued, "cpu_us_per_tx": cpu * 1e6 / max(out["tx"], 1),
                    "cpu_us_per_pkt": cpu * 1e6 / queued if queued else None,
                    "pkts_per_tx": queued / max(out["tx"], 1),
                    "queue_drops": (f1["queue"]["queue_dropped"] - f0["queue"]["queue_dropped"]
                                    + f1["queue"]["user_dropped"] - f0["queue"]["user_dropped"]),
                    "workers": flt.workers, "alive": alive, "error_events": len(errors), "alerts": alerts,
                    "errors_sample": errors[:3],
                    "counts": (status or {}).get("counts"), "engine_packets": (status or {}).get("packets")})
    elif isinstance(flt, Recipe):
        out["recipe"] = {"reject": f1["reject"] - f0["reject"], "recent_drop": f1["recent_drop"] - f0["recent_drop"],
                         "recent_entries_after": f1["recent_entries"]}
    return out


def smtp_benchmark(bed: Bed, sink: Sink, args: argparse.Namespace) -> dict[str, Any]:
    load = load_config(args)
    makers: list[Any] = [lambda r: NoFilter(), lambda r: Recipe(bed, sink.pid)]
    if args.bare:
        for mode in args.bare_modes:
            for w in args.bare_workers:
                makers.append(lambda r, mode=mode, w=w: Bare(bed, sink.pid, args.python, f"bare-{mode}{w}-{r}",
                                                             mode, w))
    for w in args.smtp_workers:
        makers.append(lambda r, w=w: Inspector(bed, sink.pid, args.python, w, f"smtp{w}-{r}"))
    for i, other in enumerate(args.compare_repo):
        makers.append(lambda r, i=i, other=other: Inspector(bed, sink.pid, args.python, args.smtp_workers[0],
                                                            f"cmp{i}-{r}", repo=Path(other).resolve(),
                                                            version=Path(other).name))
    if args.early:
        w0 = args.smtp_workers[0]
        makers.append(lambda r: Inspector(bed, sink.pid, args.python, w0, f"smtpd{r}", decide="depth"))
    suricata = suricata_binary()
    if suricata and args.suricata:
        makers.append(lambda r: Suricata(bed, sink.pid, f"suri{r}"))
    rounds: list[dict[str, dict[str, Any]]] = []
    for r in range(args.rounds):
        this: dict[str, dict[str, Any]] = {}
        k = r % len(makers)
        for make in makers[k:] + makers[:k]:  # rotate the order each round
            flt = make(r)
            log(f"[round {r + 1}/{args.rounds}] {flt.label}: {args.seconds:g} s of load ...")
            try:
                this[flt.name] = run = smtp_run(bed, sink, flt, load, args.python, f"{flt.name}{r}")
                log(f"    {run['tx_per_s']:8.1f} tx/s  p50 {run['p50_ms']:6.1f} ms  p99 {run['p99_ms']:6.1f} ms"
                    + (f"  CPU {run['cpu_us_per_tx']:.1f} us/tx, {run['pkts_per_tx']:.2f} queued pkts/tx"
                       if "cpu_us_per_tx" in run else "")
                    + f"  legit failed {run['legit_failed']}")
            except Exception as e:  # noqa: BLE001 - report it, go on with the next run
                log(f"    FAILED: {type(e).__name__}: {e}")
                this[flt.name] = {"filter": flt.name, "label": flt.label, "error": f"{type(e).__name__}: {e}"}
        ncpu = os.cpu_count() or 1
        for run in this.values():
            none = this.get("none", {})
            base = none.get("tx_per_s")
            if base and "tx_per_s" in run:
                run["ratio"] = run["tx_per_s"] / base
                # the same, per CPU left to this benchmark (other tenants of the machine take some)
                if run.get("cpus_others") is not None and none.get("cpus_others") is not None:
                    run["ratio_cpu_normalized"] = ((run["tx_per_s"] / max(ncpu - run["cpus_others"], 0.1))
                                                   / (base / max(ncpu - none["cpus_others"], 0.1)))
        rounds.append(this)
    profiles = {}
    if args.profile:
        exe = profile.py_spy(args.python)
        if exe is None:
            log("[profile] py-spy not found (pip install py-spy): skipped")
        for make in makers[2:] if exe else []:
            flt = make(args.rounds)
            if isinstance(flt, Suricata):
                continue
            log(f"[profile] {flt.label}: py-spy on worker 0 and the supervisor ({args.seconds:g} s, not measured) ...")
            try:
                profiles[flt.name] = profile_run(bed, sink, flt, load, args, exe)
            except Exception as e:  # noqa: BLE001
                log(f"    FAILED: {type(e).__name__}: {e}")
                profiles[flt.name] = {"error": f"{type(e).__name__}: {e}"}
    note = (suricata if args.suricata else "skipped (--no-suricata)") if suricata else \
        "not installed: apt-get install -t bookworm-backports suricata (Debian 12: add bookworm-backports first)"
    return {"load": {k: v for k, v in load.items() if k not in ("dst", "port")}, "rounds": rounds, "profiles": profiles,
            "suricata": note, "recent_ip_list_tot": Recipe.recent_table_size()}


def profile_run(bed: Bed, sink: Sink, flt: Inspector, load: dict[str, Any], args: argparse.Namespace,
                exe: str) -> dict[str, Any]:
    procs: list[Any] = []
    outs: dict[str, Path] = {}
    try:
        flt.start()
        workers = [p for p in flt.pids if p != flt.proc.pid] if flt.proc else []
        targets = {"worker 0": workers[0] if workers else flt.pids[0]}
        if workers and flt.proc:
            targets["supervisor"] = flt.proc.pid
        outs = {name: bed.dir / f"py-spy-{flt.name}-{name.replace(' ', '')}.txt" for name in targets}

        def go() -> None:
            for name, pid in targets.items():
                procs.append(profile.start(exe, pid, load["seconds"] - 0.5, outs[name]))

        res = run_load(bed, args.python, load, f"gen-profile-{flt.name}", go)
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        flt.stop()
    out: dict[str, Any] = {"label": flt.label, "tx_per_s": res["tx_per_s"]}
    for name, path in outs.items():
        out[name] = profile.summarize(path)
        try:
            keep = Path(f"/tmp/line-rate-py-spy-{flt.name}-{name.replace(' ', '')}.txt")
            keep.write_bytes(path.read_bytes())
            out[name]["raw"] = str(keep)
        except OSError:
            pass
    return out


# -- bulk mail --------------------------------------------------------------------------------

def bulk_check(bed: Bed, sink: Sink, args: argparse.Namespace, size: int = 10_000_000,
               decide: str | None = None) -> dict[str, Any]:
    flt = Inspector(bed, sink.pid, args.python, 2, f"bulk{decide or ''}", decide=decide)
    log(f"[bulk] one {size / 1e6:g} MB message through {flt.label} ...")
    try:
        flt.start()
        bed.s("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
        bed.s("conntrack", "-F", check=False)
        q0 = procfs.queue_totals(sink.pid)
        load = load_config(args, seconds=5, concurrency=1, procs=1, max_tx=1, blocked_every=0, body_size=size,
                           timeout=120.0, legit_base="198.19.254.0", legit_count=1)
        res = run_load(bed, args.python, load, "gen-bulk")
        time.sleep(0.3)
        q1 = procfs.queue_totals(sink.pid)
        ct = bed.s("conntrack", "-L", "-p", "tcp", "--dport", "25", check=False).stdout
    finally:
        try:
            bed.s("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=0", check=False)
        finally:
            flt.stop()
    out: dict[str, Any] = {"label": flt.label, "bytes": size, "ok": res["outcomes"].get("legit:ok", 0) == 1,
                           "outcomes": res["outcomes"],
                           "seconds": res["max_ms"] / 1000, "queued_packets": q1["id_sequence"] - q0["id_sequence"]}
    for line in ct.splitlines():
        m = re.search(r"packets=(\d+) bytes=(\d+)", line)
        if m and "src=198.19.254.1 " in line:
            out["conntrack_client_packets"] = int(m.group(1))
            out["conntrack_client_bytes"] = int(m.group(2))
            mark = re.search(r"mark=(\d+)", line)
            out["conntrack_mark"] = hex(int(mark.group(1))) if mark else None
    log(f"    {out['queued_packets']} packets of the connection reached userspace"
        f" (conntrack: {out.get('conntrack_client_packets')} client packets), delivered: {out['ok']}")
    return out


# -- SYN flood --------------------------------------------------------------------------------

def run_sender(bed: Bed, python: str, cfg: dict[str, Any], name: str, poll: Any = None,
               pin: str | None = None, on_go: Any = None) -> dict[str, Any]:
    prefix = ["taskset", "-c", pin] if pin else []
    sender = bed.spawn(name, bed.client, [*prefix, python, str(FLOOD), json.dumps(cfg)])
    try:
        if sender.readline(120).strip() != b"go":
            raise RuntimeError(f"flood sender did not start:\n{sender.tail()}")
        if on_go:
            on_go()
        deadline = time.monotonic() + float(cfg.get("max_seconds", 30)) + 30
        while time.monotonic() < deadline:
            line = sender.readline(0.05)
            if poll:
                poll()
            if line:
                return json.loads(line)
            if not sender.alive():
                raise RuntimeError(f"flood sender exited:\n{sender.tail()}")
        raise RuntimeError("flood sender did not finish in time")
    finally:
        sender.stop()


def flood_run(bed: Bed, sink: Sink, args: argparse.Namespace, workers: int, tag: str) -> dict[str, Any]:
    """One flood against inspector with ``workers`` workers, or (``workers`` 0) the bare loop: its
    saturated verdicts/s are the floor the inspector's are compared with."""
    n = args.flood_sources
    flt = (Bare(bed, sink.pid, args.python, f"floodbare{tag}") if workers == 0 else
           Inspector(bed, sink.pid, args.python, workers, f"flood{workers}{tag}", rate="limit = 4\nwindow = 60"))
    log(f"[flood] {n:,} sources + {len(ATTACKERS)} attackers x {args.per_attacker} connections against {flt.label} ...")
    silent = False
    try:
        flt.start()
        st0 = flt.status() or {}
        c0, q0, cpu0 = flt.chain_counters(), procfs.queue_totals(sink.pid), flt.cpu()
        peak = {"waiting": 0}

        def poll() -> None:
            peak["waiting"] = max(peak["waiting"], procfs.queue_totals(sink.pid)["waiting"])

        if args.flood_silent:  # spoofed sources do not answer: the client namespace swallows the SYN-ACKs
            bed.c(*SILENT)
            silent = True
        cfg = {"dst": SERVER4, "port": 25, "sources": n, "passes": args.flood_passes, "base": "198.18.0.1",
               "attackers": ATTACKERS, "per_attacker": args.per_attacker, "max_seconds": args.flood_seconds,
               "attacker_connections": True}  # rates count connections whose handshake completed
        mark: dict[str, Any] = {}

        def go() -> None:
            mark["m0"], mark["sink0"], mark["cpu0"] = procfs.machine_cpu(), sink.cpu(), flt.cpu()

        sent = run_sender(bed, args.python, cfg, f"flood-w{workers}-{tag}", poll, args.pin_sender, go)
        # drained: nothing waits in the queue any more
        wait_for(lambda: (poll(), procfs.queue_totals(sink.pid)["waiting"] == 0)[1], 30, 0.01, "the queue to drain")
        t_drained = time.monotonic()
        m1, sink1, cpu_drained = procfs.machine_cpu(), sink.cpu(), flt.cpu()
        time.sleep(1.5)  # workers report their counts to the supervisor once a second
        st1 = flt.status() or {}
        c1, q1, cpu1 = flt.chain_counters(), procfs.queue_totals(sink.pid), flt.cpu()
        rss = flt.peak_rss_kb()
        alive = flt.alive()
        conntrack_entries = bed.s("conntrack", "-C", check=False).stdout.strip()

        # the attackers went over the limit during the flood: banned, so the kernel drops them
        with contextlib.suppress(TimeoutError):
            if workers:  # the bare loop bans nothing
                wait_for(lambda: set(ATTACKERS) <= flt.banned(), 5, what="every attacker banned")
        banned = sorted(set(ATTACKERS) & flt.banned())
        c2, q2 = flt.chain_counters(), procfs.queue_totals(sink.pid)
        more = 50
        if banned:
            run_sender(bed, args.python, {"dst": SERVER4, "port": 25, "sources": 0, "base": "198.18.0.1",
                                          "attackers": banned, "per_attacker": more, "max_seconds": 10},
                       f"flood-bans-w{workers}-{tag}")
            time.sleep(0.5)
        c3, q3 = flt.chain_counters(), procfs.queue_totals(sink.pid)
        events = flt.events()
        alive_end = flt.alive()
    finally:
        if silent:
            bed.c(*[("-D" if a == "-A" else a) for a in SILENT], check=False)
        flt.stop()
    verdicts = int(st1.get("packets", 0)) - int(st0.get("packets", 0))
    if not workers:  # the bare loop accepts every packet it reads: the queue's id delta, drained
        verdicts = procfs.delta(q1, q0)["id_sequence"] - procfs.delta(q1, q0)["queue_dropped"] \
            - procfs.delta(q1, q0)["user_dropped"]
    dq = procfs.delta(q1, q0)
    nfq = c1["nfqueue"] - c0["nfqueue"]
    elapsed = t_drained - sent["t_go"]
    cpu = sum(cpu1.get(p, 0) - cpu0.get(p, 0) for p in cpu1)
    # CPU of the machine while the flood ran, and the part of it that was ours
    wall = m1[1] - mark["m0"][1]
    busy = m1[0] - mark["m0"][0]
    ours = (sent["cpu"] + (sink1 - mark["sink0"])
            + sum(cpu_drained.get(p, 0) - mark["cpu0"].get(p, 0) for p in cpu_drained))
    per_worker = {k: v.get("packets") for k, v in (st1.get("per_worker") or {}).items()}
    out = {
        "workers": workers, "sources": n, "passes": args.flood_passes, "attackers": len(ATTACKERS),
        "per_attacker": args.per_attacker,
        "sent": sent["sent"], "send_errors": sent["errors"], "send_seconds": sent["seconds"], "send_rate": sent["rate"],
        "sender_cpu_s": sent["cpu"], "complete": sent["complete"],
        "reached_filter": nfq + (c1["ban_drop"] - c0["ban_drop"]) + (c1["invalid_drop"] - c0["invalid_drop"]),
        "queue_rule": nfq, "ban_drops_during": c1["ban_drop"] - c0["ban_drop"],
        "verdicts": verdicts, "per_worker": per_worker, "seconds": elapsed, "verdicts_per_s": verdicts / elapsed,
        "id_sequence": dq["id_sequence"], "queue_dropped": dq["queue_dropped"], "user_dropped": dq["user_dropped"],
        "fail_open": nfq - verdicts - dq["queue_dropped"] - dq["user_dropped"], "peak_waiting": peak["waiting"],
        "cpu_s": cpu, "cpu_us_per_verdict": cpu * 1e6 / verdicts if verdicts else None,
        "cpu_per_process": {str(p): round(cpu1.get(p, 0) - cpu0.get(p, 0), 2) for p in cpu1},
        "peak_rss_kb": {str(k): v for k, v in rss.items()},
        "peak_rss_mb_max": max((v or 0) for v in rss.values()) / 1024,
        "peak_rss_mb_sum": sum((v or 0) for v in rss.values()) / 1024,
        "alive_after_flood": all(alive.values()), "alive_at_end": all(alive_end.values()),
        "worker_exits": sum(1 for e in events if e.get("what") == "worker-exit"),
        "error_events": sum(1 for e in events if e.get("event") == "error"),
        "counts": st1.get("counts"), "conntrack_entries": conntrack_entries,
        "cpus_busy": busy / wall * (os.cpu_count() or 1) if wall else None,
        "cpus_ours": ours / elapsed, "cpus_others": max(0.0, busy / wall * (os.cpu_count() or 1) - ours / elapsed)
        if wall else None,
        "bans": {"attackers_banned": len(banned), "attackers": len(ATTACKERS), "syns_sent_after": more * len(banned),
                 "ban_drop_delta": c3["ban_drop"] - c2["ban_drop"],
                 "id_sequence_delta": q3["id_sequence"] - q2["id_sequence"],
                 "queue_rule_delta": c3["nfqueue"] - c2["nfqueue"]},
    }
    log(f"    sent {out['sent']:,} in {out['send_seconds']:.1f} s ({out['send_rate']:,.0f}/s); verdicts {verdicts:,}"
        f" ({out['verdicts_per_s']:,.0f}/s); fail-open {out['fail_open']:,}; "
        f"drops {dq['queue_dropped'] + dq['user_dropped']}"
        f"; peak RSS {out['peak_rss_mb_max']:.0f} MB; banned {len(banned)}/{len(ATTACKERS)}")
    return out


def flood_warmup(bed: Bed, args: argparse.Namespace) -> dict[str, Any]:
    """One unmeasured flood with conntrack on and no queue: the first flood after boot (or a
    while) runs much slower while the kernel grows its conntrack and socket slabs."""
    rule = ["iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "25", "-m", "conntrack", "--ctstate", "INVALID",
            "-j", "DROP"]
    had_table = "*filter" in bed.s("iptables-save", check=False).stdout
    bed.s(*rule)
    try:
        log(f"[flood] warm-up: {args.flood_sources * args.flood_passes:,} SYNs, no filter (not measured) ...")
        return run_sender(bed, args.python, {"dst": SERVER4, "port": 25, "sources": args.flood_sources,
                                             "passes": args.flood_passes, "base": "198.18.0.1",
                                             "max_seconds": args.flood_seconds}, "flood-warmup", None, args.pin_sender)
    finally:
        bed.s(*[("-D" if a == "-A" else a) for a in rule], check=False)
        if not had_table:
            bed.s("nft", "delete", "table", "ip", "filter", check=False)
        bed.s("conntrack", "-F", check=False)


def flood_benchmark(bed: Bed, sink: Sink, args: argparse.Namespace) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    warm = flood_warmup(bed, args)
    for r in range(args.flood_rounds):
        kinds = (0, 1, 2) if args.bare else (1, 2)  # 0: the bare loop
        for w in (kinds if r % 2 == 0 else tuple(reversed(kinds))):  # alternate the order
            try:
                run = flood_run(bed, sink, args, w, str(r))
            except Exception as e:  # noqa: BLE001
                log(f"    FAILED: {type(e).__name__}: {e}")
                run = {"workers": w, "error": f"{type(e).__name__}: {e}"}
            run["round"] = r + 1
            runs.append(run)
    ncpu = os.cpu_count() or 1
    for x in runs:
        if x.get("cpus_others") is not None and "verdicts_per_s" in x:
            # per CPU left to this benchmark, scaled to the whole machine (the flood is CPU-bound)
            x["verdicts_per_s_norm"] = x["verdicts_per_s"] * ncpu / max(ncpu - x["cpus_others"], 0.1)
    med, med_norm, us = {}, {}, {}
    for w in (0, 1, 2):
        rates = [x["verdicts_per_s"] for x in runs if x["workers"] == w and "verdicts_per_s" in x]
        med[w] = statistics.median(rates) if rates else None
        normed = [x["verdicts_per_s_norm"] for x in runs if x["workers"] == w and "verdicts_per_s_norm" in x]
        med_norm[w] = statistics.median(normed) if normed else None
        cost = [x["cpu_us_per_verdict"] for x in runs if x["workers"] == w and x.get("cpu_us_per_verdict")]
        us[w] = statistics.median(cost) if cost else None
    per_round = []
    for r in range(args.flood_rounds):
        got = {x["workers"]: x.get("verdicts_per_s") for x in runs if x["round"] == r + 1}
        if got.get(1) and got.get(2):
            per_round.append(got[2] / got[1])
    return {"runs": runs, "median_verdicts_per_s": {str(k): v for k, v in med.items()},
            "ratio_2_over_1": med[2] / med[1] if med[1] and med[2] else None, "ratio_per_round": per_round,
            "median_verdicts_per_s_norm": {str(k): v for k, v in med_norm.items()},
            "ratio_2_over_1_norm": med_norm[2] / med_norm[1] if med_norm[1] and med_norm[2] else None,
            "median_us_per_verdict": {str(k): v for k, v in us.items()},
            "capacity_one_core_per_worker": {str(w): max(w, 1) * 1e6 / v for w, v in us.items() if v},
            "ratio_1_over_bare": med[1] / med[0] if med[0] and med[1] else None,
            "silent_sources": args.flood_silent, "sender_pinned_to_cpu": args.pin_sender,
            "warmup": {k: warm.get(k) for k in ("sent", "rate", "seconds")}}


# -- report -------------------------------------------------------------------------------------

def fmt(v: Any, spec: str = ".1f", none: str = "-") -> str:
    if v is None:
        return none
    return format(v, spec)


def report_smtp(smtp: dict[str, Any], args: argparse.Namespace) -> list[str]:
    rounds = smtp["rounds"]
    load = smtp["load"]
    names: list[str] = []
    for r in rounds:
        names += [n for n in r if n not in names]
    order = {"none": 0, "recipe": 1, "suricata": 4}
    names.sort(key=lambda n: (order.get(n, 2 if n.startswith("bare") else 3), "depth" in n, n))
    lines = [f"== SMTP line rate: {len(rounds)} round(s) x {load['seconds']:g} s per filter, interleaved;"
             f" concurrency C={load['concurrency']} ({load['procs']} generator processes);"
             f" 1 in {load['blocked_every']} transactions to blocked.test (plain/upper/split in turn)",
             "   sink: aiosmtpd (server ns), ~600-byte body; sources 198.18.0.0/16 (legit), 198.19.0.0/16 (blocked)",
             "", "per round:  tx/s (ratio to no filter in the same round; CPUs used meanwhile by processes not"
             " ours, from /proc/stat)"]
    for i, r in enumerate(rounds):
        cells = []
        for n in names:
            run = r.get(n, {})
            if "tx_per_s" in run:
                cells.append(f"{run['label']}: {run['tx_per_s']:.0f} ({run.get('ratio', 0):.3f}; others"
                             f" {fmt(run.get('cpus_others'), '.2f')} CPU)")
            else:
                cells.append(f"{run.get('label', n)}: FAILED {run.get('error', '')[:60]}")
        lines.append(f"  round {i + 1}: " + "  |  ".join(cells))
    lines.append("")
    head = (f"{'filter':<28}{'tx/s':>7}{'ratio':>7}{'(min-max)':>13}{'norm':>6}{'p50 ms':>8}{'p99 ms':>8}"
            f"{'CPU us/tx':>10}"
            f"{'us/pkt':>8}{'pkts/tx':>8} {'plain':>11}{'upper':>11}{'split':>11}  {'reset seen':>11}"
            f"{'srv told':>10}{'legit fail':>11}")
    lines += [head, "-" * len(head)]
    summary = {}
    for n in names:
        runs = [r[n] for r in rounds if n in r and "tx_per_s" in r[n]]
        if not runs:
            lines.append(f"{n:<28}  (no successful run)")
            continue
        label = runs[0]["label"]
        ratios = [x["ratio"] for x in runs if "ratio" in x]
        normed = [x["ratio_cpu_normalized"] for x in runs if "ratio_cpu_normalized" in x]
        tx = sum(x["tx"] for x in runs)
        s: dict[str, Any] = {"label": label, "runs": len(runs),
                             "tx_per_s": statistics.median(x["tx_per_s"] for x in runs),
                             "ratio": statistics.median(ratios) if ratios else None,
                             "ratio_min": min(ratios) if ratios else None, "ratio_max": max(ratios) if ratios else None,
                             "ratio_cpu_normalized": statistics.median(normed) if normed else None,
                             "cpus_others": statistics.mean(x["cpus_others"] for x in runs
                                                            if x.get("cpus_others") is not None)
                             if any(x.get("cpus_others") is not None for x in runs) else None,
                             "p50_ms": statistics.median(x["p50_ms"] for x in runs),
                             "p99_ms": statistics.median(x["p99_ms"] for x in runs),
                             "legit_failed": sum(x["legit_failed"] for x in runs),
                             "legit": sum(x["legit"] for x in runs),
                             "server_told": sum(x["sink"]["reset_by_peer"] for x in runs),
                             "sink_cpu_us_per_tx": sum(x["sink_cpu_s"] for x in runs) * 1e6 / tx,
                             "gen_cpu_us_per_tx": sum(x["gen_cpu_s"] for x in runs) * 1e6 / tx}
        for kind in KINDS:
            s[kind] = {k: sum(x[kind][k] for x in runs) for k in ("expected", "blocked", "reset")}
        blocked_total = sum(s[k]["blocked"] for k in KINDS)
        expected_total = sum(s[k]["expected"] for k in KINDS)
        s["reset_seen"] = sum(s[k]["reset"] for k in KINDS)
        if n.startswith("inspector") or n.startswith("bare") or n == "suricata":
            cpu = sum(x["cpu_s"] for x in runs)
            queued = sum(x["queued"] for x in runs)
            s.update({"cpu_us_per_tx": cpu * 1e6 / tx, "cpu_us_per_pkt": cpu * 1e6 / queued if queued else None,
                      "pkts_per_tx": queued / tx, "queue_drops": sum(x["queue_drops"] for x in runs),
                      "error_events": sum(x["error_events"] for x in runs), "alive": all(x["alive"] for x in runs)})
            cpu_cells = f"{s['cpu_us_per_tx']:>10.1f}{fmt(s['cpu_us_per_pkt']):>8}{s['pkts_per_tx']:>8.2f} "
        elif n == "recipe":
            cpu_cells = f"{'in kernel':>10}{'-':>8}{'-':>8} "
        else:
            cpu_cells = f"{'-':>10}{'-':>8}{'-':>8} "
        summary[n] = s
        rng = f"{fmt(s['ratio_min'], '.3f')}-{fmt(s['ratio_max'], '.3f')}" if ratios else "-"
        kinds = "".join(f"{str(s[k]['blocked']) + '/' + str(s[k]['expected']):>11}" for k in KINDS)
        lines.append(f"{label:<28}{s['tx_per_s']:>7.0f}{fmt(s['ratio'], '.3f'):>7}{rng:>13}"
                     f"{fmt(s['ratio_cpu_normalized'], '.2f'):>6}{s['p50_ms']:>8.1f}"
                     f"{s['p99_ms']:>8.1f}{cpu_cells}{kinds}  {str(s['reset_seen']) + '/' + str(blocked_total):>11}"
                     f"{str(s['server_told']) + '/' + str(blocked_total):>10}"
                     f"{str(s['legit_failed']) + '/' + str(s['legit']):>11}")
        s["blocked_total"], s["expected_total"] = blocked_total, expected_total
    if "suricata" not in summary:
        lines.append(f"{'Suricata 7 NFQ':<28}  {smtp['suricata']}")
    smtp["summary"] = summary
    lines.append("")
    lines.append("CPU per transaction of every process in the test (us; kernel work done in a process's context,"
                 " e.g. TCP receive during a verdict, counts for that process):")
    base_total = None
    for n, s in summary.items():
        total = s["sink_cpu_us_per_tx"] + s["gen_cpu_us_per_tx"] + s.get("cpu_us_per_tx", 0.0)
        s["all_cpu_us_per_tx"] = total
        if n == "none":
            base_total = total
        extra = f"   vs no filter {total - base_total:+7.1f}" if base_total is not None else ""
        lines.append(f"  {s['label']:<28} sink {s['sink_cpu_us_per_tx']:7.1f}   "
                     f"load generator {s['gen_cpu_us_per_tx']:7.1f}"
                     f"   filter {fmt(s.get('cpu_us_per_tx'), '7.1f', '      -')}   all {total:7.1f}{extra}")
    rec = [r["recipe"]["recipe"] for r in rounds if "recipe" in r.get("recipe", {})]
    if rec:
        lines.append(f"recipe counters (all rounds): string REJECT matched {sum(x['reject'] for x in rec)} packets; "
                     f"recent DROP matched {sum(x['recent_drop'] for x in rec)}; recent table held "
                     f"{max((x['recent_entries_after'] or 0) for x in rec)} addresses at the end of a run "
                     f"(ip_list_tot = {smtp['recent_ip_list_tot']})")
    for name in names[2:]:
        ins = [r[name] for r in rounds if "cpu_s" in r.get(name, {})]
        if not ins:
            continue
        counts: dict[str, int] = {}
        for x in ins:
            for k, v in (x.get("counts") or {}).items():
                counts[k] = counts.get(k, 0) + v
            if x.get("alerts") is not None:
                counts["alerts (fast.log)"] = counts.get("alerts (fast.log)", 0) + x["alerts"]
        lines.append(f"{ins[0]['label']} counts (all rounds): {json.dumps(counts, sort_keys=True)}; queue drops "
                     f"{sum(x['queue_drops'] for x in ins)}; error events {sum(x['error_events'] for x in ins)}; "
                     f"processes alive at the end of each run: {all(x['alive'] for x in ins)}")
    for name, prof in smtp.get("profiles", {}).items():
        if "error" in prof:
            lines.append(f"profile {name}: FAILED {prof['error']}")
            continue
        for who in ("worker 0", "supervisor"):
            s = prof.get(who)
            if not s or "busy" not in s:
                continue
            lines.append("")
            lines.append(f"py-spy, {prof['label']}, {who}: {s['busy']} busy samples of {s['samples']} (the rest"
                         f" waited in select); raw stacks: {s.get('raw', '-')}")
            lines.append("   inclusive (share of busy samples)                          | self")
            for i in range(max(len(s["inclusive"]), len(s["self"]))):
                a = s["inclusive"][i] if i < len(s["inclusive"]) else ("", "")
                b = s["self"][i] if i < len(s["self"]) else ("", "")
                lines.append(f"   {str(a[1]):>5}% {a[0][:55]:<55} | {str(b[1]):>5}% {b[0][:60]}")
    return lines


def report_bulk(bulks: list[dict[str, Any]]) -> list[str]:
    lines = ["== bulk mail: one 10 MB message, nothing else running; packets of its connection that reached"
             " userspace (queue id_sequence delta; target <= 20)"]
    for bulk in bulks:
        if "error" in bulk:
            lines.append(f"   FAILED {bulk['error']}")
            continue
        lines.append(f"   {bulk['label']:<30} {bulk['queued_packets']:>4} packets to userspace; "
                     f"delivered: {bulk['ok']};"
                     f" client->server packets of the connection (conntrack, after GRO): "
                     f"{bulk.get('conntrack_client_packets')}, {bulk.get('conntrack_client_bytes')} bytes;"
                     f" connmark {bulk.get('conntrack_mark')}; {bulk['seconds']:.2f} s")
    return lines


def report_flood(flood: dict[str, Any]) -> list[str]:
    runs = flood["runs"]
    first = next((r for r in runs if "sources" in r), None)
    if first is None:
        return ["== SYN flood: FAILED " + "; ".join(r.get("error", "") for r in runs)]
    lines = [f"== SYN flood: {first['sources']:,} distinct sources x {first['passes']} SYN(s) each (198.18.0.0/15),"
             f" plus {first['attackers']} attackers x up to {first['per_attacker']} real connections during it;"
             f" one Python raw-socket sender in the client ns"
             f"{' pinned to CPU ' + flood['sender_pinned_to_cpu'] if flood['sender_pinned_to_cpu'] else ''};"
             f" flood sources {'silent (SYN-ACKs dropped)' if flood['silent_sources'] else 'answer SYN-ACKs with RST'};"
             f" inspector: > 4 proven connections in 60 s -> reset + ban (bare SYNs never count)"]
    head = (f"{'round':>5}{'workers':>8}{'sent':>9}{'send/s':>9}{'reached':>9}{'verdicts':>10}{'verdicts/s':>11}"
            f"{'fail-open':>10}{'q drops':>8}{'peak q':>8}{'us/verdict':>11}{'RSS MB max':>11}{'sum':>6}{'alive':>7}"
            f"{'exits':>6}{'CPUs ours/others':>17}")
    lines += [head, "-" * len(head)]
    for r in runs:
        if "error" in r:
            lines.append(f"{r['round']:>5}{r['workers'] or 'bare':>8}  FAILED {r['error']}")
            continue
        lines.append(f"{r['round']:>5}{r['workers'] or 'bare':>8}{r['sent']:>9,}{r['send_rate']:>9,.0f}"
                     f"{r['reached_filter']:>9,}"
                     f"{r['verdicts']:>10,}{r['verdicts_per_s']:>11,.0f}{r['fail_open']:>10,}"
                     f"{r['queue_dropped'] + r['user_dropped']:>8}{r['peak_waiting']:>8}"
                     f"{fmt(r['cpu_us_per_verdict']):>11}"
                     f"{r['peak_rss_mb_max']:>11.1f}{r['peak_rss_mb_sum']:>6.0f}"
                     f"{'yes' if r['alive_at_end'] else 'NO':>7}"
                     f"{r['worker_exits']:>6}{fmt(r['cpus_ours'], '.2f') + ' / ' + fmt(r['cpus_others'], '.2f'):>17}")
    med = flood["median_verdicts_per_s"]
    lines.append(f"median verdicts/s: bare loop {fmt(med.get('0'), ',.0f')}, 1 worker {fmt(med.get('1'), ',.0f')},"
                 f" 2 workers {fmt(med.get('2'), ',.0f')};"
                 f" ratio 2/1 = {fmt(flood['ratio_2_over_1'], '.2f')} (per round: "
                 f"{', '.join(format(x, '.2f') for x in flood['ratio_per_round']) or '-'})")
    norm = flood.get("median_verdicts_per_s_norm", {})
    us = flood.get("median_us_per_verdict", {})
    cap = flood.get("capacity_one_core_per_worker", {})
    lines.append(f"  scaled to the whole machine (verdicts/s x CPUs / CPUs not taken by other tenants): 1 worker"
                 f" {fmt(norm.get('1'), ',.0f')}, 2 workers {fmt(norm.get('2'), ',.0f')};"
                 f" ratio {fmt(flood.get('ratio_2_over_1_norm'), '.2f')}")
    lines.append(f"  inspector CPU per verdict (median): 1 worker {fmt(us.get('1'))} us, "
                 f"2 workers {fmt(us.get('2'))} us"
                 f" -> with a free core per worker: {fmt(cap.get('1'), ',.0f')} vs {fmt(cap.get('2'), ',.0f')}"
                 f" verdicts/s. The sender (with the kernel's receive path, which runs in its context) needs"
                 f" a core of its own here, so on {os.cpu_count()} CPUs 2 workers share what it leaves.")
    for r in runs:
        if "error" in r:
            continue
        b = r["bans"]
        lines.append(f"round {r['round']} workers={r['workers']}: per-worker verdicts {r['per_worker'] or '-'};"
                     f" CPU: sender {r['sender_cpu_s']:.1f} s, inspector {r['cpu_s']:.1f} s {r['cpu_per_process']};"
                     f" conntrack entries after: {r['conntrack_entries']}")
        lines.append(f"    bans: {b['attackers_banned']}/{b['attackers']} attackers banned during the flood;"
                     f" {b['syns_sent_after']} more SYNs from them -> ban DROP rule counter +{b['ban_drop_delta']},"
                     f" NFQUEUE rule +{b['queue_rule_delta']}, queue id_sequence +{b['id_sequence_delta']}")
    return lines


def replay_target(args: argparse.Namespace) -> dict[str, Any]:
    """``replay_flows.py`` (replay of a new-flow-heavy capture vs a bare pass, one run) as a child."""
    argv = [args.python, str(Path(__file__).with_name("replay_flows.py"))] + (["--quick"] if args.quick else [])
    log("[replay] a new-flow-heavy capture: replay vs a bare pass ...")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=1800, cwd=REPO)
    out: dict[str, Any] = {"output": r.stdout, "error": r.stderr.strip()[-2000:] if r.returncode else None}
    m = re.search(r"TARGET .*?: ([\d.]+)x", r.stdout)
    out["ratio"] = float(m.group(1)) if m else None
    return out


def verdict(value: float | None, ok: bool | None) -> str:
    return "not measured" if value is None else ("met" if ok else "NOT met")


def report_targets(results: dict[str, Any]) -> list[str]:
    """Every target of issue 16 with the figure measured in this run."""
    lines = ["== targets (issue 16), from this run"]
    summary = results.get("smtp", {}).get("summary", {})
    ins = summary.get("inspector-w1")
    bare = summary.get("bare")
    suri = summary.get("suricata")
    pkts = ins.get("pkts_per_tx") if ins else None
    lines.append(f"TARGET queued packets per non-pipelining transaction <= 4: inspector (1 worker) {fmt(pkts, '.2f')}"
                 f" -> {verdict(pkts, pkts is not None and pkts <= 4)}")
    r = (ins["cpu_us_per_pkt"] / bare["cpu_us_per_pkt"]
         if ins and bare and ins.get("cpu_us_per_pkt") and bare.get("cpu_us_per_pkt") else None)
    lines.append(f"TARGET per queued packet <= 1.5x the bare loop: inspector (1 worker)"
                 f" {fmt(ins and ins.get('cpu_us_per_pkt'))} us / bare {fmt(bare and bare.get('cpu_us_per_pkt'))} us"
                 f" = {fmt(r, '.2f')}x -> {verdict(r, r is not None and r <= 1.5)}")
    for name, other in summary.items():
        if name.startswith("inspector-w1-") and "depth" not in name and other.get("cpu_us_per_pkt") and bare \
                and bare.get("cpu_us_per_pkt"):  # --compare-repo rows, against the same bare loop
            ratio = other["cpu_us_per_pkt"] / bare["cpu_us_per_pkt"]
            lines.append(f"    the same for {other['label']}: {other['cpu_us_per_pkt']:.1f} us /"
                         f" {bare['cpu_us_per_pkt']:.1f} us = {ratio:.2f}x, {other['pkts_per_tx']:.2f} queued"
                         f" packets and {other['cpu_us_per_tx']:.1f} us per transaction")
    if suri is None:
        lines.append(f"TARGET CPU per transaction <= 0.5x Suricata's: no Suricata row"
                     f" ({results.get('smtp', {}).get('suricata', 'not run')})")
    else:
        r = ins["cpu_us_per_tx"] / suri["cpu_us_per_tx"] if ins and suri.get("cpu_us_per_tx") else None
        lines.append(f"TARGET CPU per transaction <= 0.5x Suricata's: inspector (1 worker)"
                     f" {fmt(ins and ins.get('cpu_us_per_tx'))} us / Suricata {fmt(suri.get('cpu_us_per_tx'))} us"
                     f" = {fmt(r, '.2f')}x -> {verdict(r, r is not None and r <= 0.5)}; tx/s ratio to no filter:"
                     f" inspector {fmt(ins and ins.get('ratio'), '.2f')}, Suricata {fmt(suri.get('ratio'), '.2f')};"
                     f" blocked and reset: inspector {ins and ins.get('reset_seen')}/"
                     f"{ins and ins.get('blocked_total')},"
                     f" Suricata {suri.get('reset_seen')}/{suri.get('blocked_total')}")
    flood = results.get("flood")
    if flood:
        med = flood["median_verdicts_per_s"]
        us = flood.get("median_us_per_verdict", {})
        r = us["0"] / us["1"] if us.get("0") and us.get("1") else None
        rss = [x["peak_rss_mb_max"] for x in flood["runs"] if x.get("workers") == 1 and "peak_rss_mb_max" in x]
        lines.append(f"TARGET flood verdicts/s per worker >= 0.5x the bare loop's saturated verdicts/s: with a core"
                     f" saturated (1e6 / CPU us per verdict) 1 worker {fmt(us.get('1') and 1e6 / us['1'], ',.0f')}"
                     f" / bare {fmt(us.get('0') and 1e6 / us['0'], ',.0f')} = {fmt(r, '.2f')}x ->"
                     f" {verdict(r, r is not None and r >= 0.5)} (as sent here, not saturated: 1 worker"
                     f" {fmt(med.get('1'), ',.0f')}/s, bare {fmt(med.get('0'), ',.0f')}/s); peak RSS of the"
                     f" worker per round (MB): {', '.join(format(x, '.0f') for x in rss) or '-'}")
    else:
        lines.append("TARGET flood verdicts/s: not run (--flood or --all)")
    rep = results.get("replay")
    if rep:
        r = rep.get("ratio")
        lines.append(f"TARGET replay of a new-flow-heavy capture >= 0.5x a bare pass: {fmt(r, '.3f')}x ->"
                     f" {verdict(r, r is not None and r >= 0.5)}" + (f" ({rep['error']})" if rep.get("error") else ""))
    else:
        lines.append("TARGET replay: not run (--all, or benchmarks/replay_flows.py)")
    w = sorted((int(n.split("-w")[1]), s) for n, s in summary.items()
               if n.startswith("inspector-w") and "-" not in n[len("inspector-w"):])
    if len(w) > 1:
        cells = "; ".join(f"{n} worker(s): tx/s ratio {fmt(s.get('ratio'), '.2f')}, {fmt(s.get('cpu_us_per_tx'))} us/tx"
                          for n, s in w)
        lines.append(f"TARGET defaults from measurement: {cells}; default rule: one worker per two CPUs"
                     f" (at least one), so {max(1, (os.cpu_count() or 1) // 2)} here")
    return lines


METHOD = """\
How the figures are measured:
  tx/s         transactions (any outcome) that ended inside the load window / window length, from the
               generator (median over rounds); ratio = tx/s over the no-filter run of the same round
               (median, min-max over rounds).
  norm         the same ratio with each run's tx/s divided by the CPUs left to this benchmark (2 minus
               what /proc/stat shows busy beyond our own processes: the machine is shared).
  p50/p99      latency from connect() to the QUIT reply, legitimate transactions that ended in the window
               (per run; median over rounds).
  CPU us/tx    inspector: utime+stime (/proc/PID/stat) of the supervisor and its workers (Suricata: its
               process, all threads; the bare loop: its processes) between the
               generator's "go" and "done", over every transaction of the run (recipe: runs in the kernel,
               its cost lands in the sink's and generator's system time, see the second table).
  us/pkt, pkts/tx  the same CPU over the queue's id_sequence delta (/proc/net/netfilter/nfnetlink_queue
               read inside the server namespace through /proc/<sink pid>/net), and that delta per transaction.
  plain/upper/split  blocked/expected: blocked-domain transactions that were not delivered (client view).
  reset seen   blocked transactions whose client got ECONNRESET (or EOF) within 1 s of the RCPT.
  srv told     connections the sink saw reset by the peer (the MTA learned the session is dead).
  flood        verdicts = packets the inspector processed (control socket status, summed over workers);
               verdicts/s = verdicts / (first SYN sent -> queue drained); reached = SYNs counted by the
               INSPECTOR chain's NFQUEUE + ban-DROP rules; fail-open = NFQUEUE-rule packets - verdicts -
               queue_dropped - user_dropped (what the kernel let through without a verdict); peak RSS =
               VmHWM of each inspector process; CPUs ours/others = CPU time of our processes (sender, sink,
               inspector) and the rest of /proc/stat's busy time, per second of the flood."""


def preflight(python: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables and ipset inside them)"
    for tool in ("ip", "iptables", "ip6tables", "iptables-save", "ipset", "nft", "conntrack"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/bootstrap.sh installs it)"
    r = subprocess.run([python, "-c", "import netfilterqueue, aiosmtpd, pyroute2, inspector"], capture_output=True,
                       text=True, cwd=REPO)
    if r.returncode:
        return f"{python} lacks a module: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else '?'}"
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="CI smoke test: 1 round of a few seconds, then a 10,000-source flood")
    p.add_argument("--seconds", type=float, help="load per filter run (default 8; --quick 4)")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 8; --quick 1)")
    p.add_argument("--concurrency", type=int, help="concurrent SMTP connections (default 300: enough to keep the"
                   " sink saturated behind every filter; --quick 60)")
    p.add_argument("--procs", type=int, default=2, help="load generator processes (default 2)")
    p.add_argument("--smtp-workers", default=None,
                   help="inspector worker counts for the SMTP runs, one row each (default: 1 and one per CPU)")
    p.add_argument("--no-bare", dest="bare", action="store_false",
                   help="skip the bare NetfilterQueue loop (the binding's floor per packet)")
    p.add_argument("--bare-workers", default="1",
                   help="bare loops: process counts (one queue each), comma-separated; default 1")
    p.add_argument("--bare-modes", default="blocking",
                   help="bare loops to run, comma-separated: blocking (the binding's run()), select (the"
                        " service's reading pattern), batch (one batch verdict per wakeup); default blocking")
    p.add_argument("--flood", action="store_true", help="run the SYN flood only")
    p.add_argument("--all", action="store_true", help="SMTP line rate, bulk mail and the SYN flood")
    p.add_argument("--flood-sources", type=int, help="distinct flood sources (default 100,000; --quick 10,000)")
    p.add_argument("--flood-seconds", type=float, default=60, help="bound on the flood's sending time")
    p.add_argument("--flood-passes", type=int, help="SYNs per flood source, one per pass (default 2: 200,000"
                   " connections stay under the 262,144-entry conntrack table; --quick 1; at most 4, the rate limit)")
    p.add_argument("--flood-silent", action="store_true",
                   help="flood sources stay silent (SYN-ACKs dropped in the client namespace) instead of answering RST")
    p.add_argument("--flood-rounds", type=int, help="flood runs per worker count, interleaved (default 3; --quick 1)")
    p.add_argument("--pin-sender", metavar="CPU", help="pin the flood sender to this CPU (taskset -c)")
    p.add_argument("--per-attacker", type=int, default=20, help="SYNs per attacker during the flood")
    p.add_argument("--blocked-every", type=int, default=20,
                   help="every Nth transaction goes to the blocked domain (default 20: 5 %%; 0: none)")
    p.add_argument("--profile", action="store_true",
                   help="after the rounds, one more (unmeasured) run per inspector configuration with py-spy"
                        " sampling worker 0 and the supervisor")
    p.add_argument("--no-early", action="store_true",
                   help='skip the second inspector configuration, [stream] decide = "depth" (the default is "early")')
    p.add_argument("--no-bulk", action="store_true", help="skip the 10 MB bulk-mail check")
    p.add_argument("--compare-repo", action="append", default=[], metavar="PATH",
                   help="also run the inspector of another checkout (e.g. the code before a change) as one more"
                        " interleaved row, with the first --smtp-workers count; may be repeated")
    p.add_argument("--no-suricata", dest="suricata", action="store_false",
                   help="skip the Suricata row (it runs only where suricata is installed)")
    p.add_argument("--json", default="/tmp/line-rate-results.json", help="where to write the results")
    p.add_argument("--python", default=sys.executable, help="interpreter with inspector, NetfilterQueue, aiosmtpd")
    p.add_argument("--keep", action="store_true", help="keep the working directory (logs, events) for inspection")
    args = p.parse_args()
    q = args.quick
    args.seconds = args.seconds or (4.0 if q else 8.0)
    args.rounds = args.rounds or (1 if q else 8)
    args.concurrency = args.concurrency or (60 if q else 300)
    args.flood_sources = args.flood_sources or (10_000 if q else 100_000)
    args.flood_passes = args.flood_passes or (1 if q else 2)
    args.flood_rounds = args.flood_rounds or (1 if q else 3)
    args.bare_modes = [m for m in args.bare_modes.split(",") if m]
    try:
        args.bare_workers = [int(x) for x in args.bare_workers.split(",")]
    except ValueError:
        p.error("--bare-workers takes process counts separated by commas, e.g. 1,2")
    if not set(args.bare_modes) <= {"blocking", "select", "batch"}:
        p.error("--bare-modes: blocking, select, batch")
    ncpu = os.cpu_count() or 1
    try:
        args.smtp_workers = ([int(x) for x in args.smtp_workers.split(",")] if args.smtp_workers
                             else sorted({1, ncpu}))
    except ValueError:
        p.error("--smtp-workers takes worker counts separated by commas, e.g. 1,2")
    if not all(1 <= w <= 64 for w in args.smtp_workers) or len(set(args.smtp_workers)) != len(args.smtp_workers):
        p.error("--smtp-workers: distinct counts in 1..64")
    do_smtp = not args.flood or args.all
    do_bulk = do_smtp and not args.no_bulk
    do_flood = args.flood or args.all or q
    if not 0 <= args.blocked_every <= 1000 or args.blocked_every == 1:
        p.error("--blocked-every must be 0 (none) or 2..1000")
    if (args.seconds <= 0 or args.seconds > 300 or args.rounds < 1 or args.rounds > 50
            or not 1 <= args.concurrency <= 5000):
        p.error("--seconds must be in (0, 300], --rounds 1..50, --concurrency 1..5000")
    if not 1 <= args.flood_sources <= 120_000:
        p.error("--flood-sources must be 1..120,000 (198.18.0.0/15 minus the blocked and attacker pools)")
    if not 1 <= args.flood_passes <= 4:
        p.error("--flood-passes must be 1..4 (a fifth SYN within 60 s would get a flood source banned)")
    why = preflight(args.python)
    if why:
        print(f"line_rate: cannot run: {why}", file=sys.stderr)
        return 2
    probe_dir = Path(tempfile.mkdtemp(prefix="line-rate-probe-"))
    try:
        args.early = not args.no_early and supports_decide_early(args.python, probe_dir)
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # also SIGINT: a shell starts background jobs with SIGINT ignored, and Ctrl-C must still clean up
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    t_start = time.monotonic()
    results: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "argv": sys.argv[1:],
                               "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release,
                                           "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}}
    bed = Bed(keep_dir=args.keep)
    status = 0
    try:
        log(f"line_rate: namespaces {bed.server} / {bed.client}; work dir {bed.dir}")
        bed.up()
        sink = Sink(bed, args.python)
        if do_smtp:
            results["smtp"] = smtp_benchmark(bed, sink, args)
        if do_bulk:
            results["bulk"] = []
            for decide in (None, "depth") if args.early else (None,):
                try:
                    results["bulk"].append(bulk_check(bed, sink, args, decide=decide))
                except Exception as e:  # noqa: BLE001
                    log(f"    FAILED: {type(e).__name__}: {e}")
                    results["bulk"].append({"error": f"{type(e).__name__}: {e}"})
        if do_flood:
            results["flood"] = flood_benchmark(bed, sink, args)
        if args.all or q:
            results["replay"] = replay_target(args)
    except KeyboardInterrupt as e:
        log(f"line_rate: interrupted ({e}); cleaning up")
        status = 130
    finally:
        bed.close()
        leftovers = [ns for ns in (bed.server, bed.client)
                     if ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout]
        if leftovers:
            log(f"line_rate: WARNING: namespaces left behind: {leftovers}")
    results["seconds"] = round(time.monotonic() - t_start, 1)
    results["machine"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    out: list[str] = []
    if "smtp" in results:
        out += report_smtp(results["smtp"], args) + [""]
    if "bulk" in results:
        out += report_bulk(results["bulk"]) + [""]
    if "flood" in results:
        out += report_flood(results["flood"]) + [""]
    if "replay" in results:
        out += [results["replay"].get("output", "").rstrip(), ""]
    out += report_targets(results) + [""]
    out += [METHOD, "", f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}, load average "
            f"{' '.join(results['machine']['loadavg_before'])} before / {' '.join(results['machine']['loadavg_after'])}"
            f" after; the whole benchmark took {results['seconds']:.0f} s. Results: {args.json}"]
    print("\n".join(out), flush=True)
    Path(args.json).write_text(json.dumps(results, indent=2, default=str) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
