"""A real Exim for tests: Debian's ``exim4-daemon-light``, unpacked, one private instance per test.

``exim4-daemon-light`` and ``postfix`` conflict in apt (both are the
``mail-transport-agent``), so the package is never installed: :func:`ensure_exim`
fetches it with ``apt-get download`` and unpacks it with ``dpkg-deb -x`` into a
cache directory (``INSPECTOR_EXIM_CACHE``, default ``/var/cache/inspector-e2e``),
once per machine; a fresh CI machine gets it on the first test that needs it.
The binary needs the ``Debian-exim`` user at start (even for ``-bV``) and
``libidn12`` (scripts/bootstrap.sh installs it); :func:`ensure_exim` creates the
system user when it is missing, as the ``exim4-base`` package would.

:class:`Exim` writes its own configuration into a fresh world-traversable
``/tmp/exim-XXXX`` (Exim's unprivileged processes must read the spool, the
certificate and the config; pytest's ``tmp_path`` sits under a 0700 directory),
runs ``exim4 -bdf`` (a foreground daemon) as a child of the test inside a
network namespace, and is stopped by that PID.  It accepts every recipient (no
relay check: ``acl_rcpt`` lines come first, then ``accept``), delivers everything
to ``:blackhole:`` (Exim's discard) and logs to ``mainlog`` in its directory;
:meth:`Exim.received` lists the accepted messages (``<=`` lines) with their
recipients (``for ...``).  ``$tls_in_*``: STARTTLS is offered with a
self-signed certificate (``tls_advertise_hosts = *``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

CACHE = Path(os.environ.get("INSPECTOR_EXIM_CACHE", "/var/cache/inspector-e2e"))
PACKAGE = "exim4-daemon-light"
USER = "Debian-exim"

_RECEIVED = re.compile(r" <= (?P<sender>\S+) .*? for (?P<rcpts>.+)$")


class EximUnavailable(RuntimeError):
    """Exim cannot run here (tests skip with this reason)."""


class EximError(RuntimeError):
    """The instance did not start; the message carries the log's tail."""


def ensure_exim(cache: Path = CACHE) -> Path:
    """The unpacked ``exim4`` binary (fetched and unpacked on first use); EximUnavailable if impossible."""
    binary = cache / PACKAGE / "usr" / "sbin" / "exim4"
    if os.geteuid() != 0:
        raise EximUnavailable("Exim's daemon must start as root")
    if not binary.exists():
        if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
            raise EximUnavailable("needs apt-get and dpkg-deb to fetch exim4-daemon-light")
        download = cache / "download"
        download.mkdir(parents=True, exist_ok=True)
        os.chmod(cache, 0o755)
        r = subprocess.run(["apt-get", "download", PACKAGE], cwd=download, capture_output=True, text=True,
                           timeout=300)
        debs = sorted(download.glob(f"{PACKAGE}_*.deb"))
        if r.returncode or not debs:
            raise EximUnavailable(f"apt-get download {PACKAGE} failed: {r.stderr.strip()[-300:]}")
        target = cache / f"{PACKAGE}.tmp"
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(target)], check=True, timeout=120)
        os.replace(target, cache / PACKAGE)
    try:
        pwd.getpwnam(USER)
    except KeyError:
        r = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/var/spool/exim4",
                            "--shell", "/usr/sbin/nologin", USER], capture_output=True, text=True, timeout=30)
        if r.returncode:
            raise EximUnavailable(f"cannot create the {USER} user: {r.stderr.strip()}") from None
    r = subprocess.run([str(binary), "-bV", "-C", "/dev/null"], capture_output=True, text=True, timeout=30)
    if "Exim version" not in r.stdout:
        raise EximUnavailable(f"{binary} -bV failed (libidn12 missing?): {(r.stdout + r.stderr).strip()[-300:]}")
    return binary


class Exim:
    """A private Exim daemon (see the module docstring); use as a context manager.

    ``acl_rcpt``: lines placed first in the RCPT ACL (e.g. ``.include /path/exim4-acl.conf``);
    ``macros``: ``NAME = value`` lines at the top of the configuration.
    """

    def __init__(self, netns: str | None, cert: Path, key: Path, *, port: int = 25,
                 acl_rcpt: Iterable[str] = (), macros: Iterable[str] = (), workdir: Path | None = None) -> None:
        self.binary = ensure_exim()
        self.netns = netns
        self.port = port
        self.workdir = workdir
        self.dir = Path(tempfile.mkdtemp(prefix="exim-"))
        os.chmod(self.dir, 0o755)
        self.spool = self.dir / "spool"
        self.config = self.dir / "exim.conf"
        self.mainlog = self.spool / "log" / "mainlog"
        self.stderr_file = self.dir / "daemon.err"
        uid, gid = pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        shutil.copy(cert, self.cert)
        shutil.copy(key, self.key)
        for f in (self.cert, self.key):
            os.chown(f, uid, gid)
            os.chmod(f, 0o640)
        self.spool.mkdir()
        os.chown(self.spool, uid, gid)
        self.config.write_text(self._config(list(acl_rcpt), list(macros)))
        self.proc: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None

    def _config(self, acl_rcpt: list[str], macros: list[str]) -> str:
        acl = "".join(f"  {line}\n" if not line.startswith(".") else f"{line}\n" for line in acl_rcpt)
        return f"""\
{''.join(m + chr(10) for m in macros)}exim_path = {self.binary}
spool_directory = {self.spool}
log_file_path = {self.spool}/log/%slog
primary_hostname = mx.example.net
daemon_smtp_ports = {self.port}
local_interfaces = <; ::0 ; 0.0.0.0
host_lookup =
rfc1413_hosts =
keep_environment =
tls_advertise_hosts = *
tls_certificate = {self.cert}
tls_privatekey = {self.key}
acl_smtp_rcpt = acl_rcpt
log_selector = +tls_cipher +incoming_port +received_recipients
queue_only = false
smtp_accept_max = 200

begin acl

acl_rcpt:
{acl}  accept

begin routers

blackhole:
  driver = redirect
  data = :blackhole:

begin transports

begin retry
*   *   F,1m,1m

begin rewrite
"""

    # ---- life cycle -------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Start ``exim4 -bdf`` in the namespace; return once it listens."""
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        err = open(self.stderr_file, "ab")  # noqa: SIM115 - closed right after the spawn
        try:
            self.proc = subprocess.Popen([*prefix, str(self.binary), "-bdf", "-C", str(self.config)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True)
        finally:
            err.close()
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.proc.poll() is not None:
                raise EximError(f"exim exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise EximError(f"exim did not listen on port {self.port} within {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        r = subprocess.run([*prefix, "ss", "-Hltn", f"sport = :{self.port}"], capture_output=True, text=True,
                           timeout=10)
        return bool(r.stdout.strip())

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the daemon by PID, SIGKILL its process group after ``timeout``; keep the log; remove the dir."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # delivery processes it forked
        if self._final_log is None and self.dir.exists():
            self._final_log = self.log_tail(10**9)
            if self.workdir is not None:
                self.workdir.mkdir(parents=True, exist_ok=True)
                (self.workdir / "exim-mainlog").write_text(self._final_log)
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Exim:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ---- what Exim did ----------------------------------------------------------------------------
    def log(self) -> str:
        if self._final_log is not None:
            return self._final_log
        parts = []
        for name in ("mainlog", "rejectlog", "paniclog"):
            with contextlib.suppress(FileNotFoundError):
                parts.append((self.spool / "log" / name).read_text(errors="replace"))
        return "\n".join(parts)

    def log_tail(self, n: int = 4000) -> str:
        if self._final_log is not None:
            return self._final_log[-n:]
        parts = [self.log()[-n:]]
        with contextlib.suppress(FileNotFoundError):
            parts.append(self.stderr_file.read_text(errors="replace")[-n:])
        return "\n".join(p for p in parts if p)

    def received(self) -> list[tuple[str, list[str]]]:
        """Every accepted message: (sender, recipients), in log order."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.mainlog.read_text(errors="replace").splitlines():
                m = _RECEIVED.search(line)
                if m:
                    out.append((m["sender"], m["rcpts"].split()))
        return out


def make_certificate(directory: Path, name: str = "mx.example.net") -> tuple[Path, Path]:
    """A self-signed certificate and key (RSA 2048, 2 days) for the MTAs' STARTTLS."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", f"/CN={name}"], check=True, capture_output=True, timeout=60)
    return cert, key
