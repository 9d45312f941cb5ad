"""The test bed itself, without the inspector: namespaces, routes, servers, client."""

from __future__ import annotations

import pytest

from .bed import CLIENTS, PY, SERVER, Bed, wait_for

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("v", [4, 6], ids=["ipv4", "ipv6"])
def test_clean_mail_is_delivered_without_inspector(net: Bed, v: int) -> None:
    for who in ("a", "w"):
        src = CLIENTS[v][who]
        r = net.smtp(src, ["user@example.org"], body_size=2000)
        assert r["delivered"], r
        [msg] = net.server_events(event="message", peer=src)
        assert msg["rcpt_tos"] == ["user@example.org"] and msg["size"] > 1900
    banner = net.connect(CLIENTS[v]["b"], 22, banner=True, send="hello\n")
    assert banner["ok"] and banner["banner"].startswith("SSH-2.0-") and banner["echo"] == "hello\n", banner
    # the server sees the client addresses as they are (no NAT, no mapped addresses)
    assert {e["peer"] for e in net.server_events(event="connect")} == {CLIENTS[v][w] for w in ("a", "w", "b")}


def test_server_sees_a_client_reset(net: Bed) -> None:
    """The servers' log records a connection lost by a reset (what the inspector tests rely on)."""
    script = ("import socket, struct, time\n"
              f"s = socket.create_connection(('{SERVER[4]}', 25), timeout=3, source_address=('{CLIENTS[4]['c']}', 0))\n"
              "s.recv(1000)\n"
              "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
              "s.close()\n")
    net.c(PY, "-c", script)
    lost = wait_for(lambda: net.server_events(event="lost", peer=CLIENTS[4]["c"]), 3, what="lost event")
    assert lost[0]["error"] == "ConnectionResetError", lost

