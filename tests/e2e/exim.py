"""A real Exim for tests: Debian's ``exim4-daemon-light`` with Debian's own configuration, one instance per test.

``exim4-daemon-light`` and ``postfix`` conflict in apt (both are the
``mail-transport-agent``), so neither it nor ``exim4-config`` is installed:
:func:`unpacked` fetches a package with ``apt-get download`` and unpacks it with
``dpkg-deb -x`` into a cache directory (``INSPECTOR_EXIM_CACHE``, default
``/var/cache/inspector-e2e``), once per machine; a fresh CI machine gets them on
the first test that needs them.  The binary needs the ``Debian-exim`` user at
start (even for ``-bV``) and ``libidn12`` (scripts/bootstrap.sh installs it);
:func:`ensure_exim` creates the system user when it is missing, as the
``exim4-base`` package would.

:func:`debian_config` builds the configuration a Debian host runs: the
``exim4-config`` package's split ``conf.d``, our debconf answers
(:data:`DEBCONF`: an internet site for ``example.net``, relaying for
``relay_nets``) and ``00_local_macros``, put together by the package's own
``update-exim4.conf``.  :class:`Exim` runs it in a fresh world-traversable
``/tmp/exim-XXXX`` (Exim's unprivileged processes must read the spool, the
certificate and the config; pytest's ``tmp_path`` sits under a 0700 directory),
with only ``exim_path``, the spool, the log path and the certificate pointed at
that directory, as ``exim4 -bdf`` (a foreground daemon), a child of the test
inside a network namespace, stopped by that PID.  STARTTLS is offered with a
self-signed certificate.  Mail for local users would be written to the host's
``/var/mail``: tests stop those sessions after RCPT; mail to other domains is
accepted from relay clients and then deferred in the private spool (no DNS).
:meth:`Exim.received` lists the accepted messages (``<=`` lines) with their
recipients.
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
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

CACHE = Path(os.environ.get("INSPECTOR_EXIM_CACHE", "/var/cache/inspector-e2e"))
PACKAGE = "exim4-daemon-light"
USER = "Debian-exim"
LOG_SELECTOR = "+smtp_protocol_error +smtp_syntax_error +tls_cipher +received_recipients +incoming_port"
# debconf's answers (update-exim4.conf.conf): an internet site, local domain example.net, relaying
# for {relay_nets} (an Exim list), the split configuration
DEBCONF = """\
dc_eximconfig_configtype='internet'
dc_other_hostnames='example.net'
dc_local_interfaces=''
dc_readhost=''
dc_relay_domains=''
dc_minimaldns='false'
dc_relay_nets='{relay_nets}'
dc_smarthost=''
CFILEMODE='644'
dc_use_split_config='true'
dc_hide_mailname=''
dc_mailname_in_oh='true'
dc_localdelivery='mail_spool'
"""

_RECEIVED = re.compile(r" <= (?P<sender>\S+) .*? for (?P<rcpts>.+)$")


class EximUnavailable(RuntimeError):
    """Exim cannot run here (tests skip with this reason)."""


class EximError(RuntimeError):
    """The instance did not start; the message carries the log's tail."""


def unpacked(package: str, cache: Path = CACHE) -> Path:
    """The root of Debian package ``package`` unpacked into ``cache`` (``apt-get download`` and
    ``dpkg-deb -x`` on first use, never installed); EximUnavailable if that is impossible."""
    root = cache / package
    if root.exists():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise EximUnavailable(f"needs apt-get and dpkg-deb to fetch {package}")
    download = cache / "download"
    download.mkdir(parents=True, exist_ok=True)
    os.chmod(cache, 0o755)
    r = subprocess.run(["apt-get", "download", package], cwd=download, capture_output=True, text=True, timeout=300)
    debs = sorted(download.glob(f"{package}_*.deb"))
    if r.returncode or not debs:
        raise EximUnavailable(f"apt-get download {package} failed: {r.stderr.strip()[-300:]}")
    target = cache / f"{package}.tmp"
    shutil.rmtree(target, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(target)], check=True, timeout=120)
    os.replace(target, root)
    return root


def ensure_exim(cache: Path = CACHE) -> Path:
    """The unpacked ``exim4`` binary (fetched and unpacked on first use); EximUnavailable if impossible."""
    if os.geteuid() != 0:
        raise EximUnavailable("Exim's daemon must start as root")
    binary = unpacked(PACKAGE, cache) / "usr" / "sbin" / "exim4"
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


def debian_config(directory: Path, relay_nets: str, local_macros: Iterable[str] = (),
                  extra_files: Mapping[str, str] | None = None) -> str:
    """Debian's own split configuration (the ``exim4-config`` package, unpacked), built by its
    ``update-exim4.conf`` from :data:`DEBCONF` (relaying for ``relay_nets``, an Exim list), with
    ``local_macros`` in ``conf.d/main/00_local_macros`` and ``extra_files`` (paths under the conf
    dir -> text).  Returns the generated configuration's text."""
    update_conf = DEBCONF.format(relay_nets=relay_nets)
    extra_files = extra_files or {}
    root = unpacked("exim4-config")
    confdir = directory / "etc-exim4"
    shutil.copytree(root / "etc" / "exim4", confdir)
    (confdir / "update-exim4.conf.conf").write_text(update_conf)
    (confdir / "conf.d" / "main" / "00_local_macros").write_text(
        "".join(m + "\n" for m in (f"CONFDIR = {confdir}", *local_macros)))
    for name, text in extra_files.items():
        (confdir / name).parent.mkdir(parents=True, exist_ok=True)
        (confdir / name).write_text(text)
    out = directory / "debian.conf"
    r = subprocess.run(["sh", str(root / "usr" / "sbin" / "update-exim4.conf"), "-d", str(confdir), "-o", str(out)],
                       capture_output=True, text=True, timeout=60)
    if r.returncode or not out.exists():
        raise EximError(f"update-exim4.conf failed: {r.stdout}{r.stderr}")
    return out.read_text()


class Exim:
    """A private Exim daemon running ``config`` (see the module docstring); a context manager."""

    def __init__(self, netns: str | None, cert: Path, key: Path, config: str, *, port: int = 25,
                 workdir: Path | None = None) -> None:
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
        macros = (f"SPOOLDIR = {self.spool}", "MAIN_TLS_ENABLE = yes", f"MAIN_TLS_CERTIFICATE = {self.cert}",
                  f"MAIN_TLS_PRIVATEKEY = {self.key}", f"MAIN_LOG_SELECTOR = {LOG_SELECTOR}")
        text = re.sub(r"(?m)^exim_path = .*$", f"exim_path = {self.binary}\nlog_file_path = {self.spool}/log/%slog\n"
                      f"daemon_smtp_ports = {port}", config)
        self.config.write_text("".join(m + "\n" for m in macros) + text)
        self.proc: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None

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
