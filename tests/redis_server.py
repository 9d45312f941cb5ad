"""A redis-server for tests: Debian's binary, started by the test in a network namespace.

Its own config directory, port, ACL users with passwords and a UNIX socket (reachable from
the test process whatever its namespace), run in the foreground as a child process and
stopped by PID.  ``stop()``/``start()`` keep the data directory, so with ``appendonly`` the
stream survives a restart; without it Redis comes back empty (both are cases to test).
The packaged system service is never started (Debian's ``policy-rc.d`` keeps apt from it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

PASSWORD = "fleet-test-secret"
ADMIN_PASSWORD = "admin-test-secret"
# the least the fleet client needs: its keys, the stream/zset/hash commands and scripts
ACL = ("user inspector on >{pw} ~inspector:* resetchannels -@all +@connection +xadd +xread "
       "+xinfo|stream +zadd +zrangebyscore +zrem +zscore +hset +hdel +hmget +evalsha +eval +script|load +script|exists")


def why_not() -> str | None:
    """Why redis-server cannot run here (None: it can)."""
    if shutil.which("redis-server") is None:
        return "needs Debian's redis-server (scripts/bootstrap.sh installs it)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "needs the redis client (pip install -e '.[fleet]')"
    return None


class RedisServer:
    """One redis-server in namespace ``ns`` (None: the current one), listening on ``port`` and a socket."""

    def __init__(self, ns: str | None, port: int = 6390, bind: str = "0.0.0.0", appendonly: bool = True,
                 extra: str = "") -> None:
        self.ns = ns
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="insp-redis-"))
        self.socket = self.dir / "redis.sock"
        self.conf = self.dir / "redis.conf"
        self.conf.write_text("\n".join([
            f"port {port}", f"bind {bind}", "protected-mode no", f"unixsocket {self.socket}", "unixsocketperm 700",
            f"dir {self.dir}", "save \"\"", f"appendonly {'yes' if appendonly else 'no'}", "appendfsync everysec",
            "daemonize no", f"logfile {self.dir / 'redis.log'}", "stream-node-max-entries 100",
            f"user default on >{ADMIN_PASSWORD} ~* &* +@all", ACL.format(pw=PASSWORD), extra, ""]))
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, host: str | None = None) -> str:
        """The fleet's URL: TCP to ``host`` if given, else the UNIX socket."""
        if host is None:
            return f"unix://inspector:{PASSWORD}@{self.socket}"
        return f"redis://inspector:{PASSWORD}@{host}:{self.port}/0"

    def admin(self):  # type: ignore[no-untyped-def]
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), password=ADMIN_PASSWORD, decode_responses=True)

    def start(self, timeout: float = 10.0) -> None:
        argv = ["redis-server", str(self.conf)]
        if self.ns:
            argv = ["ip", "netns", "exec", self.ns, *argv]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {self.log()[-800:]}")
            try:
                if self.admin().ping():
                    return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start in {timeout}s: {self.log()[-800:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def log(self) -> str:
        try:
            return (self.dir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def memory(self) -> int:
        """Bytes Redis has allocated (INFO memory used_memory)."""
        return int(self.admin().info("memory")["used_memory"])
