"""One whitelist: the kernel's whitelist sets join the config's, at start and while running (issue 11, item 4)."""

from __future__ import annotations

from pathlib import Path

from inspector.service.host import WHITELIST_REFRESH
from tests.conftest import Conn
from tests.test_service import BLOCKED, Bed


def test_the_kernel_whitelist_protects_on_every_path(tmp_path: Path) -> None:
    b = Bed(tmp_path, extra='[whitelist]\ncidrs = ["203.0.113.0/24"]\n')
    b.firewall.white = ["198.51.100.7"]  # the SSH client setup-nfqueue.sh whitelisted
    b.service.start()
    try:
        assert "203.0.113.0/24" in b.firewall.white  # the config's entries go into the kernel sets
        c = Conn()  # from 198.51.100.7
        b.feed(c.syn(), c.send(BLOCKED))
        assert b.firewall.entries == {} and "ban" not in b.kinds()  # the engine knows it
        host = b.service.host
        reply = host.control.handle({"cmd": "ban", "networks": ["198.51.100.7"], "seconds": 60})
        assert reply.get("refused") and reply["refused"][0]["why"] == "whitelist", reply
        # an entry added to the kernel set while running is taken within WHITELIST_REFRESH
        b.firewall.white.append("198.51.100.8")
        assert host.bans.protected("198.51.100.8") is None
        b.now[0] += WHITELIST_REFRESH + 1
        b.service.loop.turn()
        assert host.bans.protected("198.51.100.8") == "whitelist"
        assert any(e["event"] == "whitelist" for e in b.events.events)
    finally:
        b.service.stop()


def test_without_the_kernel_sets_the_config_whitelist_stands(tmp_path: Path) -> None:
    b = Bed(tmp_path, extra='[whitelist]\ncidrs = ["203.0.113.0/24"]\n')
    b.service.start()  # FakeFirewall.white is None: no setup-nfqueue.sh install
    try:
        assert b.service.host.bans.protected("203.0.113.9") == "whitelist"
        assert b.service.host.bans.protected("198.51.100.7") is None
    finally:
        b.service.stop()
