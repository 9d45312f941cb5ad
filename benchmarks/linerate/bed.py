"""Two network namespaces joined by a veth pair, torn down whatever happens.

Layout (documentation and benchmarking ranges only, all inside the two namespaces)::

    client ns  veth-c 192.0.2.1/24, 2001:db8::1/64
               lo: local route 198.18.0.0/15 (AnyIP: every address of the /15 is "ours",
                   so sockets bind to any of them) and 2001:db8:8000::/33
    server ns  veth-s 192.0.2.25/24, 2001:db8::25/64
               198.18.0.0/15 via 192.0.2.1 and 2001:db8:8000::/33 via 2001:db8::1
               (one neighbour entry, whatever the number of sources)

Every step registers its undo on an ExitStack; :meth:`Bed.close` runs them all, even
after an error.  Processes are started with ``ip netns exec`` (which execs, so the PID we
hold is the program's own) and stopped by PID.  The root namespace is never changed:
every firewall command goes through :meth:`Bed.s` / :meth:`Bed.c`, which prefix
``ip netns exec <our namespace>``.
"""

from __future__ import annotations

import os
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procfs

SERVER4, SERVER6 = "192.0.2.25", "2001:db8::25"
CLIENT_LINK4, CLIENT_LINK6 = "192.0.2.1", "2001:db8::1"
SOURCES4, SOURCES6 = "198.18.0.0/15", "2001:db8:8000::/33"


@dataclass
class Proc:
    """A process this benchmark started, known by PID; stderr (and stdout unless piped) go to files."""

    name: str
    popen: subprocess.Popen
    files: list[Any] = field(default_factory=list)
    err_path: Path | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        try:
            if self.alive():
                os.kill(self.pid, sig)
                try:
                    return self.popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    if self.alive():
                        os.kill(self.pid, signal.SIGKILL)
                    self.popen.wait(timeout=5)
                    return None
            return self.popen.returncode
        finally:
            for f in self.files:
                f.close()
            self.files = []
            for stream in (self.popen.stdin, self.popen.stdout):
                if stream is not None:
                    with suppress(OSError):
                        stream.close()

    def tail(self, n: int = 2000) -> str:
        if self.err_path is None:
            return ""
        try:
            return self.err_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def readline(self, timeout: float) -> bytes:
        """One line of the piped stdout, or b"" after ``timeout`` seconds / at EOF."""
        assert self.popen.stdout is not None
        ready, _, _ = select.select([self.popen.stdout], [], [], timeout)
        return self.popen.stdout.readline() if ready else b""


class Bed:
    def __init__(self, keep_dir: bool = False) -> None:
        uid = uuid.uuid4().hex[:10]
        self.server = f"lr-s-{uid}"
        self.client = f"lr-c-{uid}"
        self.dir = Path(tempfile.mkdtemp(prefix="line-rate-"))
        self.stack = ExitStack()
        if not keep_dir:
            self.stack.callback(shutil.rmtree, self.dir, True)
        self.procs: list[Proc] = []

    # -- commands --------------------------------------------------------------------------
    def _run(self, ns: str, argv: Iterable[str], check: bool, timeout: float,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        assert ns in (self.server, self.client) and ns
        cmd = ["ip", "netns", "exec", ns, *argv]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if check and r.returncode:
            raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def s(self, *argv: str, check: bool = True, timeout: float = 60,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command in the server namespace."""
        return self._run(self.server, argv, check, timeout, env)

    def c(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command in the client namespace."""
        return self._run(self.client, argv, check, timeout)

    def spawn(self, name: str, ns: str, argv: list[str], stdin: bool = False, stdout: bool = True,
              cwd: str | None = None, env: dict[str, str] | None = None) -> Proc:
        """Start ``argv`` in ``ns``; stdout piped (``stdout=True``) or to a file; stderr to a file."""
        assert ns in (self.server, self.client)
        err_path = self.dir / f"{name}.err"
        err = open(err_path, "ab")  # noqa: SIM115 - closed by Proc.stop
        files = [err]
        out: Any = subprocess.PIPE
        if not stdout:
            out = open(self.dir / f"{name}.out", "ab")  # noqa: SIM115
            files.append(out)
        popen = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=out, stderr=err,
                                 stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, cwd=cwd, env=env)
        proc = Proc(name, popen, files, err_path)
        self.procs.append(proc)
        self.stack.callback(proc.stop)
        return proc

    # -- namespaces -----------------------------------------------------------------------
    def up(self) -> None:
        for ns in (self.server, self.client):
            r = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True, timeout=10)
            if r.returncode:
                raise RuntimeError(f"cannot create network namespace {ns}: {r.stderr.strip()}")
            self.stack.callback(self._delete_ns, ns)
        for ns in (self.server, self.client):
            self._run(ns, ["ip", "link", "set", "lo", "up"], True, 10)
            self._run(ns, ["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"],
                      True, 10)
        subprocess.run(["ip", "link", "add", "veth-s", "netns", self.server, "type", "veth",
                        "peer", "name", "veth-c", "netns", self.client], check=True, capture_output=True, timeout=10)
        s, c = self.server, self.client
        for ns, cmd in [
            (s, f"ip addr add {SERVER4}/24 dev veth-s"),
            (s, f"ip addr add {SERVER6}/64 dev veth-s nodad"),
            (c, f"ip addr add {CLIENT_LINK4}/24 dev veth-c"),
            (c, f"ip addr add {CLIENT_LINK6}/64 dev veth-c nodad"),
            (s, "ip link set veth-s up"),
            (c, "ip link set veth-c up"),
            (c, f"ip route add local {SOURCES4} dev lo"),
            (c, f"ip -6 route add local {SOURCES6} dev lo"),
            (s, f"ip route add {SOURCES4} via {CLIENT_LINK4} dev veth-s"),
            (s, f"ip -6 route add {SOURCES6} via {CLIENT_LINK6} dev veth-s"),
            # a listen backlog for thousands of concurrent handshakes, and room for a SYN flood
            (s, "sysctl -qw net.core.somaxconn=8192 net.ipv4.tcp_max_syn_backlog=8192"),
            # the load generator opens many connections: every local port is usable
            (c, "sysctl -qw 'net.ipv4.ip_local_port_range=1024 65535'"),
        ]:
            self._run(ns, shlex.split(cmd), True, 10)

    def _delete_ns(self, ns: str) -> None:
        # anything still running inside is ours (the namespace is new and uniquely named)
        self._kill_inside(ns)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)

    def _kill_inside(self, ns: str) -> None:
        r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=10)
        pids = [int(p) for p in r.stdout.split() if p.isdigit() and int(p) != os.getpid()]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            live = [p for p in pids if procfs.alive(p)]
            if not live:
                return
            for p in live:
                with suppress(ProcessLookupError):
                    os.kill(p, sig)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and any(procfs.alive(p) for p in live):
                time.sleep(0.05)

    def close(self) -> None:
        self.stack.close()


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)
