"""A real Postfix for tests: Debian's ``postfix`` package, one private instance per test.

The instance has its own configuration directory, queue directory and data directory in
a fresh ``/tmp/postfix-XXXX`` directory (Postfix's unprivileged daemons must traverse every
parent of the queue: pytest's ``tmp_path`` is under a 0700 directory, so it cannot live
there); :meth:`Postfix.stop` copies the maillog to ``workdir`` (if given) and removes that
directory.  It runs ``master -d`` (foreground) as a child of the test, inside a
given network namespace (``ip netns exec NS``), and is stopped by that PID.  Nothing of
the system's Postfix (``/etc/postfix``, the packaged service) is used or touched.

What the instance does (``main.cf`` written by :meth:`Postfix.write_config`):

* listens on ``inet_interfaces`` (default ``all``: every address of the namespace), port
  ``port`` (default 25), IPv4 and IPv6;
* relays for ``mynetworks`` (the test clients; ``permit_mynetworks`` in
  ``smtpd_relay_restrictions``) and refuses relay for everybody else;
* delivers every message to the ``discard:`` transport (``default_transport``,
  ``relay_transport``, ``local_transport``, ``virtual_transport``), which logs each
  recipient as ``to=<...>`` (and ``orig_to=<...>`` when it was rewritten) with
  ``status=sent (...)``;
* logs to its own ``maillog`` file through the ``postlog`` service (there is no syslog in a
  namespace; FACTS.md "Running real MTAs");
* keeps Postfix's defaults for everything that decides what the server accepts
  (``allow_percent_hack``, ``swap_bangpath``, ``smtpd_forbid_bare_newline``,
  ``smtputf8_enable``...), except ``smtpd_error_sleep_time = 0`` (no 1 s pause after each
  refused command: tests send many) and no DNS (``smtp_dns_support_level = disabled``,
  ``smtpd_peername_lookup = no``).

Extra settings: ``main`` (a dict merged over the defaults above, values as in main.cf) and
``master`` (extra master.cf lines appended verbatim, e.g. ``tlsmgr`` or a policy service
``-o`` override).  Example::

    with Postfix(tmp / "pf", netns="e2e-s-1234", mynetworks=["198.51.100.0/24"],
                 main={"smtpd_recipient_restrictions": "check_policy_service inet:127.0.0.1:10031"}) as pf:
        ...                         # send mail to port 25 of the namespace
        pf.wait_settled()           # until the queue is empty and the log is quiet
        pf.recipients()             # {"v@example.com", ...} (to= and orig_to= of delivered mail)

Errors: :class:`PostfixUnavailable` when the package is not installed (tests skip), and
:class:`PostfixError` with the tail of the log when the instance does not start.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

DAEMON_DIRECTORY = Path("/usr/lib/postfix/sbin")
MASTER = DAEMON_DIRECTORY / "master"
POSTFIX = Path("/usr/sbin/postfix")

# master.cf: the services a discard-only SMTP server needs, none chrooted (the queue
# directory is private to the test, a chroot would need a copy of /etc and libraries)
MASTER_CF = """\
{port}      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# one line of the discard agent: "... postfix/discard[12]: 3F1A2: to=<v@example.com>,
#   orig_to=<v%example.com@[192.0.2.25]>, relay=none, delay=0.01, ..., status=sent (example.com)"
_DELIVERY = re.compile(r"\]: (?P<qid>[0-9A-F]+): to=<(?P<to>[^>]*)>(?:, orig_to=<(?P<orig>[^>]*)>)?.*"
                       r"status=(?P<status>\w+)")


def why_not() -> str | None:
    """Why no Postfix instance can run here (None: it can)."""
    if not MASTER.exists() or not POSTFIX.exists():
        return "needs Debian's postfix package (scripts/bootstrap.sh installs it)"
    if os.geteuid() != 0:
        return "Postfix's master must start as root"
    return None


class PostfixUnavailable(RuntimeError):
    """The postfix package is missing or we are not root (tests skip)."""


class PostfixError(RuntimeError):
    """The instance did not start or did not settle; the message carries the log's tail."""


@dataclass(frozen=True)
class Delivery:
    """One recipient of one message as the discard agent logged it."""

    queue_id: str
    to: str                  # the address after Postfix's rewriting (lowercase as logged)
    orig_to: str | None      # the address the client sent, when Postfix rewrote it
    status: str              # "sent" for the discard transport


class Postfix:
    """A private Postfix instance (see the module docstring); use as a context manager."""

    def __init__(self, workdir: Path | None = None, netns: str | None = None, *, mynetworks: Iterable[str] = (),
                 port: int = 25, inet_interfaces: str = "all", myhostname: str = "mx.example.net",
                 main: Mapping[str, str] | None = None, master: Iterable[str] = ()) -> None:
        self.workdir = Path(workdir) if workdir is not None else None
        self.dir = Path(tempfile.mkdtemp(prefix="postfix-"))
        os.chmod(self.dir, 0o711)
        self.netns = netns
        self.port = port
        self.config_dir = self.dir / "etc"
        self.queue_dir = self.dir / "spool"
        self.data_dir = self.dir / "data"
        self.maillog = self.dir / "maillog"
        self.stderr_file = self.dir / "master.err"
        self.settings: dict[str, str] = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": myhostname,
            "mydomain": myhostname.partition(".")[2] or myhostname,
            "mydestination": "",
            "relay_domains": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": inet_interfaces,
            "inet_protocols": "all",
            "mynetworks": " ".join(["127.0.0.0/8", "[::1]/128", *mynetworks]),
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "default_transport": "discard:",
            "relay_transport": "discard:",
            "local_transport": "discard:",
            "virtual_transport": "discard:",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.dir),
            "smtpd_error_sleep_time": "0",
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "biff": "no",
            "smtpd_banner": "$myhostname ESMTP",
            "master_service_disable": "",
            "shlib_directory": "/usr/lib/postfix",
        }
        self.settings.update(main or {})
        self.master_lines = list(master)
        self.proc: subprocess.Popen[bytes] | None = None
        self._final_log: str | None = None

    # ---- configuration ---------------------------------------------------------------------------
    def write_config(self) -> None:
        """Write main.cf and master.cf and create the directories (also done by :meth:`start`)."""
        for d in (self.config_dir, self.queue_dir, self.data_dir):
            d.mkdir(parents=True, exist_ok=True)
        os.chown(self.data_dir, *_ids("postfix"))
        main = "".join(f"{k} = {v}\n" for k, v in self.settings.items())
        (self.config_dir / "main.cf").write_text(main)
        master = MASTER_CF.format(port=self.port) + "".join(line.rstrip("\n") + "\n" for line in self.master_lines)
        (self.config_dir / "master.cf").write_text(master)
        self.maillog.touch()

    def postconf(self, *args: str) -> str:
        """``postconf -c DIR ARGS`` (read this instance's settings); returns stdout."""
        r = subprocess.run(["postconf", "-c", str(self.config_dir), *args], capture_output=True, text=True,
                           timeout=30)
        if r.returncode:
            raise PostfixError(f"postconf {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    # ---- life cycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Check the configuration, create the queue, start master in the namespace, wait for port."""
        reason = why_not()
        if reason:
            raise PostfixUnavailable(reason)
        self.write_config()
        check = subprocess.run([str(POSTFIX), "-c", str(self.config_dir), "check"], capture_output=True,
                               text=True, timeout=60)
        if check.returncode:
            raise PostfixError(f"postfix check failed:\n{check.stdout}{check.stderr}{self.log_tail()}")
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        err = open(self.stderr_file, "ab")  # noqa: SIM115 - closed in stop()
        try:
            # its own session: master's SIGTERM handler signals its process group (its children)
            self.proc = subprocess.Popen([*prefix, str(MASTER), "-d", "-c", str(self.config_dir)],
                                         stdin=subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True,
                                         env={**os.environ, "MAIL_CONFIG": str(self.config_dir)})
        finally:
            err.close()
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.proc.poll() is not None:
                raise PostfixError(f"postfix master exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise PostfixError(f"postfix did not listen on port {self.port} within {timeout:g}s:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        r = subprocess.run([*prefix, "ss", "-Hltn", f"sport = :{self.port}"], capture_output=True, text=True,
                           timeout=10)
        return bool(r.stdout.strip())

    @property
    def pid(self) -> int | None:
        """The master's PID (our child), or None when not running."""
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the master by PID (it stops its children), SIGKILL its process group after ``timeout``.

        Then keep the log (in memory, and as ``workdir/maillog`` when a workdir was given) and
        remove the instance's directory.  Safe to call twice.
        """
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._final_log is None and self.dir.exists():
            self._final_log = self.log_tail(10**9)
            if self.workdir is not None:
                self.workdir.mkdir(parents=True, exist_ok=True)
                (self.workdir / "maillog").write_text(self._final_log)
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Postfix:
        self.start()
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ---- what Postfix did ------------------------------------------------------------------------
    def log(self) -> str:
        """The instance's whole maillog."""
        if self._final_log is not None:
            return self._final_log
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 4000) -> str:
        """The end of the maillog and of master's stderr (for error messages)."""
        if self._final_log is not None:
            return self._final_log[-n:]
        parts = [self.log()[-n:]]
        with contextlib.suppress(FileNotFoundError):
            parts.append(self.stderr_file.read_text(errors="replace")[-n:])
        return "\n".join(p for p in parts if p)

    def deliveries(self) -> list[Delivery]:
        """Every recipient the discard agent logged, in log order."""
        out = []
        for line in self.log().splitlines():
            m = _DELIVERY.search(line)
            if m:
                out.append(Delivery(m["qid"], m["to"], m["orig"], m["status"]))
        return out

    def recipients(self) -> set[str]:
        """Every address Postfix accepted and delivered: each ``to=`` and each ``orig_to=``."""
        out: set[str] = set()
        for d in self.deliveries():
            out.add(d.to)
            if d.orig_to:
                out.add(d.orig_to)
        return out

    def queued(self) -> int:
        """Messages still in the queue (incoming, active, deferred, hold, maildrop)."""
        n = 0
        for sub in ("incoming", "active", "deferred", "hold", "maildrop"):
            for _root, _dirs, files in os.walk(self.queue_dir / sub):
                n += len(files)
        return n

    def wait_settled(self, timeout: float = 15.0, quiet: float = 0.3) -> None:
        """Wait until no message is queued and the log has not grown for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        size, since = -1, time.monotonic()
        while True:
            now = time.monotonic()
            cur = self.maillog.stat().st_size if self.maillog.exists() else 0
            if cur != size:
                size, since = cur, now
            if self.queued() == 0 and now - since >= quiet:
                return
            if now > deadline:
                raise PostfixError(f"postfix did not settle within {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.05)


def _ids(user: str) -> tuple[int, int]:
    import pwd

    pw = pwd.getpwnam(user)
    return pw.pw_uid, pw.pw_gid
