"""The fleet test bed: one namespace runs redis-server, N host namespaces reach it over veths.

Layout (documentation addresses only)::

    redis ns   fr<i>-<id>  198.18.<i>.1/24   redis-server on port 6390 (password, ACL user)
    host<i> ns fh<i>-<id>  198.18.<i>.2/24   fleet_host.py: fleet client + pipeline + ipsets

Each host namespace has its own ipsets and state directory.  Every namespace, process and
directory is removed by :meth:`FleetBed.close`, also after a failure.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from ..redis_server import RedisServer
from ..redis_server import why_not as redis_why_not

REPO = Path(__file__).resolve().parents[2]


def why_not() -> str | None:
    """Why the fleet bed cannot run here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    for tool in ("ip", "ipset"):
        if shutil.which(tool) is None:
            return f"needs {tool} (scripts/bootstrap.sh installs it)"
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return "needs pyroute2 (the 'live' extra)"
    return redis_why_not()


class HostProc:
    """A fleet_host.py process in a host namespace, spoken to in JSON lines."""

    def __init__(self, ns: str, argv: list[str], log: Path) -> None:
        self.log = log
        self.err = log.open("ab")
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "tests.e2e.fleet_host",
                                      *argv], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, bufsize=1)
        self.read(30)

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no answer from the fleet host in {timeout}s: {self.tail()}")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fleet host exited: {self.tail()}")
        return dict(json.loads(line))

    def ask(self, timeout: float = 60, **request: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self.read(timeout)

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(timeout=15, cmd="stop")
                self.proc.wait(10)
            except (OSError, TimeoutError, RuntimeError, subprocess.TimeoutExpired):
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream:
                stream.close()
        self.err.close()


class FleetBed:
    """Redis in its namespace and ``hosts`` host namespaces (host ids host1..hostN)."""

    def __init__(self, tmp: Path, hosts: int = 3) -> None:
        self.tmp = tmp
        self.id = uuid.uuid4().hex[:6]
        self.redis_ns = f"insp-fr-{self.id}"
        self.ns = {i: f"insp-fh{i}-{self.id}" for i in range(1, hosts + 1)}
        self.procs: dict[int, HostProc] = {}
        self.redis: RedisServer | None = None
        self._made: list[str] = []

    def up(self) -> None:
        for ns in [self.redis_ns, *self.ns.values()]:
            subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
            self._made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for i, ns in self.ns.items():
            a, b = f"fr{i}-{self.id}", f"fh{i}-{self.id}"
            subprocess.run(["ip", "link", "add", a, "netns", self.redis_ns, "type", "veth", "peer", "name", b,
                            "netns", ns], check=True)
            subprocess.run(["ip", "-n", self.redis_ns, "addr", "add", f"198.18.{i}.1/24", "dev", a], check=True)
            subprocess.run(["ip", "-n", ns, "addr", "add", f"198.18.{i}.2/24", "dev", b], check=True)
            subprocess.run(["ip", "-n", self.redis_ns, "link", "set", a, "up"], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", b, "up"], check=True)
        self.redis = RedisServer(self.redis_ns, port=6390)
        self.redis.start()

    def url(self, i: int) -> str:
        assert self.redis is not None
        return self.redis.url(f"198.18.{i}.1")

    def start(self, i: int, keep: int = 3600, whitelist: tuple[str, ...] = ()) -> HostProc:
        argv = ["--url", self.url(i), "--host", f"host{i}", "--state", str(self.tmp / f"host{i}"),
                "--keep", str(keep)]
        for w in whitelist:
            argv += ["--whitelist", w]
        self.procs[i] = HostProc(self.ns[i], argv, self.tmp / f"host{i}.log")
        return self.procs[i]

    def stop(self, i: int) -> None:
        proc = self.procs.pop(i, None)
        if proc is not None:
            proc.stop()

    def kernel(self, i: int) -> set[str]:
        """Host ``i``'s ban set entries, read with the ipset tool (not through the host)."""
        out = subprocess.run(["ip", "netns", "exec", self.ns[i], "ipset", "save"], capture_output=True, text=True,
                             check=True).stdout
        return {line.split()[2] for line in out.splitlines() if line.startswith("add inspector-ban")}

    def close(self) -> None:
        for i in list(self.procs):
            self.stop(i)
        if self.redis is not None:
            self.redis.close()
        for ns in self._made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def wait_until(check: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return bool(check())
