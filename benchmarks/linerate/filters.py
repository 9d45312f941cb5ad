"""The filters the benchmark compares, each installed into the server namespace and removed
again without a trace: no filter, the seeds' iptables recipe, and ``inspector``.

Every filter offers ``start()``, ``sample()`` (counters at one instant; the benchmark takes
differences) and ``stop()``.  ``stop()`` is safe to call twice and after a failed start.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from . import procfs
from .bed import Bed, Proc, wait_for

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup-nfqueue.sh"
BLOCKED = "blocked.test"


def _filter_table_empty(bed: Bed, tool: str) -> bool:
    rules = [line for line in bed.s(tool, "-w", "-S", check=False).stdout.splitlines()
             if line and not line.startswith("-P ")]
    return not rules


class NoFilter:
    name = "none"
    label = "no filter"

    def start(self) -> None:
        pass

    def sample(self) -> dict[str, Any]:
        return {}

    def stop(self) -> None:
        pass


class Recipe:
    """The seeds' recipe, as an administrator would paste it (``eth0`` is ``veth-s`` here).

    seed 001: ``iptables -I INPUT -m string --algo bm --string "@example.com" -p tcp --dport 25
    -j REJECT --reject-with tcp-reset``; seed 000: the ``recent`` pair, 4 new connections in
    60 s.  Inserted with ``-I`` in the seeds' order, so the string rule ends up first.
    The ``recent`` table keeps its module default size (``ip_list_tot``, 100 addresses): that
    parameter is global to the kernel, so the benchmark reads it but never changes it.
    """

    name = "recipe"
    label = "iptables recipe"

    def __init__(self, bed: Bed, ns_pid: int) -> None:
        self.bed = bed
        self.ns_pid = ns_pid
        self.rules = [
            ["-p", "tcp", "--dport", "25", "-i", "veth-s", "-m", "state", "--state", "NEW", "-m", "recent", "--set"],
            ["-p", "tcp", "--dport", "25", "-i", "veth-s", "-m", "state", "--state", "NEW", "-m", "recent",
             "--update", "--seconds", "60", "--hitcount", "4", "-j", "DROP"],
            ["-m", "string", "--algo", "bm", "--string", f"@{BLOCKED}", "-p", "tcp", "--dport", "25",
             "-j", "REJECT", "--reject-with", "tcp-reset", "-m", "comment", "--comment", "STMP Block"],
        ]
        self.installed: list[list[str]] = []
        self.had_table = True

    def start(self) -> None:
        self.had_table = "*filter" in self.bed.s("iptables-save", check=False).stdout
        for rule in self.rules:
            self.bed.s("iptables", "-w", "-I", "INPUT", *rule)
            self.installed.append(rule)

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reject": 0, "recent_drop": 0}
        for line in self.bed.s("iptables", "-w", "-L", "INPUT", "-v", "-x", "-n", check=False).stdout.splitlines():
            f = line.split()
            if len(f) > 3 and f[0].isdigit():
                if f[2] == "REJECT":
                    out["reject"] = int(f[0])
                elif f[2] == "DROP" and "recent:" in line:
                    out["recent_drop"] = int(f[0])
        try:
            out["recent_entries"] = len(Path(f"/proc/{self.ns_pid}/net/xt_recent/DEFAULT").read_text().splitlines())
        except OSError:
            out["recent_entries"] = None
        return out

    def stop(self) -> None:
        while self.installed:
            rule = self.installed.pop()
            self.bed.s("iptables", "-w", "-D", "INPUT", *rule, check=False)
        if not self.had_table and _filter_table_empty(self.bed, "iptables"):
            self.bed.s("nft", "delete", "table", "ip", "filter", check=False)
            self.had_table = True
        self.bed.s("conntrack", "-F", check=False)

    @staticmethod
    def recent_table_size() -> int | None:
        try:
            return int(Path("/sys/module/xt_recent/parameters/ip_list_tot").read_text())
        except (OSError, ValueError):
            return None


class Inspector:
    """``setup-nfqueue.sh install --workers N`` plus ``inspector run`` with a throwaway config."""

    def __init__(self, bed: Bed, ns_pid: int, python: str, workers: int, tag: str,
                 rate: str = "rules = [{ports = [25], limit = 1000, window = 60}]",
                 queue_maxlen: int | None = None, decide: str | None = None, repo: Path = REPO,
                 version: str = "") -> None:
        self.bed = bed
        self.ns_pid = ns_pid
        self.python = python
        self.workers = workers
        self.decide = decide  # [stream] decide; None: the inspector's default
        self.repo = repo  # the checkout whose ``inspector`` runs (another one: --compare-repo)
        self.name = f"inspector-w{workers}" + (f"-{decide}" if decide else "") + (f"-{version}" if version else "")
        self.label = (f"inspector{' ' + decide if decide else ''}"
                      f" ({workers} worker{'s' if workers > 1 else ''})" + (f" {version}" if version else ""))
        self.tag = tag
        self.dir = bed.dir / f"inspector-{tag}"
        self.rate = rate
        self.queue_maxlen = queue_maxlen
        self.proc: Proc | None = None
        self.installed = False
        self.pids: list[int] = []
        self.sock = ""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "blocked.txt").write_text(f"{BLOCKED}\n")
        for leftover in ("bans.json", "events.jsonl"):
            (self.dir / leftover).unlink(missing_ok=True)
        # a UNIX socket path must stay short (107 bytes)
        self.sockdir = Path(f"/tmp/lr-{os.getpid()}-{self.tag}")
        self.sockdir.mkdir(exist_ok=True)
        self.bed.stack.callback(shutil.rmtree, self.sockdir, True)  # even if stop() is interrupted
        self.sock = str(self.sockdir / "control.sock")
        maxlen = f"queue_maxlen = {self.queue_maxlen}\n" if self.queue_maxlen else ""
        stream = f'[stream]\ndecide = "{self.decide}"\n' if self.decide else ""
        (self.dir / "inspector.toml").write_text(f"""\
mode = "enforce"
[ports]
smtp = [25]
[rate]
{self.rate}
{stream}[[rules]]
path = "{self.dir / 'blocked.txt'}"
scope = "domain"
[service]
queue = 0
{maxlen}state_file = "{self.dir / 'bans.json'}"
events = "{self.dir / 'events.jsonl'}"
syslog = false
fail_open = true
control_socket = "{self.sock}"
""")
        self.installed = True
        self.bed.s("bash", str(SETUP), "install", "--queue", "0", "--workers", str(self.workers), "--ports", "25",
                   "--no-ssh-whitelist")
        self.proc = self.bed.spawn(f"inspector-{self.tag}", self.bed.server,
                                   [self.python, "-m", "inspector", "run", "--config", str(self.dir / "inspector.toml"),
                                    "--workers", str(self.workers)], stdout=False, cwd=str(self.repo))
        proc = self.proc

        def started() -> bool:
            if not proc.alive():
                raise RuntimeError(f"inspector run exited with {proc.popen.returncode}:\n{proc.tail()}")
            return any(e.get("event") == "started" for e in self.events())

        try:
            wait_for(started, 60, what="the inspector's 'started' event")
        except TimeoutError as e:
            raise RuntimeError(f"{e}\n{proc.tail()}") from None
        self.started_event = next(e for e in self.events() if e.get("event") == "started")
        wait_for(lambda: len(self.bound()) == self.workers, 10, what="every queue bound")
        self.pids = self.process_pids()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, 15)
            # workers die with the supervisor (PR_SET_PDEATHSIG); make sure, by PID
            for pid in self.pids:
                if procfs.alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            self.proc = None
        if self.installed:
            self.bed.s("bash", str(SETUP), "remove", check=False)
            self.bed.s("conntrack", "-F", check=False)
            self.installed = False
        if self.sock:
            shutil.rmtree(Path(self.sock).parent, ignore_errors=True)
        (self.dir / "bans.json").unlink(missing_ok=True)

    # -- observation -------------------------------------------------------------------------
    def process_pids(self) -> list[int]:
        assert self.proc is not None
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo += procfs.children(pid)
        return out

    def bound(self) -> list[int]:
        return [q.queue for q in procfs.queues(self.ns_pid).values() if q.portid]

    def events(self) -> list[dict[str, Any]]:
        try:
            text = (self.dir / "events.jsonl").read_text(errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def status(self) -> dict[str, Any] | None:
        """The control socket's ``{"cmd": "status"}`` reply (None if it does not answer)."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        try:
            s.connect(self.sock)
            s.sendall(b'{"cmd": "status"}\n')
            data = b""
            while not data.endswith(b"\n") and len(data) < 1 << 22:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
            return json.loads(data)
        except (OSError, ValueError):
            return None
        finally:
            s.close()

    def cpu(self) -> dict[int, float]:
        return {pid: c for pid in self.pids if (c := procfs.proc_cpu_seconds(pid)) is not None}

    def sample(self) -> dict[str, Any]:
        return {"cpu": self.cpu(), "queue": procfs.queue_totals(self.ns_pid), "t": time.monotonic()}

    def alive(self) -> dict[int, bool]:
        return {pid: procfs.alive(pid) for pid in self.pids}

    def peak_rss_kb(self) -> dict[int, int | None]:
        return {pid: procfs.status_kb(pid, "VmHWM") for pid in self.pids}

    def chain_counters(self) -> dict[str, int]:
        """Packet counters of the INSPECTOR chain's rules (and of the jump from INPUT)."""
        out = {"jump": 0, "ban_drop": 0, "nfqueue": 0, "invalid_drop": 0}
        for line in self.bed.s("iptables", "-w", "-L", "INPUT", "-v", "-x", "-n", check=False).stdout.splitlines():
            f = line.split()
            if len(f) > 3 and f[0].isdigit() and f[2] == "INSPECTOR":
                out["jump"] += int(f[0])
        for line in self.bed.s("iptables", "-w", "-L", "INSPECTOR", "-v", "-x", "-n", check=False).stdout.splitlines():
            f = line.split()
            if len(f) < 4 or not f[0].isdigit():
                continue
            if f[2] == "DROP" and "match-set inspector-ban4 src" in line:
                out["ban_drop"] += int(f[0])
            elif f[2] == "NFQUEUE":
                out["nfqueue"] += int(f[0])
            elif f[2] == "DROP":
                out["invalid_drop"] += int(f[0])
        return out

    def banned(self) -> set[str]:
        r = self.bed.s("ipset", "list", "inspector-ban4", check=False)
        members, out = False, set()
        for line in r.stdout.splitlines():
            if line.startswith("Members:"):
                members = True
            elif members and line.strip():
                out.add(line.split()[0])
        return out


class Bare(Inspector):
    """The binding's floor (``bare.py``: accept everything) behind the same rules, one process
    per queue.  It never decides a flow, so every payload packet of a transaction reaches it:
    compare its CPU per *packet*, not per transaction."""

    name = "bare"

    def __init__(self, bed: Bed, ns_pid: int, python: str, tag: str, mode: str = "blocking",
                 workers: int = 1) -> None:
        super().__init__(bed, ns_pid, python, workers, tag)
        self.mode = mode  # see bare.py
        self.name = ("bare" if mode == "blocking" else f"bare-{mode}") + (f"-w{workers}" if workers > 1 else "")
        self.label = ("bare NetfilterQueue loop" + ("" if mode == "blocking" else f" ({mode})")
                      + (f" ({workers} processes)" if workers > 1 else ""))

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.installed = True
        self.bed.s("bash", str(SETUP), "install", "--queue", "0", "--workers", str(self.workers), "--ports", "25",
                   "--no-ssh-whitelist")
        procs = []
        for q in range(self.workers):
            proc = self.bed.spawn(f"bare-{self.tag}-{q}", self.bed.server,
                                  [self.python, str(Path(__file__).with_name("bare.py")), str(q), self.mode],
                                  cwd=str(REPO))
            if b"ready" not in proc.readline(30):
                raise RuntimeError(f"bare.py did not start:\n{proc.tail()}")
            procs.append(proc)
        self.proc = procs[0]
        wait_for(lambda: len(self.bound()) == self.workers, 10, what="every queue bound")
        self.pids = [p.pid for p in procs]

    def events(self) -> list[dict[str, Any]]:
        return []

    def status(self) -> dict[str, Any] | None:
        return None


def supports_decide_early(python: str, workdir: Path) -> bool:
    """Does this inspector know ``[stream] decide = "early"`` (queue SMTP only up to DATA)?"""
    cfg = workdir / "probe-decide.toml"
    rules = workdir / "probe-rules.txt"
    rules.write_text(f"{BLOCKED}\n")
    cfg.write_text(f'[stream]\ndecide = "early"\n[[rules]]\npath = "{rules}"\nscope = "domain"\n')
    r = subprocess.run([python, "-m", "inspector", "check", "--config", str(cfg)], capture_output=True, text=True,
                       cwd=REPO, timeout=60)
    return r.returncode == 0


SURICATA_YAML = """\
%YAML 1.1
---
vars:
  address-groups:
    HOME_NET: "[192.0.2.0/24]"
    EXTERNAL_NET: "any"
  port-groups:
    SMTP_PORTS: "25"
default-log-dir: {dir}
default-rule-path: {dir}
rule-files:
  - blocked.rules
classification-file: /etc/suricata/classification.config
reference-config-file: /etc/suricata/reference.config
outputs:
  - fast:
      enabled: yes
      filename: fast.log
      append: yes
logging:
  default-log-level: notice
  outputs:
    - console:
        enabled: no
    - file:
        enabled: yes
        level: info
        filename: suricata.log
nfq:
  mode: accept
  fail-open: yes
app-layer:
  protocols:
    smtp:
      enabled: yes
stream:
  inline: auto
"""

# one rule for the blocked domain, case-insensitive, matched on the reassembled client stream
SURICATA_RULE = (f'reject tcp any any -> $HOME_NET 25 (msg:"blocked domain {BLOCKED}"; flow:to_server,established;'
                 f' content:"@{BLOCKED}"; nocase; sid:1000001; rev:1;)\n')


def suricata_binary() -> str | None:
    """The Suricata binary, if installed (bookworm-backports: ``apt-get install -t bookworm-backports suricata``)."""
    return shutil.which("suricata")


class Suricata(Inspector):
    """Suricata 7 as an NFQ IPS in the server namespace: a minimal config (``SURICATA_YAML``:
    NFQ accept mode with fail-open, the SMTP parser on, inline stream reassembly, alerts to
    ``fast.log`` only) and one ``reject`` rule for the blocked domain (``SURICATA_RULE``,
    ``nocase``).  Both directions of port 25 are queued (INPUT ``--dport 25``, OUTPUT
    ``--sport 25``, queue 0, ``--queue-bypass``): Suricata's stream engine needs the server's
    side to follow the connection.  CPU is the Suricata process's (all its threads)."""

    name = "suricata"
    label = "Suricata 7 NFQ, 1 reject"

    def __init__(self, bed: Bed, ns_pid: int, tag: str) -> None:
        super().__init__(bed, ns_pid, "", 1, tag)
        self.name, self.label = Suricata.name, Suricata.label
        self.rules: list[list[str]] = []
        self.had_table = True

    def start(self) -> None:
        exe = suricata_binary()
        if exe is None:
            raise RuntimeError("suricata is not installed")
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "suricata.yaml").write_text(SURICATA_YAML.format(dir=self.dir))
        (self.dir / "blocked.rules").write_text(SURICATA_RULE)
        for leftover in ("suricata.log", "fast.log", "suricata.pid"):
            (self.dir / leftover).unlink(missing_ok=True)
        self.installed = True
        self.had_table = "*filter" in self.bed.s("iptables-save", check=False).stdout
        for chain, port in (("INPUT", "--dport"), ("OUTPUT", "--sport")):
            rule = [chain, "-p", "tcp", port, "25", "-j", "NFQUEUE", "--queue-num", "0", "--queue-bypass"]
            self.bed.s("iptables", "-w", "-I", *rule)
            self.rules.append(rule)
        self.proc = self.bed.spawn(f"suricata-{self.tag}", self.bed.server,
                                   [exe, "-c", str(self.dir / "suricata.yaml"), "-q", "0", "-l", str(self.dir),
                                    "--pidfile", str(self.dir / "suricata.pid")], stdout=False)
        proc = self.proc

        def started() -> bool:
            if not proc.alive():
                raise RuntimeError(f"suricata exited with {proc.popen.returncode}:\n{proc.tail()}")
            try:
                log = (self.dir / "suricata.log").read_text(errors="replace")
            except FileNotFoundError:
                return False
            return "engine started" in log.lower() or "threads created" in log.lower()

        wait_for(started, 120, 0.2, "Suricata's engine started")
        wait_for(lambda: len(self.bound()) == 1, 10, what="queue 0 bound")
        self.pids = [proc.pid]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(signal.SIGTERM, 30)
            self.proc = None
        if self.installed:
            while self.rules:
                self.bed.s("iptables", "-w", "-D", *self.rules.pop(), check=False)
            if not self.had_table and _filter_table_empty(self.bed, "iptables"):
                self.bed.s("nft", "delete", "table", "ip", "filter", check=False)
            self.bed.s("conntrack", "-F", check=False)
            self.installed = False

    def alerts(self) -> int:
        """Alerts in fast.log so far."""
        try:
            return len((self.dir / "fast.log").read_text(errors="replace").splitlines())
        except FileNotFoundError:
            return 0

    def events(self) -> list[dict[str, Any]]:
        return []

    def status(self) -> dict[str, Any] | None:
        return None
