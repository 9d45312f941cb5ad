"""Every built-in filter's fixture through ``python -m inspector scan``, compared exactly.

A fixture annotates its lines in fail2ban's manner: ``# fail: {...}`` describes
the next line (host, time, and ``whitelisted`` / ``count`` where they apply),
``# ban: {...}`` the ban the line before it completes.  A line without an
annotation must not match.  ``# scan: ...`` gives the command-line options.
"""

from __future__ import annotations

import gzip
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.logs.filters import builtin_names

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).resolve().parents[2]


def expected(path: Path) -> tuple[list[str], list[tuple]]:
    args: list[str] = []
    want: list[tuple] = []
    pending = None
    last_fail = None
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("# scan:"):
            args = shlex.split(line[len("# scan:"):])
        elif line.startswith("# fail:"):
            assert pending is None, f"{path}:{lineno}: two '# fail' in a row"
            pending = json.loads(line[len("# fail:"):])
        elif line.startswith("# ban:"):
            b = json.loads(line[len("# ban:"):])
            assert last_fail is not None, f"{path}:{lineno}: a ban needs a failure line before it"
            want.append(("ban", last_fail, b["network"], b["seconds"], b.get("offense", 1)))
        elif line.startswith("#"):
            continue
        elif pending is not None:
            want.append(("fail", lineno, pending["host"], pending["at"], pending.get("whitelisted", False),
                         pending.get("count", 1), line))
            last_fail = lineno
            pending = None
    assert pending is None, f"{path}: '# fail' at the end without a line"
    return args, want


def scan(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "inspector", "scan", str(path), *args],
                          capture_output=True, text=True, env=env, timeout=60)


def got(stdout: str) -> tuple[list[tuple], dict]:
    out: list[tuple] = []
    summary: dict = {}
    for raw in stdout.splitlines():
        d = json.loads(raw)
        if "summary" in d:
            summary = d["summary"]
        elif "ban" in d:
            b = d["ban"]
            out.append(("ban", b["lineno"], b["network"], b["seconds"], b["offense"]))
        else:
            out.append(("fail", d["lineno"], d["host"], d["at"], d.get("whitelisted", False), d.get("count", 1),
                        d["line"]))
    return out, summary


@pytest.mark.parametrize("name", builtin_names())
def test_fixture(name):
    path = FIXTURES / f"{name}.log"
    args, want = expected(path)
    assert want, "a fixture with nothing to find tests nothing"
    assert any(w[0] == "ban" for w in want)
    proc = scan(path, "--filter", name, *args)
    assert proc.returncode == 0, proc.stderr
    found, summary = got(proc.stdout)
    assert found == want
    fails = [w for w in want if w[0] == "fail"]
    assert summary["matched"] == len(fails)
    assert summary["failures"] == sum(w[5] for w in fails)
    assert summary["bans"] == sum(1 for w in want if w[0] == "ban")
    assert summary["lines"] == len(path.read_text().splitlines())
    assert summary["filter"] == name


@pytest.mark.parametrize("name", builtin_names())
def test_other_filters_find_nothing_in_a_fixture(name):
    """No filter matches another daemon's failure lines."""
    for other in builtin_names():
        if other == name:
            continue
        proc = scan(FIXTURES / f"{name}.log", "--filter", other, "--year", "2026", "--utc")
        assert proc.returncode == 0, proc.stderr
        found, summary = got(proc.stdout)
        assert found == [], (other, found[:2])


def test_gzip_gives_the_same_result(tmp_path):
    src = FIXTURES / "sshd.log"
    gz = tmp_path / "sshd.log.1.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    args, want = expected(src)
    proc = scan(gz, "--filter", "sshd", *args)
    assert proc.returncode == 0, proc.stderr
    assert got(proc.stdout)[0] == want


def test_user_filter_from_config(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("""
[logs]
whitelist = ["192.0.2.0/24"]
[[logs.source]]
path = "/var/log/myapp.log"
filter = "myapp"
maxretry = 2
bantime = 600
[[logs.filter]]
name = "myapp"
regex = '^(?P<time>\\S+) myapp: auth failure from (?P<host>\\S+)$'
literal = "auth failure"
""")
    log = tmp_path / "myapp.log"
    log.write_text(
        "2026-11-21T10:00:00Z myapp: auth failure from 198.51.100.1\n"
        "2026-11-21T10:00:01Z myapp: login ok from 198.51.100.2\n"
        "2026-11-21T10:00:02Z myapp: auth failure from ::ffff:198.51.100.1\n"
        "2026-11-21T10:00:03Z myapp: auth failure from 192.0.2.9\n"
        "2026-11-21T10:00:04Z myapp: auth failure from 192.0.2.9\n"
        "2026-11-21T10:00:05Z myapp: auth failure from not-an-address\n")
    proc = scan(log, "--filter", "myapp", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    found, summary = got(proc.stdout)
    assert [f[:3] for f in found] == [("fail", 1, "198.51.100.1"), ("fail", 3, "198.51.100.1"),
                                      ("ban", 3, "198.51.100.1"), ("fail", 4, "192.0.2.9"), ("fail", 5, "192.0.2.9")]
    assert found[2][3] == 600
    assert found[3][4] is True  # whitelisted by [logs] whitelist
    assert summary["skipped"]["not_address"] == 1
    assert summary["policy"]["maxretry"] == 2  # the source's limits


def test_unknown_filter_lists_the_builtins(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("x\n")
    proc = scan(log, "--filter", "nginx")
    assert proc.returncode == 1
    assert "unknown filter 'nginx'" in proc.stderr
    for name in builtin_names():
        assert name in proc.stderr
    assert proc.stdout == ""


def test_unreadable_file_exits_2(tmp_path):
    proc = scan(tmp_path / "missing.log", "--filter", "sshd")
    assert proc.returncode == 2
    assert "cannot read" in proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["summary"]["lines"] == 0


def test_malformed_and_long_lines_are_counted_never_fatal(tmp_path):
    log = tmp_path / "auth.log"
    fail = b"Nov 21 13:00:0%d host sshd[1]: Failed password for root from 203.0.113.60 port 22 ssh2"
    log.write_bytes(
        fail % 1 + b"\n"
        + b"Nov 21 13:00:02 host sshd[1]: Failed password for " + b"A" * 40000 + b" from 203.0.113.61 port 1 ssh2\n"
        + b"\xff\xfe\x00garbage \xc3\x28 not utf-8\n"
        + b"Nov 21 13:00:03 host sshd[1]: Failed password for r\xe9sum\xe9 from 203.0.113.60 port 22 ssh2\r\n"
        + b"Nov 21 13:00:04 host sshd[1]: Failed password for root from 999.1.1.1 port 22 ssh2\n"
        + b"\n"
        + b"B" * 100000 + b"\n"
        + fail % 5)  # no newline at the end
    proc = scan(log, "--filter", "sshd", "--year", "2026", "--utc", "--maxretry", "3")
    assert proc.returncode == 0, proc.stderr
    found, summary = got(proc.stdout)
    assert [(f[0], f[1], f[2]) for f in found] == [
        ("fail", 1, "203.0.113.60"), ("fail", 4, "203.0.113.60"), ("fail", 8, "203.0.113.60"),
        ("ban", 8, "203.0.113.60")]
    assert found[1][6].endswith("port 22 ssh2")  # CRLF stripped
    assert "\ufffd" in found[1][6]
    assert summary["lines"] == 8
    assert summary["skipped"] == {"too_long": 2, "not_address": 1}
