"""The Postfix launcher (mta.py): starts in a namespace, relays for the test clients, logs recipients."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .bed import CLIENTS, SERVER, Bed
from .bed import why_not as bed_why_not
from .conftest import bed_up
from .mta import Postfix, why_not

SEND = """
import smtplib, sys
s = smtplib.SMTP(sys.argv[1], 25, source_address=(sys.argv[2], 0), timeout=10)
own = ("IPv6:" if ":" in sys.argv[1] else "") + sys.argv[1]
rcpts = ["v@example.com", "w%example.net@[" + own + "]", "example.org!x"]
s.sendmail("a@example.org", rcpts, "Subject: t\\r\\n\\r\\nhi\\r\\n")
s.quit()
"""


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[Bed]:
    """The two namespaces and the veth pair, no servers (Postfix takes port 25)."""
    with bed_up(Bed(tmp_path), servers=False, extra_reason=bed_why_not() or why_not()) as bed:
        yield bed


@pytest.mark.e2e
@pytest.mark.parametrize("v", [4, 6])
def test_postfix_delivers_to_discard_and_reports_recipients(bare: Bed, tmp_path: Path, v: int) -> None:
    with Postfix(tmp_path / "pf", bare.server, mynetworks=["198.51.100.0/24", "[2001:db8::]/32"]) as pf:
        r = subprocess.run(["ip", "netns", "exec", bare.client, sys.executable, "-c", SEND, SERVER[v], CLIENTS[v]["a"]],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        pf.wait_settled()
        rcpts = pf.recipients()
        pid = pf.pid
        assert pid is not None
    assert {"v@example.com", "w@example.net", "x@example.org"} <= rcpts, pf.log_tail()
    assert pf.pid is None
