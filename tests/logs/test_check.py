"""``inspector check`` names every log source that cannot be read now; ``status`` shows each one's state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inspector.logs import check_lines, status_lines
from inspector.logs.settings import LogSettings, LogSource

ROOT = Path(__file__).resolve().parents[2]


def test_check_names_each_unreadable_source(tmp_path):
    auth = tmp_path / "auth.log"
    auth.write_text("")
    config = tmp_path / "c.toml"
    config.write_text(f"""
[logs]
journal_directory = "{tmp_path / 'no-journal'}"
[[logs.source]]
path = "{auth}"
filter = "sshd"
[[logs.source]]
path = "{tmp_path / 'errors.log'}"
filter = "roundcube"
[[logs.source]]
path = "{tmp_path / 'mail.log'}"
filter = "dovecot"
""")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "inspector", "check", "--config", str(config)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith(f"log source sshd:{auth}"))
    assert f"backend auto -> {auth}" in lines[i] and not lines[i + 1].startswith("  WARNING")
    j = next(n for n, line in enumerate(lines) if line.startswith("log source roundcube:"))
    assert lines[j + 1] == ("  WARNING: cannot be read now: missing file (waited for; no journal matches to fall "
                            "back to)")
    k = next(n for n, line in enumerate(lines) if line.startswith("log source dovecot:"))
    assert "-> journal in " in lines[k] and "_SYSTEMD_UNIT=dovecot.service" in lines[k]  # the file is missing
    assert lines[k + 1].startswith("  WARNING: cannot be read now: ")
    assert "log sources that cannot be read now: 2 of 3" in lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_check_names_a_file_it_may_not_read(tmp_path):
    secret = tmp_path / "auth.log"
    secret.write_text("x\n")
    secret.chmod(0)
    out = check_lines(LogSettings(sources=(LogSource("sshd", str(secret), name="s", backend="file"),)))
    assert out[1].startswith("  WARNING: cannot be read now: cannot read: ")


def test_status_lines_show_state_backend_and_reason():
    stats = {"logs": [
        {"sources": ["sshd:x"], "backend": "journal", "path": "journal:_SYSTEMD_UNIT=ssh.service", "state": "error",
         "error": "the systemd Python binding is not installed"},
        {"sources": ["dovecot:/var/log/mail.log", "postfix-sasl:/var/log/mail.log"], "backend": "file",
         "path": "/var/log/mail.log", "state": "waiting", "error": None},
    ]}
    assert status_lines(stats) == [
        "log error    journal journal:_SYSTEMD_UNIT=ssh.service (sshd:x): the systemd Python binding is not installed",
        "log waiting  file    /var/log/mail.log (dovecot:/var/log/mail.log, postfix-sasl:/var/log/mail.log)",
    ]
    assert status_lines(None) == []


def test_status_screen_shows_the_log_sources():
    from inspector.status import render

    st = {"ok": True, "pid": 1, "uptime": 5, "mode": "enforce", "queue": 0, "workers": 1, "queues": [],
          "logs": {"logs": [{"sources": ["sshd:x"], "backend": "journal", "path": "journal:_SYSTEMD_UNIT=ssh.service",
                             "state": "reading", "error": None}]}}
    assert "log reading  journal journal:_SYSTEMD_UNIT=ssh.service (sshd:x)" in render("/run/x.sock", st)
