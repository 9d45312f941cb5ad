"""Hardening (issue 11): the owner is never locked out; no local input stalls or silences the service.

Each test plays the attacker or the operator against ``setup-nfqueue.sh install`` +
``inspector run`` in the test bed's namespaces.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from .bed import PY, REPO, SERVER, SETUP, WHITELIST, Bed, ban_network, wait_for

pytestmark = pytest.mark.e2e

SSHD_LINE = "{ts} server sshd[{pid}]: Failed password for root from {ip} port {port} ssh2\n"

# one worker per installed queue unless a test says otherwise
ONE_QUEUE = ("--workers", "1")


def install(bed: Bed, *extra: str, env: dict[str, str] | None = None) -> None:
    """(Re)install the rules, optionally under an SSH session's environment."""
    args = ["install", "--queue", "0", "--ports", "25,22"]
    for cidr in WHITELIST:
        args += ["--whitelist", cidr]
    prefix = ["env", *(f"{k}={v}" for k, v in (env or {}).items())]
    bed.s(*prefix, "bash", str(SETUP), *args, *extra)


class HeldSession:
    """A TCP connection from ``src`` to the server's port 22, held open in the client namespace;
    ``ping()`` checks that it still carries data both ways."""

    CODE = r"""
import socket, sys
src, dst = sys.argv[1], sys.argv[2]
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.bind((src, 0)); s.settimeout(5); s.connect((dst, 22))
s.recv(256)
print("ready", flush=True)
for line in sys.stdin:
    s.settimeout(3)
    try:
        s.sendall(b"ping\n")
        got = b""
        while b"ping\n" not in got:
            chunk = s.recv(256)
            if not chunk:
                break
            got += chunk
        print("ok" if b"ping\n" in got else "closed", flush=True)
    except OSError as e:
        print(type(e).__name__, flush=True)
"""

    def __init__(self, bed: Bed, src: str) -> None:
        v = 6 if ":" in src else 4
        self.popen = subprocess.Popen(["ip", "netns", "exec", bed.client, PY, "-c", self.CODE, src, SERVER[v]],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
        bed.stack.callback(self.close)
        assert self.popen.stdout is not None
        assert self.popen.stdout.readline().strip() == "ready"

    def ping(self) -> str:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write("x\n")
        self.popen.stdin.flush()
        return self.popen.stdout.readline().strip()

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)
        for f in (self.popen.stdin, self.popen.stdout):
            if f:
                f.close()


def sshd_source(path: Path, maxretry: int = 3) -> str:
    return f"""
[logs]
poll_interval = 0.1
[[logs.source]]
path = "{path}"
filter = "sshd"
maxretry = {maxretry}
findtime = 600
bantime = 3600
"""


def write_sshd_failures(log: Path, ip: str, n: int) -> None:
    ts = time.strftime("%b %d %H:%M:%S")
    with log.open("a") as f:
        for i in range(n):
            f.write(SSHD_LINE.format(ts=ts, pid=2000 + i, ip=ip, port=51000 + i))


# -- item 4: the SSH client the setup script whitelisted is never locked out -------------------------

@pytest.mark.parametrize("src", ["198.51.100.12", "2001:db8:3::10"])
def test_whitelisted_ssh_client_survives_failed_passwords(bed: Bed, src: str) -> None:
    """The setup script whitelists the SSH client it runs under (kernel set only, not the config);
    three ``Failed password`` lines from it in sshd's log must not ban it, and its open and new
    connections to port 22 keep working."""
    install(bed, *ONE_QUEUE, env={"SSH_CONNECTION": f"{src} 50022 {SERVER[6 if ':' in src else 4]} 22"})
    log = bed.dir / "auth.log"
    log.write_text("")
    bed.write_config(extra=sshd_source(log))
    bed.start_inspector()
    other = "198.51.100.11" if ":" not in src else "2001:db8:2::10"
    held = HeldSession(bed, src)
    assert held.ping() == "ok"
    write_sshd_failures(log, src, 3)
    # the control: the same three lines from an ordinary client do ban it (the source is read)
    write_sshd_failures(log, other, 3)
    wait_for(lambda: bed.banned(other) is not None, 5, what=f"{other} banned by the log path")
    time.sleep(0.5)
    assert bed.banned(src) is None, "the whitelisted SSH client was banned"
    assert held.ping() == "ok", "the open session of the whitelisted client was cut"
    assert bed.connect(src, 22, banner=True, timeout=3)["ok"], "a new session of the whitelisted client failed"
    # even a ban put into the set by hand cannot lock it out: the whitelist RETURN comes first
    bed.s("ipset", "add", "-exist", "inspector-ban6" if ":" in src else "inspector-ban4", ban_network(src),
          "timeout", "600")
    assert held.ping() == "ok"
    assert bed.connect(src, 22, banner=True, timeout=3)["ok"]
    assert not [e for e in bed.events(event="ban") if e["network"] in (src, ban_network(src))]


# -- item 5: every installed queue is bound, or the service refuses to start --------------------------

def test_fewer_workers_than_installed_queues_refuses_to_start(bed: Bed) -> None:
    install(bed, "--workers", "2")
    bed.write_config()
    try:
        r = bed.cli("run", "--workers", "1", timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("inspector run --workers 1 kept running with queue 1 unbound")
    assert r.returncode == 1, r.stderr
    assert "queue 1 unbound" in r.stderr and "--workers 2" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one clear line, no traceback
    # and with a queue range that misses the installed one entirely
    r = bed.cli("run", "--workers", "2", "--queue", "5", timeout=15)
    assert r.returncode == 1 and "queues 0, 1 unbound" in r.stderr, r.stderr


def test_status_shows_an_unbound_installed_queue_as_an_error(bed: Bed) -> None:
    install(bed, *ONE_QUEUE)
    bed.start_inspector()
    assert bed.cli("status").returncode == 0
    install(bed, "--workers", "2")  # the rules now spread over queues 0 and 1; the service binds 0
    out = bed.cli("status")
    print("\n" + out.stdout)
    assert out.returncode == 1
    assert "ERROR: queue 1 is not bound" in out.stdout
    assert json.loads(bed.cli("status", "--json").stdout)["unbound_queues"] == [1]


# -- item 9: wire text never reaches the operator's terminal raw ---------------------------------------

EVIL_RCPTS = [
    "x\x1b[1;31m\rinspector report: nothing blocked\x1b[8m@blocked.test",  # the issue's
    "y\u202ebad\u2066\x9b2J@blocked.test",  # bidi override and isolate, the C1 CSI
]


def _raw_controls(text: str) -> list[str]:
    import unicodedata

    return [ch for ch in text if ch != "\n" and unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp"}]


def test_wire_text_is_escaped_in_report_status_and_bans(bed: Bed) -> None:
    install(bed, *ONE_QUEUE)
    bed.start_inspector()
    for src, rcpt in zip(["198.51.100.10", "2001:db8:1::10"], EVIL_RCPTS, strict=True):
        assert not bed.smtp(src, [rcpt], timeout=3)["delivered"]
    wait_for(lambda: len(bed.events(event="ban")) == 2, 5, what="two bans")
    page = bed.dir / "report.html"
    outputs = {
        "report": bed.cli("report", "--events", str(bed.events_file), "--html", str(page)),
        "status": bed.cli("status"),
        "bans": bed.cli("bans"),
    }
    for name, r in outputs.items():
        assert r.returncode == 0, (name, r.stderr)
        assert not _raw_controls(r.stdout + r.stderr), (name, r.stdout)
    text = outputs["report"].stdout
    print("\n" + text)
    assert "\\x1b[1;31m\\rinspector report: nothing blocked\\x1b[8m@blocked.test" in text
    assert "\\u202ebad\\u2066\\x9b2j@blocked.test" in text  # the report lower-cases recipients
    html = page.read_text(encoding="utf-8")
    assert not _raw_controls(html.replace("\n", "")) and "\\u202e" in html


# -- item 10: an unprivileged user gets clear one-line errors; every file follows one policy ----------

def _as_user(bed: Bed, config: Path, *args: str, group: str = "nogroup") -> subprocess.CompletedProcess[str]:
    """``inspector ARGS`` as the user nobody (in the server namespace, so the socket path is the same)."""
    return bed.s("setpriv", "--reuid=nobody", f"--regid={group}", "--clear-groups", PY, "-m", "inspector", *args,
                 "--config", str(config), check=False)


def _public_config(bed: Bed) -> Path:
    """The bed's config, where nobody may read it (the socket directory, opened for traversal)."""
    bed.sockdir.chmod(0o755)
    config = bed.sockdir / "inspector.toml"
    config.write_text(bed.config_file.read_text())
    config.chmod(0o644)
    bed.config_file = config
    return config


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _unprivileged_can_run(bed: Bed) -> None:
    r = bed.s("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", PY, "-c", "import inspector",
              check=False)
    if r.returncode:
        pytest.skip(f"the user nobody cannot run this checkout's Python: {r.stderr.strip()[-200:]}")


def test_unprivileged_user_gets_one_line_errors_and_files_are_private(bed: Bed) -> None:
    _unprivileged_can_run(bed)
    install(bed, *ONE_QUEUE)
    bed.write_config()
    config = _public_config(bed)
    bed.start_inspector()
    for src in ("198.51.100.10", "198.51.100.11", "2001:db8:1::10"):
        assert not bed.smtp(src, ["x@blocked.test"], timeout=3)["delivered"]
    wait_for(lambda: len(bed.events(event="ban")) == 3, 5, what="three bans")
    journal = bed.state_file.with_name(bed.state_file.name + ".journal")
    wait_for(lambda: bed.state_file.exists() and journal.exists(), 5, what="the state file and its journal")
    for path in (bed.state_file, journal, bed.events_file, bed.control_socket):
        assert _mode(path) == 0o600, f"{path.name} is {_mode(path):o}"
    status = _as_user(bed, config, "status")
    print("\n" + status.stdout + status.stderr)
    assert status.returncode == 4, status
    assert "NOT RUNNING" not in status.stdout and "needs root" in status.stdout
    for args in (["bans"], ["unban", "198.51.100.10"], ["status", "--json"], ["report"]):
        r = _as_user(bed, config, *args)
        assert r.returncode != 0, (args, r.stdout)
        assert "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) <= 1, (args, r.stderr)
        if args[0] in ("bans", "unban"):
            assert r.stderr.startswith("inspector: error: needs root:"), (args, r.stderr)
    assert bed.banned("198.51.100.10") is not None  # the refused unban changed nothing
    # root still sees it all
    assert bed.cli("status").returncode == 0


def test_files_mode_0640_lets_the_group_read_and_ask(bed: Bed) -> None:
    _unprivileged_can_run(bed)
    install(bed, *ONE_QUEUE)
    bed.write_config(extra='[files]\nmode = "0640"\ngroup = "adm"\n')
    config = _public_config(bed)
    bed.start_inspector()
    for src in ("198.51.100.10", "198.51.100.11"):
        assert not bed.smtp(src, ["x@blocked.test"], timeout=3)["delivered"]
    wait_for(lambda: len(bed.events(event="ban")) == 2, 5, what="two bans")
    journal = bed.state_file.with_name(bed.state_file.name + ".journal")
    wait_for(lambda: bed.state_file.exists() and journal.exists(), 5, what="the state file and its journal")
    import grp

    adm = grp.getgrnam("adm").gr_gid
    for path in (bed.state_file, journal, bed.events_file):
        assert _mode(path) == 0o640 and path.stat().st_gid == adm, path
    assert _mode(bed.control_socket) == 0o660 and bed.control_socket.stat().st_gid == adm
    r = _as_user(bed, config, "status", group="adm")
    assert r.returncode == 0 and "RUNNING" in r.stdout, r
    r = _as_user(bed, config, "bans", group="adm")
    assert r.returncode == 0 and "2 active bans" in r.stdout, r


# -- item 8: a full disk stops nothing, loses nothing, and the state catches up by itself ---------------

def _status(bed: Bed) -> dict | None:
    from inspector.control import control_request

    try:
        return control_request(str(bed.control_socket), {"cmd": "status"}, timeout=2)
    except (OSError, ValueError):
        return None


def _ban_count(bed: Bed, name: str = "inspector-ban4") -> int:
    out = bed.s("ipset", "list", "-t", name).stdout
    return int(next(line.split(":")[1] for line in out.splitlines() if line.startswith("Number of entries")))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_full_disk_at_start_and_while_running_loses_nothing(bed: Bed, workers: str) -> None:
    install(bed, "--workers", workers)
    full = bed.dir / "full"  # a tmpfs mounted in the inspector's own mount namespace, filled before it starts
    full.mkdir()
    auth = bed.dir / "auth.log"
    auth.write_text("")
    bed.state_file, bed.events_file = full / "bans.json", full / "events.jsonl"
    bed.write_config(extra=sshd_source(auth, maxretry=1))
    now = time.time()
    seeded = json.dumps({"version": 1, "saved": now, "bans": [
        {"network": "198.51.100.11", "expires": now + 3600, "reason": "domain", "rule": "blocked.test", "added": now}]})
    script = (f"mount -t tmpfs -o size=256k tmpfs {full} && printf '%s' '{seeded}' > {full}/bans.json && "
              f"(head -c 1M /dev/zero > {full}/fill 2>/dev/null; true) && "
              f"exec {PY} -m inspector run --config {bed.config_file}")
    proc = bed._spawn("inspector", bed.server, ["unshare", "-m", "--propagation", "private", "sh", "-c", script])
    bed.inspector = proc
    bed.stack.callback(proc.stop)
    inside = Path(f"/proc/{proc.pid}/root")  # the inspector's view of its mount namespace
    bed.state_file, bed.events_file = inside / str(full)[1:] / "bans.json", inside / str(full)[1:] / "events.jsonl"

    def up() -> dict | None:
        if not proc.alive():
            pytest.fail(f"inspector run did not start on a full disk:\n{proc.tail()}")
        st = _status(bed)
        return st if st and st.get("ok") else None
    st = wait_for(up, 20, interval=0.1, what="the service's status on a full disk")
    # it enforces: the restored ban and a new one
    assert bed.banned("198.51.100.11") is not None
    assert not bed.smtp("198.51.100.10", ["x@blocked.test"], timeout=3)["delivered"]
    wait_for(lambda: bed.banned("198.51.100.10") is not None, 5, what="a ban on a full disk")
    # and says that the state cannot be written
    st = wait_for(lambda: (_status(bed) or {}).get("storage", {}).get("state", {}).get("write_errors"), 5,
                  what="state write errors in the status")
    screen = bed.cli("status").stdout
    print("\n" + screen)
    assert "ERROR: ban state" in screen and "No space left on device" in screen
    # while it stays full: 200 log bans
    sources = [f"198.18.{i // 200}.{i % 200 + 1}" for i in range(200)]
    ts = time.strftime("%b %d %H:%M:%S")
    with auth.open("a") as f:
        for i, ip in enumerate(sources):
            f.write(SSHD_LINE.format(ts=ts, pid=3000 + i, ip=ip, port=40000 + i))
    wait_for(lambda: _ban_count(bed) >= 202, 15, interval=0.2, what="200 log bans in the ipset")
    st = wait_for(lambda: (s := _status(bed)) and s["storage"]["events"]["pending"] and s, 5,
                  what="events waiting")
    storage = st["storage"]
    assert storage["events"]["failing"] and storage["events"]["write_errors"] >= 1
    assert storage["state"]["pending"] >= 200 and storage["events"]["dropped"] == 0
    assert bed.cli("status").stdout.count("ERROR: ") >= 2
    # space returns: everything is written by itself
    (inside / str(full)[1:] / "fill").unlink()
    wait_for(lambda: (s := _status(bed)) and not s["storage"]["events"]["pending"]
             and not s["storage"]["state"]["pending"] and not s["storage"]["events"]["failing"], 15,
             interval=0.2, what="the state and the event log caught up")
    bans = bed.events(event="ban")
    assert sorted(b["network"] for b in bans if b["reason"] == "log:sshd") == sorted(sources)
    assert [b for b in bans if b["network"] == "198.51.100.10" and b["reason"] == "domain"]
    assert bed.events(event="started") and bed.events(event="error", what="disk")
    from inspector.bans import BanStore

    store = BanStore(bed.state_file)
    assert store.load(time.time()) >= 202
    assert store.records["198.18.0.1"].reason == "log:sshd" and store.records["198.51.100.11"].reason == "domain"
    assert bed.stop_inspector() == 0


# -- also keep: after SIGKILL the bans come back with their reasons --------------------------------------

@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigkill_right_after_2000_bans_restores_every_reason(bed: Bed, workers: str) -> None:
    import signal

    install(bed, "--workers", workers)
    auth = bed.dir / "auth.log"
    auth.write_text("")
    bed.write_config(extra=sshd_source(auth, maxretry=1))
    bed.start_inspector()
    sources = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(2000)]
    ts = time.strftime("%b %d %H:%M:%S")
    auth.write_text("".join(SSHD_LINE.format(ts=ts, pid=4000 + i % 1000, ip=ip, port=40000 + i % 20000)
                            for i, ip in enumerate(sources)))
    wait_for(lambda: _ban_count(bed) >= 2000, 30, interval=0.01, what="2000 log bans in the ipset")
    bed.stop_inspector(signal.SIGKILL)
    bed.inspector = None
    bed.start_inspector()
    st = _status(bed)
    assert st is not None
    reasons = st["bans_by_reason"]
    print(f"\nafter SIGKILL ({workers} worker(s)): {st['bans_active']} bans restored, by reason {reasons}")
    assert st["bans_active"] == 2000 and reasons == {"log:sshd": 2000}, reasons


# -- item 6: a slow control-socket client never stalls the packet path ---------------------------------

class SlowClient:
    """A local client that connects to the control socket and sends one byte every 0.5 s."""

    def __init__(self, path: Path, seconds: float = 6.0) -> None:
        import socket
        import threading

        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.until = time.monotonic() + seconds
        self.sent = 0
        self.thread = threading.Thread(target=self._drip, daemon=True)
        self.thread.start()

    def _drip(self) -> None:
        payload = b'{"cmd": "status"' + b" " * 1000
        while time.monotonic() < self.until and self.sent < len(payload):
            try:
                self.sock.send(payload[self.sent:self.sent + 1])
            except OSError:
                return  # the service dropped us (its request deadline)
            self.sent += 1
            time.sleep(0.5)

    def close(self) -> None:
        self.until = 0
        self.thread.join(2)
        self.sock.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_slow_control_client_stalls_nothing(bed: Bed, workers: str) -> None:
    install(bed, "--workers", workers)
    bed.start_inspector()
    a, b = "198.51.100.10", "198.51.100.11"
    assert not bed.smtp(b, ["x@blocked.test"], timeout=3)["delivered"]
    wait_for(lambda: bed.banned(b) is not None, 5, what="a ban to lift later")
    # distinct sources, each under the rate limit (4 new connections a minute)
    before = [bed.connect(src, 25, banner=True, timeout=10)["time"] for src in (a, "198.51.100.12", "2001:db8:1::10")]
    slow = SlowClient(bed.control_socket)
    bed.stack.callback(slow.close)
    time.sleep(1.0)  # the slow client holds its connection open now
    during = []
    for src in ("2001:db8:2::10", "2001:db8:3::10", a):
        r = bed.connect(src, 25, banner=True, timeout=10)
        assert r["ok"], r
        during.append(r["time"])
    status = bed.cli("status", timeout=10)
    unban = bed.cli("unban", b, timeout=10)
    print(f"\nSMTP banner with a slow control client ({workers} worker(s)): before "
          f"{max(before) * 1000:.0f} ms, during {max(during) * 1000:.0f} ms (max of 3)")
    # (the median, and a bound above one lost SYN's 1 s retransmission on a loaded machine: the
    # issue measured 9.1 s; a stalled loop leaves every connection waiting)
    assert sorted(during)[1] < 0.5 and max(during) < 3.0, during
    assert status.returncode == 0 and "RUNNING" in status.stdout, status
    assert unban.returncode == 0 and "Traceback" not in unban.stderr and f"unbanned {b}" in unban.stdout, unban
    assert bed.banned(b) is None
    slow.close()


def test_control_socket_bounds_request_size_and_time(bed: Bed) -> None:
    import socket

    install(bed, *ONE_QUEUE)
    bed.start_inspector()
    # a request line longer than the limit: an error reply, the connection closed
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(bed.control_socket))
        s.sendall(b"x" * 70000)
        reply = s.recv(4096)
    assert b"longer than" in reply, reply
    # a client that sends nothing is dropped after the request deadline (5 s)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(15)
        s.connect(str(bed.control_socket))
        started = time.monotonic()
        assert s.recv(10) == b""
        waited = time.monotonic() - started
    assert 4 <= waited <= 8, waited
    # twenty idle clients at once: the service still answers (busy beyond 16, never stalled)
    idle = []
    for _ in range(20):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(bed.control_socket))
        idle.append(s)
    try:
        r = bed.connect("198.51.100.12", 25, banner=True, timeout=10)
        assert r["ok"] and r["time"] < 1.0, r
    finally:
        for s in idle:
            s.close()
    assert bed.cli("status").returncode == 0


# -- item 7: replies of any size --------------------------------------------------------------------------

def test_bans_lists_any_number(bed: Bed) -> None:
    """``inspector bans`` streams: 200,000 bans by default (the old reply was cut at about 500);
    INSPECTOR_E2E_MANY_BANS=1000000 lists a million (about two minutes, most of it restoring them
    into the ipset at start; tests/test_control.py streams a million through the socket quickly)."""
    import os

    install(bed, *ONE_QUEUE)  # the sets hold 1,000,000 entries
    now = time.time()
    n = int(os.environ.get("INSPECTOR_E2E_MANY_BANS", "200000"))
    records = ",".join(f'{{"network":"2001:db8:{i >> 16:x}:{i & 0xffff:x}::/64","expires":{now + 86400},'
                       f'"reason":"rate","rule":null,"added":{now}}}' for i in range(n))
    bed.state_file.write_text(f'{{"version":1,"saved":{now},"bans":[{records}]}}')
    bed.write_config()
    bed.start_inspector(timeout=240)
    started = time.monotonic()
    r = bed.s("sh", "-c", f"{PY} -m inspector bans --json --config {bed.config_file} | wc -l", timeout=300)
    took = time.monotonic() - started
    assert int(r.stdout.strip()) == n, r.stderr
    text = bed.s("sh", "-c", f"{PY} -m inspector bans --config {bed.config_file} | head -2", timeout=300).stdout
    assert text.startswith(f"{n} active bans, from the running service"), text
    print(f"\ninspector bans --json: {n:,} bans in {took:.1f} s")
    assert bed.cli("status").returncode == 0  # and the service is fine


# -- own addresses, their /64 and the whitelist are refused on every ban path -------------------------

def test_manual_and_log_bans_refuse_own_addresses_and_the_whitelist(bed: Bed) -> None:
    ssh_client = "198.51.100.12"
    install(bed, *ONE_QUEUE, env={"SSH_CONNECTION": f"{ssh_client} 50022 192.0.2.25 22"})
    auth = bed.dir / "auth.log"
    auth.write_text("")
    bed.write_config(extra=sshd_source(auth, maxretry=1))
    bed.start_inspector()
    refused = {
        "192.0.2.25": "own address",  # the server's own address
        "2001:db8::25": "own /64",  # IPv6 bans cover a /64: the server's own
        "2001:db8::1234": "own /64",  # a neighbour in the server's /64
        "203.0.113.7": "whitelist",  # [whitelist] cidrs
        ssh_client: "whitelist",  # the kernel whitelist (the setup script's SSH client)
        "127.0.0.1": "loopback",
    }
    for address, why in refused.items():
        r = bed.cli("ban", address)
        assert r.returncode == 1 and why in r.stderr and "refused" in r.stderr, (address, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
    ok = bed.cli("ban", "198.51.100.10", "--time", "600")
    assert ok.returncode == 0 and "banned 198.51.100.10" in ok.stdout, ok
    assert 590 <= (bed.banned("198.51.100.10") or 0) <= 600
    # the log path: failed logins "from" the same addresses
    # (a neighbour in the own /64 may be banned alone, as its single address: never the /64)
    write_sshd_failures(auth, "198.51.100.11", 1)  # the control: an ordinary address is banned
    for address in refused:
        write_sshd_failures(auth, address, 2)
    wait_for(lambda: bed.banned("198.51.100.11") is not None, 5, what="the control ban")
    time.sleep(0.5)
    for address in set(refused) - {"2001:db8::1234"}:
        assert bed.banned(address) is None, address
    assert "2001:db8::/64" not in bed.ipset("inspector-ban6")
    st = json.loads(bed.cli("status", "--json").stdout)
    assert st["counts"]["ban-refused"] >= len(refused)
