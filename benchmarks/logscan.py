#!/usr/bin/env python3
"""Log-evidence benchmark: ``inspector scan`` throughput and the follow-to-ban delay.

    python benchmarks/logscan.py [--lines 1000000] [--seed 1] [--keep DIR]

1. Writes a deterministic mixed log: mostly noise (cron, kernel, systemd,
   Postfix deliveries, sshd sessions, Apache notices, ProFTPD sessions, and
   near misses that pass a filter's literal but are no failure), plus failures
   in every built-in filter's formats from many hosts (IPv4, IPv6, ::ffff:),
   a third of them in bursts from one attacker at a time (so there are bans).
2. Runs ``python -m inspector scan LOG --filter NAME`` for each built-in filter,
   pinned to one core, output to a file: lines/s (``time.process_time`` inside
   scan), the whole process's CPU time and peak RSS (``wait4``), failures, bans.
   Also the same scan on the gzip-compressed log for one filter.
3. Follows a live file with :class:`inspector.logs.LogMonitor` and drives
   ``BanPipeline.issue`` (a fake firewall) each tick, as the service would: the delay
   from a line's ``write()`` to its ban, per poll interval.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inspector.logs.filters import builtin_names  # noqa: E402

MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _host(rnd: random.Random, n_hosts: int) -> str:
    i = rnd.randrange(n_hosts)
    kind = i % 10
    if kind < 7:
        return f"{(i >> 16) % 223 + 1}.{(i >> 8) & 255}.{i & 255}.{i % 250 + 2}"
    return f"2001:db8:{(i >> 8) & 0xffff:x}:{i & 0xff:x}::{i % 4000 + 1:x}"


def generate(path: Path, lines: int, seed: int, n_hosts: int = 50_000, fail_share: float = 0.12) -> dict[str, int]:
    """Write the mixed log; return how many failure lines of each filter it holds."""
    rnd = random.Random(seed)
    start = 1795219200  # 2026-11-21T00:00:00Z
    step = 86400 / lines
    made = {name: 0 for name in builtin_names()}
    names = builtin_names()
    attacker = {name: "" for name in names}  # a third of the failures come in bursts from one attacker
    with path.open("w", encoding="utf-8") as out:
        buf = []
        for n in range(lines):
            t = start + n * step
            tm = time.gmtime(t)
            sys_ts = f"{MONTHS[tm.tm_mon - 1]} {tm.tm_mday:2d} {tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d}"
            iso = time.strftime("%Y-%m-%dT%H:%M:%S", tm) + f".{int((t % 1) * 1e6):06d}+00:00"
            pid = 1000 + n % 30000
            if n % 2000 == 0:
                attacker = {name: _host(rnd, 1000) for name in names}
            if rnd.random() < fail_share:
                name = names[n % len(names)]
                made[name] += 1
                h = attacker[name] if rnd.random() < 0.33 else _host(rnd, n_hosts)
                buf.append(_failure(name, h, sys_ts, iso, tm, pid, rnd))
            else:
                buf.append(_noise(rnd, sys_ts, iso, tm, pid, _host(rnd, n_hosts)))
            if len(buf) >= 10000:
                out.write("\n".join(buf) + "\n")
                buf = []
        if buf:
            out.write("\n".join(buf) + "\n")
    return made


def _failure(name: str, h: str, ts: str, iso: str, tm: time.struct_time, pid: int, rnd: random.Random) -> str:
    v4 = ":" not in h
    if name == "postfix-sasl":
        return (f"{ts} mail postfix/submission/smtpd[{pid}]: warning: unknown[{h}]: "
                f"SASL {rnd.choice(['LOGIN', 'PLAIN'])} authentication failed: authentication failure")
    if name == "courier":
        ip = f"::ffff:{h}" if v4 else h
        return (f"{ts} mail {rnd.choice(['imapd', 'pop3d', 'imapd-ssl', 'pop3d-ssl'])}: LOGIN FAILED, "
                f"user=user{pid}@example.org, ip=[{ip}]")
    if name == "roundcube":
        rc_ts = time.strftime("%d-%b-%Y %H:%M:%S", tm)
        return (f"[{rc_ts} +0000]: <{pid:08x}> IMAP Error: Login failed for user{pid}@example.org against localhost "
                f"from {h}. AUTHENTICATE PLAIN: A0002 NO [AUTHENTICATIONFAILED] Authentication failed. in "
                "/var/www/roundcube/program/lib/Roundcube/rcube_imap.php on line 211 "
                "(POST /?_task=login&_action=login)")
    if name == "apache-probe":
        a_ts = time.strftime("%a %b %d %H:%M:%S", tm) + f".{pid:06d} {tm.tm_year}"
        path = rnd.choice(["/var/www/html/wp-login.php", "/var/www/html/phpmyadmin", "/var/www/html/admin",
                           "/var/www/html/xmlrpc.php", "/var/www/html/.env"])
        return (f"[{a_ts}] [core:info] [pid {pid}:tid 1402] [client {h}:{40000 + pid % 20000}] AH00128: "
                f"File does not exist: {path}")
    if name == "proftpd":
        ip = f"::ffff:{h}" if v4 else h
        return rnd.choice([
            f"{ts} ftp proftpd[{pid}] ftp.example.org ({ip}[{ip}]): USER user{pid} (Login failed): Incorrect password.",
            f"{ts} ftp proftpd[{pid}] ftp.example.org ({ip}[{ip}]): USER x{pid}: no such user found from {ip} "
            f"[{ip}] to 192.0.2.10:21",
            f"{ts} ftp proftpd[{pid}] ftp.example.org ({ip}[{ip}]): SECURITY VIOLATION: root login attempted.",
        ])
    if name == "dovecot":
        return (f"{ts} mail dovecot: {rnd.choice(['imap', 'pop3'])}-login: Aborted login (auth failed, 1 attempts in "
                f"2 secs): user=<user{pid}@example.org>, method=PLAIN, rip={h}, lip=192.0.2.10, TLS, "
                f"session=<{pid:012x}>")
    if name == "exim":
        e_ts = time.strftime("%Y-%m-%d %H:%M:%S", tm)
        return (f"{e_ts} {rnd.choice(['dovecot_plain', 'login', 'plain'])} authenticator failed for (ylmf-pc) "
                f"[{h}]:{40000 + pid % 20000}: 535 Incorrect authentication data (set_id=user{pid})")
    return rnd.choice([
        f"{iso} host sshd[{pid}]: Failed password for root from {h} port {40000 + pid % 20000} ssh2",
        f"{ts} host sshd[{pid}]: Failed password for invalid user admin{pid % 50} from {h} "
        f"port {40000 + pid % 20000} ssh2",
        f"{ts} host sshd-session[{pid}]: Invalid user test{pid % 50} from {h} port {40000 + pid % 20000}",
    ])


def _noise(rnd: random.Random, ts: str, iso: str, tm: time.struct_time, pid: int, h: str) -> str:
    r = rnd.random()
    if r < 0.18:
        return f"{ts} mail postfix/smtpd[{pid}]: connect from unknown[{h}]"
    if r < 0.30:
        return (f"{ts} mail postfix/qmgr[812]: {pid:X}4DkqJ51bC8z: from=<news{pid}@example.net>, size={pid * 3}, "
                f"nrcpt=1 (queue active)")
    if r < 0.40:
        return (f"{ts} mail postfix/smtp[{pid}]: {pid:X}4DkqJ51bC8z: to=<u{pid}@example.org>, relay=mx.example.org"
                f"[192.0.2.25]:25, delay=0.4, delays=0.1/0/0.1/0.2, dsn=2.0.0, status=sent (250 2.0.0 Ok)")
    if r < 0.50:
        return f"{ts} host CRON[{pid}]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)"
    if r < 0.58:
        return (f"{ts} host kernel: [{pid}.{pid % 1000:03d}] [UFW BLOCK] IN=eth0 OUT= SRC={h} DST=192.0.2.10 "
                "PROTO=TCP DPT=23")
    if r < 0.64:
        return f"{iso} host systemd[1]: Started session-{pid}.scope - Session {pid} of User bob."
    if r < 0.70:
        return (f"{ts} host sshd[{pid}]: Accepted publickey for bob from {h} port {40000 + pid % 20000} ssh2: "
                "ED25519 SHA256:x")
    if r < 0.75:
        return f"{ts} host sshd[{pid}]: Connection closed by authenticating user root {h} port 40001 [preauth]"
    if r < 0.79:
        return f"{ts} mail imapd-ssl: LOGIN, user=bob@example.org, ip=[::ffff:{h}], port=[40122], protocol=IMAP"
    if r < 0.84:
        a_ts = time.strftime("%a %b %d %H:%M:%S", tm) + f".{pid:06d} {tm.tm_year}"
        return (f"[{a_ts}] [core:info] [pid {pid}:tid 1402] [client {h}:{40000 + pid % 20000}] AH00128: File does not "
                f"exist: /var/www/html/favicon.ico")  # passes the literal, is no probe
    if r < 0.88:
        return f"{ts} ftp proftpd[{pid}] ftp.example.org ({h}[{h}]): FTP session opened."
    if r < 0.91:
        return f"{ts} host systemd[1]: Failed to start backup.service - Nightly backup."  # passes sshd's literal
    if r < 0.94:
        return (f"{ts} mail postfix/smtpd[{pid}]: warning: unknown[{h}]: SASL LOGIN authentication failed: "
                "Connection lost to authentication server")  # passes the literal, not the client's fault
    if r < 0.97:
        rc_ts = time.strftime("%d-%b-%Y %H:%M:%S", tm)
        return f"[{rc_ts} +0000]: <{pid:08x}> Successful login for bob@example.org (ID: 3) from {h} in session x"
    if r < 0.98:
        return (f"{ts} mail dovecot: imap-login: Login: user=<bob@example.org>, method=PLAIN, rip={h}, "
                f"lip=192.0.2.10, mpid={pid}, TLS, session=<{pid:012x}>")
    if r < 0.99:
        e_ts = time.strftime("%Y-%m-%d %H:%M:%S", tm)
        return (f"{e_ts} {pid:X}-000123-4x <= bob@example.org H=(laptop) [{h}]:40020 I=[192.0.2.10]:587 "
                f"P=esmtpsa A=plain:bob S=1234")
    return f"{ts} host dhclient[{pid}]: DHCPREQUEST for 192.0.2.10 on eth0 to 192.0.2.1 port 67"


def run_scan(log: Path, name: str, out_dir: Path) -> dict[str, object]:
    out = out_dir / f"scan-{name}.jsonl"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "inspector", "scan", str(log), "--filter", name, "--utc", "--year", "2026"]
    with out.open("w") as f, (out_dir / "scan.err").open("w") as err:
        proc = subprocess.Popen(cmd, stdout=f, stderr=err, env=env,
                                preexec_fn=lambda: os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"scan {name} failed: {(out_dir / 'scan.err').read_text()}")
    with out.open("rb") as f:
        f.seek(max(0, out.stat().st_size - 65536))
        summary = json.loads(f.read().splitlines()[-1])["summary"]
    return {"filter": name, "lines": summary["lines"], "lines_per_s": summary["lines_per_s"],
            "scan_cpu_s": summary["cpu_seconds"], "process_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "failures": summary["failures"],
            "hosts": summary["hosts"], "bans": summary["bans"]}


def follow_latency(interval: float, lines: int, seed: int) -> dict[str, object]:
    """Delay from write() of a failure line to BanPipeline.issue, following with LogMonitor at ``interval``."""
    from inspector.bans import BanStore
    from inspector.config import Config, LogSettings, LogSource
    from inspector.events import MemorySink
    from inspector.logs import LogMonitor
    from inspector.respond.bans import Ban, BanPipeline
    from inspector.testing import FakeFirewall

    rnd = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "auth.log"
        log.write_text("")
        config = Config(logs=LogSettings(sources=(LogSource("sshd", str(log), maxretry=1, bantime=60),)))
        banned_at: dict[str, float] = {}
        firewall = FakeFirewall(time.time)
        bans = BanPipeline(BanStore(None), firewall, MemorySink())
        monitor = LogMonitor(config, local=[])
        written: dict[str, float] = {}
        poll_cpu = []
        with log.open("a", buffering=1) as w:
            next_poll = time.perf_counter() + interval
            for i in range(lines):
                write_at = time.perf_counter() + rnd.uniform(0.0, 2 * interval)
                host = f"203.0.{i // 250}.{i % 250 + 1}"
                wrote = False
                while not wrote or host not in banned_at:
                    now = time.perf_counter()
                    if not wrote and now >= write_at:
                        w.write(f"{time.strftime('%b %d %H:%M:%S')} host sshd[1]: Failed password for root "
                                f"from {host} port 22 ssh2\n")
                        written[host] = time.perf_counter()
                        wrote = True
                    if now >= next_poll:
                        c0 = time.process_time()
                        for ban in monitor.poll(time.time()):
                            bans.issue(Ban(ban.network, ban.seconds, ban.reason, ban.rule, "log"), time.time())
                            banned_at[ban.network] = time.perf_counter()
                        poll_cpu.append(time.process_time() - c0)
                        next_poll += interval
                    targets = [next_poll] + ([] if wrote else [write_at])
                    time.sleep(max(0.0, min(targets) - time.perf_counter()))
        monitor.close()
    delays = sorted((banned_at[h] - written[h]) * 1000 for h in written)
    return {"poll_interval_s": interval, "lines": len(delays),
            "delay_ms_median": round(statistics.median(delays), 1),
            "delay_ms_p95": round(delays[int(len(delays) * 0.95) - 1], 1), "delay_ms_max": round(delays[-1], 1),
            "poll_cpu_us_median": round(statistics.median(poll_cpu) * 1e6, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", metavar="DIR", help="write the log and the scan output here (kept)")
    ap.add_argument("--follow-lines", type=int, default=40, help="lines per poll interval for the delay test")
    ap.add_argument("--target", type=int, default=200_000, help="lines/s every filter must reach")
    args = ap.parse_args()

    tmpdir = None
    if args.keep:
        out_dir = Path(args.keep)
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        tmpdir = tempfile.TemporaryDirectory()
        out_dir = Path(tmpdir.name)
    log = out_dir / "mixed.log"
    started = time.perf_counter()
    made = generate(log, args.lines, args.seed)
    size = log.stat().st_size
    print(f"log: {args.lines:,} lines, {size / 1e6:.1f} MB, failure lines per filter {made}, "
          f"written in {time.perf_counter() - started:.1f}s")
    print(f"python {sys.version.split()[0]}, one core (sched_setaffinity), output to a file")
    print()
    header = f"{'filter':14} {'lines/s':>10} {'scan CPU s':>10} {'process CPU s':>13} {'peak RSS MB':>11} " \
             f"{'failures':>9} {'hosts':>7} {'bans':>6}"
    print(header)
    worst = None
    rows = []
    for name in builtin_names():
        r = run_scan(log, name, out_dir)
        rows.append(r)
        worst = r if worst is None or r["lines_per_s"] < worst["lines_per_s"] else worst  # type: ignore[operator]
        print(f"{name:14} {r['lines_per_s']:>10,} {r['scan_cpu_s']:>10} {r['process_cpu_s']:>13} "
              f"{r['peak_rss_mb']:>11} {r['failures']:>9,} {r['hosts']:>7,} {r['bans']:>6,}")
        if r["failures"] != made[name]:
            print(f"  !! expected {made[name]} failures")
    gz = out_dir / "mixed.log.gz"
    with log.open("rb") as src, gzip.open(gz, "wb", compresslevel=6) as dst:
        while chunk := src.read(1 << 20):
            dst.write(chunk)
    r = run_scan(gz, "sshd", out_dir)
    print(f"{'sshd (.gz)':14} {r['lines_per_s']:>10,} {r['scan_cpu_s']:>10} {r['process_cpu_s']:>13} "
          f"{r['peak_rss_mb']:>11} {r['failures']:>9,} {r['hosts']:>7,} {r['bans']:>6,}")
    print()
    ok = all(int(r["lines_per_s"]) >= args.target for r in rows)  # type: ignore[call-overload]
    print(f"target {args.target:,} lines/s per filter: {'met' if ok else 'NOT met'} "
          f"(slowest: {worst['filter']} at {worst['lines_per_s']:,})")  # type: ignore[index]
    print()
    print("follow -> BanPipeline.issue delay (LogMonitor on a live file, write at random times, maxretry 1):")
    for interval in (0.25, 0.1):
        res = follow_latency(interval, args.follow_lines, args.seed)
        print(f"  poll every {interval:g}s: median {res['delay_ms_median']} ms, p95 {res['delay_ms_p95']} ms, "
              f"max {res['delay_ms_max']} ms over {res['lines']} lines; poll CPU {res['poll_cpu_us_median']} us")
    if tmpdir is not None:
        tmpdir.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
