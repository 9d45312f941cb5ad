"""``inspector check`` names what would silently disable the policy path or the fleet."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "c.toml"
    config.write_text(text)
    return subprocess.run([sys.executable, "-m", "inspector", "check", "--config", str(config)],
                          capture_output=True, text=True, timeout=60)


def test_an_unknown_policy_user_is_a_warning(tmp_path: Path) -> None:
    # a typo ("posfix") leaves Postfix refused: it then answers DUNNO for every blocked envelope
    r = check(tmp_path, '[policy]\nlisten = "127.0.0.1:10040"\nusers = ["root", "posfix-typo-x"]\n')
    assert r.returncode == 0, r.stderr
    assert "WARNING" in r.stdout and "posfix-typo-x" in r.stdout


def test_known_policy_users_give_no_warning(tmp_path: Path) -> None:
    r = check(tmp_path, '[policy]\nlisten = "127.0.0.1:10040"\nusers = ["root", "0"]\n')
    assert r.returncode == 0, r.stderr
    assert "WARNING" not in r.stdout


def test_the_fleet_is_summarised_without_its_password(tmp_path: Path) -> None:
    r = check(tmp_path, '[fleet]\nurl = "redis://inspector:s3cret@192.0.2.5:6379/0"\nhost = "mx1"\n')
    assert r.returncode == 0, r.stderr
    assert "fleet:" in r.stdout and "mx1" in r.stdout and "192.0.2.5:6379" in r.stdout
    assert "s3cret" not in r.stdout


def test_a_fleet_url_redis_cannot_use_is_an_error(tmp_path: Path) -> None:
    for url in ("redis://192.0.2.5:99999/0", "redis://192.0.2.5:6379/abc", "redis://:6379/0"):
        r = check(tmp_path, f'[fleet]\nurl = "{url}"\n')
        assert r.returncode != 0 and "fleet.url" in r.stderr, (url, r.stdout, r.stderr)
