"""The Debian package: ``scripts/build-deb.sh`` builds it, ``dpkg -i`` installs it, ``dpkg --purge`` removes it.

Installs into the real file system (CI is a throwaway root machine), but runs
``dpkg`` inside a fresh network namespace, so the test can show that
installing changes no firewall rule and no ipset there.  Skips where the
package is already installed for real, or the machine cannot build it.
About 15-30 s, most of it pip building the venv.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from inspector import __version__

from .netns import namespace, run_in

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root (dpkg -i)"
    for tool in ("dpkg-deb", "dpkg", "ip", "iptables-save", "ipset"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if subprocess.run(["/usr/bin/python3", "-c", "import venv, ensurepip"], capture_output=True).returncode:
        return "needs python3-venv"
    r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "inspector"], capture_output=True, text=True)
    if "installed" in r.stdout:
        return "a package named inspector is installed on this machine: not touching it"
    return None


def _dpkg(ns: str, *args: str) -> subprocess.CompletedProcess[str]:
    """dpkg in the namespace; waits (bounded) while another dpkg or apt holds the lock."""
    for _ in range(60):
        r = run_in(ns, "dpkg", *args, check=False, timeout=120)
        if r.returncode == 0 or "lock" not in r.stderr:
            return r
        time.sleep(2)
    return r


def _firewall(ns: str) -> tuple[str, str, str]:
    return (run_in(ns, "iptables-save").stdout, run_in(ns, "ip6tables-save").stdout,
            run_in(ns, "ipset", "list", "-n").stdout)


def test_build_install_run_purge(tmp_path: Path) -> None:
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    built = subprocess.run([str(REPO / "scripts" / "build-deb.sh"), "--out", str(tmp_path)],
                           capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    deb = Path(built.stdout.strip().splitlines()[-1])
    assert deb.name == f"inspector_{__version__}_amd64.deb" and deb.exists()
    contents = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    assert "/tmp/inspector-deb" not in contents

    with namespace() as ns:
        before = _firewall(ns)
        try:
            r = _dpkg(ns, "-i", str(deb))
            assert r.returncode == 0, r.stdout + r.stderr
            version = run_in(ns, "/usr/bin/inspector", "--version")
            assert version.stdout.strip() == f"inspector {__version__}"
            check = run_in(ns, "inspector", "check", "--config", "/etc/inspector/inspector.toml", check=False)
            assert check.returncode == 0, check.stdout + check.stderr
            assert "blocked-domains" in check.stdout + check.stderr
            conffiles = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", "inspector"],
                                       capture_output=True, text=True, check=True).stdout
            for path in ("/etc/inspector/inspector.toml", "/etc/inspector/rules/blocked-domains.txt"):
                assert path in conffiles, conffiles
            unit = Path("/lib/systemd/system/inspector.service").read_text()
            assert "ExecStart=/usr/bin/inspector run --config /etc/inspector/inspector.toml" in unit
            assert "/opt/inspector" not in unit
            # installing changed no firewall rule and enabled nothing
            assert _firewall(ns) == before
            assert not Path("/etc/systemd/system/multi-user.target.wants/inspector.service").exists()
            bundled = run_in(ns, "/opt/venvs/inspector/bin/python", "-c", "import apprise, netfilterqueue, pyroute2")
            assert bundled.returncode == 0
            helper = run_in(ns, "/usr/sbin/inspector-setup-nfqueue", "--help", check=False)
            assert "baseline" in helper.stdout
        finally:
            purged = _dpkg(ns, "--purge", "inspector")
        assert purged.returncode == 0, purged.stdout + purged.stderr
        assert _firewall(ns) == before
    for gone in ("/opt/venvs/inspector", "/etc/inspector", "/usr/bin/inspector", "/var/lib/inspector",
                 "/lib/systemd/system/inspector.service"):
        assert not os.path.lexists(gone), gone
