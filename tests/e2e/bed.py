"""The end-to-end test bed: a server and a client namespace joined by a veth pair.

Layout (all addresses are documentation ranges, all inside the two namespaces)::

    client ns  veth-c  198.51.100.10-12/24, 203.0.113.7/24 (whitelisted),
                       2001:db8:1::10/64, 2001:db8:2::10/64, 2001:db8:3::10/64,
                       2001:db8:ffff::7/64 (whitelisted)
                       routes: 192.0.2.0/24 and 2001:db8::/64 on-link via veth-c
    server ns  veth-s  192.0.2.25/24, 2001:db8::25/64
                       routes: 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32 on-link via veth-s

IPv6 addresses skip DAD (``nodad``, ``accept_dad=0``) so they work at once.  The
server namespace runs ``servers.py`` (SMTP on 25, SSH-like echo on 22), the
setup script's rules and ``inspector run``; client actions run as
``client.py`` in the client namespace.  Every step registers its undo, and
:meth:`Bed.close` runs all of them, even after a failure: the inspector and
servers are signalled by PID (SIGTERM, then SIGKILL), the setup script's
``remove`` runs, and both namespaces are deleted.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import select
import shutil
import signal as sig_
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SETUP = REPO / "scripts" / "setup-nfqueue.sh"
PY = sys.executable

SERVER = {4: "192.0.2.25", 6: "2001:db8::25"}
# a, b, c: ordinary clients (each IPv6 one in its own /64, since IPv6 bans cover a /64); w: whitelisted
CLIENTS = {
    4: {"a": "198.51.100.10", "b": "198.51.100.11", "c": "198.51.100.12", "w": "203.0.113.7"},
    6: {"a": "2001:db8:1::10", "b": "2001:db8:2::10", "c": "2001:db8:3::10", "w": "2001:db8:ffff::7"},
}
WHITELIST = ["203.0.113.0/24", "2001:db8:ffff::/48"]
BAN_SET = {4: "inspector-ban4", 6: "inspector-ban6"}
BLOCKED = "blocked.test"
QUEUE = 0
DAY = 86400


def ban_network(addr: str) -> str:
    """What the inspector bans for a source: the address (IPv4) or its /64 (IPv6)."""
    if ":" in addr:
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return addr


def why_not() -> str | None:
    """Why this machine cannot run the end-to-end tests (None: it can)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "iptables", "ip6tables", "iptables-save", "ip6tables-save", "ipset"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/bootstrap.sh installs it)"
    for module, name in (("netfilterqueue", "NetfilterQueue"), ("pyroute2", "pyroute2")):
        try:
            __import__(module)
        except ImportError:
            return f"needs {name} (the 'live' extra: pip install -e '.[live]')"
    return None


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def normalize_rules(text: str) -> list[str]:
    """iptables-save output without comments and with counters zeroed."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        line = re.sub(r"\[\d+:\d+\]", "[0:0]", line)
        out.append(line.rstrip())
    return out


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


@dataclass
class Proc:
    """A process we started, known by its PID; output goes to files."""

    name: str
    popen: subprocess.Popen
    stdout: Path
    stderr: Path
    files: list = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, sig: int = sig_.SIGTERM, timeout: float = 5.0) -> int | None:
        """Signal, wait up to ``timeout``; SIGKILL if still running.  Returns the exit code."""
        try:
            self.send(sig)
            try:
                return self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.send(sig_.SIGKILL)
                self.popen.wait(timeout=5)
                return None
        finally:
            self.close_files()

    def close_files(self) -> None:
        for f in self.files:
            f.close()
        self.files = []
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream:
                stream.close()

    def tail(self, n: int = 3000) -> str:
        out = []
        for p in (self.stdout, self.stderr):
            with suppress(OSError):
                out.append(f"--- {p.name}:\n" + p.read_text(errors="replace")[-n:])
        return "\n".join(out)


class Bed:
    def __init__(self, workdir: Path) -> None:
        uid = uuid.uuid4().hex[:10]
        self.server = f"e2e-s-{uid}"
        self.client = f"e2e-c-{uid}"
        self.dir = workdir
        # UNIX socket paths are limited to 107 bytes: keep the control socket in a short directory
        self.sockdir = Path(tempfile.mkdtemp(prefix="insp-e2e-"))
        self.stack = ExitStack()
        self.stack.callback(shutil.rmtree, self.sockdir, True)
        self.servers: Proc | None = None
        self.inspector: Proc | None = None
        self.installed = False
        self.rules_before: dict[str, list[str]] = {}
        self.server_log = self.dir / "servers.jsonl"
        self.events_file = self.dir / "events.jsonl"
        self.state_file = self.dir / "bans.json"
        self.rules_file = self.dir / "rules" / "blocked.txt"
        self.config_file = self.dir / "inspector.toml"
        self.control_socket = self.sockdir / "control.sock"
        self.smtp_kind = "?"

    # ---- running commands ---------------------------------------------------------------------
    def _run(self, ns: str, argv: Iterable[str], check: bool, timeout: float,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = ["ip", "netns", "exec", ns, *argv]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, input=input)
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def s(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command in the server namespace."""
        return self._run(self.server, argv, check, timeout)

    def c(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command in the client namespace."""
        return self._run(self.client, argv, check, timeout)

    def _spawn(self, name: str, ns: str, argv: list[str], stdout_pipe: bool = False) -> Proc:
        out_path, err_path = self.dir / f"{name}.out", self.dir / f"{name}.err"
        err = open(err_path, "ab")  # noqa: SIM115 - closed by Proc
        out = subprocess.PIPE if stdout_pipe else open(out_path, "ab")  # noqa: SIM115
        popen = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=err,
                                 stdin=subprocess.DEVNULL, cwd=REPO)
        files = [err] if stdout_pipe else [err, out]
        return Proc(name, popen, out_path, err_path, files)

    # ---- namespaces and links -----------------------------------------------------------------
    def up(self) -> None:
        for ns in (self.server, self.client):
            r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, timeout=10)
            if r.returncode:
                raise NamespaceUnavailable(f"cannot create a network namespace: {r.stderr.strip()}")
            self.stack.callback(subprocess.run, ["ip", "netns", "del", ns], capture_output=True, timeout=10)
        for ns in (self.server, self.client):
            self._run(ns, ["ip", "link", "set", "lo", "up"], True, 10)
            self._run(ns, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0",
                           "net.ipv6.conf.default.accept_dad=0"], True, 10)
        subprocess.run(["ip", "link", "add", "veth-s", "netns", self.server, "type", "veth",
                        "peer", "name", "veth-c", "netns", self.client], check=True, capture_output=True, timeout=10)
        s, c = self.server, self.client
        cmds = [
            (s, "ip addr add 192.0.2.25/24 dev veth-s"),
            (s, "ip addr add 2001:db8::25/64 dev veth-s nodad"),
            (c, "ip addr add 198.51.100.10/24 dev veth-c"),
            (c, "ip addr add 198.51.100.11/24 dev veth-c"),
            (c, "ip addr add 198.51.100.12/24 dev veth-c"),
            (c, "ip addr add 203.0.113.7/24 dev veth-c"),
            (c, "ip addr add 2001:db8:1::10/64 dev veth-c nodad"),
            (c, "ip addr add 2001:db8:2::10/64 dev veth-c nodad"),
            (c, "ip addr add 2001:db8:3::10/64 dev veth-c nodad"),
            (c, "ip addr add 2001:db8:ffff::7/64 dev veth-c nodad"),
            (s, "ip link set veth-s up"),
            (c, "ip link set veth-c up"),
            (s, "ip route add 198.51.100.0/24 dev veth-s"),
            (s, "ip route add 203.0.113.0/24 dev veth-s"),
            (s, "ip -6 route add 2001:db8::/32 dev veth-s"),
            (c, "ip route add 192.0.2.0/24 dev veth-c"),
            (c, "ip -6 route add 2001:db8::/64 dev veth-c"),
            (s, "sysctl -qw net.netfilter.nf_conntrack_acct=1"),
        ]
        for ns, cmd in cmds:
            self._run(ns, cmd.split(), True, 10)

    def add_client_addresses(self, addrs: Iterable[str]) -> None:
        """More client addresses (IPv4 in 198.51.100.0/24, IPv6 /64s under 2001:db8::/32)."""
        for a in addrs:
            prefix = "64 nodad" if ":" in a else "24"
            self.c("ip", "addr", "add", *f"{a}/{prefix}".split(), "dev", "veth-c")

    def preexisting_rules(self) -> None:
        """Rules an administrator already had: ``remove`` must give them back unchanged."""
        for cmd in ("iptables -A INPUT -p icmp -j ACCEPT",
                    "iptables -N E2E-USER",
                    "iptables -A E2E-USER -s 192.0.2.99/32 -j DROP",
                    "iptables -A INPUT -j E2E-USER",
                    "ip6tables -A INPUT -p ipv6-icmp -j ACCEPT",
                    "ip6tables -A INPUT -s 2001:db8:99::/48 -p tcp --dport 8080 -j DROP"):
            self.s(*cmd.split())

    def snapshot_rules(self) -> dict[str, list[str]]:
        return {tool: normalize_rules(self.s(tool).stdout) for tool in ("iptables-save", "ip6tables-save")}

    # ---- services -----------------------------------------------------------------------------
    def start_servers(self, timeout: float = 10) -> None:
        argv = [PY, str(HERE / "servers.py"), str(self.server_log), "--max-seconds", "900"]
        if os.environ.get("INSPECTOR_E2E_SMTP") == "mini":
            argv.append("--mini")
        proc = self._spawn("servers", self.server, argv, stdout_pipe=True)
        self.servers = proc
        self.stack.callback(proc.stop)
        assert proc.popen.stdout is not None
        ready, _, _ = select.select([proc.popen.stdout], [], [], timeout)
        line = proc.popen.stdout.readline() if ready else b""
        if not line:
            raise RuntimeError(f"servers did not start within {timeout}s:\n{proc.tail()}")
        self.smtp_kind = json.loads(line)["smtp"]

    def server_events(self, **match: Any) -> list[dict[str, Any]]:
        return [e for e in _read_jsonl(self.server_log) if all(e.get(k) == v for k, v in match.items())]

    # ---- the setup script -----------------------------------------------------------------------
    def setup(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        if not SETUP.exists():
            raise FileNotFoundError(f"{SETUP} does not exist")
        argv = [str(SETUP)] if os.access(SETUP, os.X_OK) else ["bash", str(SETUP)]
        return self.s(*argv, *args, check=check, timeout=timeout)

    def install(self, *extra: str) -> None:
        self.rules_before = self.snapshot_rules()
        args = ["install", "--queue", str(QUEUE), "--ports", "25,22", "--no-ssh-whitelist"]
        for cidr in WHITELIST:
            args += ["--whitelist", cidr]
        self.installed = True
        self.stack.callback(self._remove_quietly)
        self.setup(*args, *extra)

    def _remove_quietly(self) -> None:
        if self.installed:
            self.setup("remove", check=False)
            self.installed = False

    # ---- the inspector --------------------------------------------------------------------------
    def write_config(self, mode: str = "enforce", domains: str = f"{BLOCKED}\n", extra: str = "") -> None:
        self.rules_file.parent.mkdir(exist_ok=True)
        self.rules_file.write_text(domains)
        cidrs = ", ".join(f'"{c}"' for c in WHITELIST)
        self.config_file.write_text(f"""\
mode = "{mode}"
[ports]
smtp = [25]
other = [22]
[whitelist]
cidrs = [{cidrs}]
[[rules]]
path = "{self.rules_file}"
scope = "domain"
[service]
queue = {QUEUE}
state_file = "{self.state_file}"
events = "{self.events_file}"
syslog = false
fail_open = true
control_socket = "{self.control_socket}"
{extra}""")

    def start_inspector(self, *args: str, timeout: float = 20) -> Proc:
        """``inspector run`` in the server namespace; returns once it logged ``started``."""
        assert self.inspector is None or not self.inspector.alive(), "an inspector is already running"
        if not self.config_file.exists():
            self.write_config()
        seen = len(self.events(event="started"))
        proc = self._spawn("inspector", self.server,
                           [PY, "-m", "inspector", "run", "--config", str(self.config_file), *args])
        self.inspector = proc
        self.stack.callback(proc.stop)

        def started() -> bool:
            if not proc.alive():
                raise RuntimeError(f"inspector run exited with {proc.popen.returncode} before 'started':\n"
                                   f"{proc.tail()}")
            return len(self.events(event="started")) > seen

        try:
            wait_for(started, timeout, what="the inspector's 'started' event")
        except TimeoutError as e:
            raise TimeoutError(f"{e}\n{proc.tail()}") from None
        return proc

    def stop_inspector(self, sig: int = sig_.SIGTERM, timeout: float = 10) -> int | None:
        assert self.inspector is not None
        return self.inspector.stop(sig, timeout)

    def events(self, **match: Any) -> list[dict[str, Any]]:
        return [e for e in _read_jsonl(self.events_file) if all(e.get(k) == v for k, v in match.items())]

    def wait_event(self, timeout: float = 5, after: int = 0, **match: Any) -> dict[str, Any]:
        """The first event (of those after index ``after`` among matching ones) matching ``match``."""
        found = wait_for(lambda: self.events(**match)[after:], timeout, what=f"event {match}")
        return found[0]

    def cli(self, *args: str, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """``inspector ARGS --config F`` in the server namespace."""
        return self.s(PY, "-m", "inspector", *args, "--config", str(self.config_file), check=check, timeout=timeout)

    # ---- ipset ----------------------------------------------------------------------------------
    def ipset(self, name: str) -> dict[str, int]:
        """Members of ipset ``name`` in the server namespace, with their seconds left."""
        r = self.s("ipset", "list", name, check=False)
        if r.returncode:
            raise RuntimeError(f"ipset list {name}: {r.stderr.strip()}")
        out, members = {}, False
        for line in r.stdout.splitlines():
            if line.startswith("Members:"):
                members = True
                continue
            if members and line.strip():
                f = line.split()
                out[f[0]] = int(f[f.index("timeout") + 1]) if "timeout" in f else 0
        return out

    def banned(self, addr: str) -> int | None:
        """Seconds left of the ban covering ``addr`` in the ipset, or None."""
        v = 6 if ":" in addr else 4
        return self.ipset(BAN_SET[v]).get(ban_network(addr))

    # ---- the client -----------------------------------------------------------------------------
    def client_run(self, actions: list[dict[str, Any]], timeout: float = 60) -> list[dict[str, Any]]:
        """Run client actions in the client namespace; returns one result per action."""
        r = self.c(PY, str(HERE / "client.py"), json.dumps(actions), str(timeout - 5),
                   timeout=timeout, check=False)
        if r.returncode:
            raise RuntimeError(f"client failed ({r.returncode}): {r.stderr}")
        return json.loads(r.stdout)

    def smtp(self, src: str, rcpts: list[str] | None = None, **kw: Any) -> dict[str, Any]:
        v = 6 if ":" in src else 4
        action = {"op": "smtp", "src": src, "dst": SERVER[v], "rcpts": rcpts or ["user@example.org"], **kw}
        return self.client_run([action])[0]

    def connect(self, src: str, port: int, **kw: Any) -> dict[str, Any]:
        v = 6 if ":" in src else 4
        return self.client_run([{"op": "connect", "src": src, "dst": SERVER[v], "port": port, **kw}])[0]

    # ---- diagnostics and teardown ---------------------------------------------------------------
    def diagnostics(self) -> str:
        parts = [f"namespaces: server {self.server}, client {self.client}; smtp server: {self.smtp_kind}"]
        if self.inspector:
            parts.append(self.inspector.tail())
        for p in (self.events_file, self.server_log):
            with suppress(OSError):
                parts.append(f"--- {p.name} (last lines):\n" + "\n".join(p.read_text().splitlines()[-40:]))
        try:
            parts.append("--- iptables-save:\n" + self.s("iptables-save", check=False, timeout=10).stdout)
            parts.append("--- queue:\n" + self.s("cat", "/proc/net/netfilter/nfnetlink_queue",
                                                 check=False, timeout=10).stdout)
        except Exception as e:  # noqa: BLE001
            parts.append(f"(no firewall dump: {e})")
        return "\n".join(parts)

    def close(self) -> None:
        self.stack.close()


class NamespaceUnavailable(RuntimeError):
    pass


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a line being written
    return out
