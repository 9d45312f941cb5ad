"""replay reads the start of a capture once to learn whether it is two-sided (replay.look_ahead):
the same answer as the separate pass (has_server_packets), every record replayed once, in order."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest

from inspector import replay
from inspector.bench import ACK, SERVER4, SYN, tcp_packet
from inspector.config import Config
from inspector.engine import Engine
from inspector.rules import load_rules
from inspector.sources.pcap import CaptureError, CaptureReader

CLIENT = bytes((198, 51, 100, 7))


def write(path: Path, packets: list[bytes], cut: int = 0) -> None:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101)
    for i, p in enumerate(packets):
        out += struct.pack("<IIII", 1_700_000_000 + i, 0, len(p), len(p)) + p
    path.write_bytes(out[:len(out) - cut] if cut else out)


def client(i: int) -> bytes:
    return tcp_packet(CLIENT, SERVER4, 40000 + i, 25, 1000 * i, SYN)


def server(i: int) -> bytes:
    return tcp_packet(SERVER4, CLIENT, 25, 40000 + i, 7, SYN | ACK)


def ipv4_options(p: bytes) -> bytes:
    """The same packet with a 4-byte IPv4 option (NOP x4): the decoder's general path."""
    total = len(p) + 4
    return bytes((0x46,)) + p[1:2] + total.to_bytes(2, "big") + p[4:20] + b"\x01\x01\x01\x01" + p[20:]


@pytest.mark.parametrize("server_at", [None, 0, 3, 9, 10, 11])
@pytest.mark.parametrize("options", [False, True])
def test_look_ahead_agrees_with_the_separate_pass(tmp_path: Path, server_at: int | None, options: bool) -> None:
    packets = [client(i) for i in range(12)]
    if server_at is not None:
        packets[server_at] = server(server_at)
    if options:
        packets = [ipv4_options(p) for p in packets]
    cap = tmp_path / "c.pcap"
    write(cap, packets)
    expected = replay.has_server_packets(str(cap), [25], look=10)
    assert expected == (server_at is not None and server_at < 10)
    with cap.open("rb") as f:
        records = iter(CaptureReader(f))
        head, two_sided, error = replay.look_ahead(records, [25], look=10)
        rest = list(records)
    assert (two_sided, error) == (expected, None)
    assert [d for _, d in head + rest] == packets  # nothing lost, nothing twice, in order


def test_look_ahead_stops_at_its_byte_bound_and_replay_asks_the_file(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    packets = [client(i) for i in range(20)]
    packets[15] = server(15)
    cap = tmp_path / "c.pcap"
    write(cap, packets)
    with cap.open("rb") as f:
        head, two_sided, _ = replay.look_ahead(iter(CaptureReader(f)), [25], max_bytes=5 * len(packets[0]))
    assert two_sided is None and len(head) == 6
    monkeypatch.setattr(replay, "LOOK_BYTES", 5 * len(packets[0]))
    seen: list[bool] = []
    monkeypatch.setattr(Engine, "expect_server_packets", lambda self: seen.append(True))
    result = replay.replay_file(Engine(Config(), load_rules([])), str(cap), io.StringIO())
    assert seen == [True] and result.packets == 20


@pytest.mark.parametrize("cut", [1, 30])
def test_a_capture_truncated_inside_the_look_ahead_replays_what_was_read_then_errors(tmp_path: Path,
                                                                                     cut: int) -> None:
    cap = tmp_path / "c.pcap"
    write(cap, [client(i) for i in range(5)], cut=cut)
    with cap.open("rb") as f:
        head, two_sided, error = replay.look_ahead(iter(CaptureReader(f)), [25])
    assert len(head) == 4 and two_sided is False and isinstance(error, CaptureError)
    engine = Engine(Config(), load_rules([]))
    result = replay.replay_file(engine, str(cap), io.StringIO())
    assert result.packets == 4 and result.error is not None and "truncated" in result.error
    assert engine.counts["handshakes"] == 4


def test_a_client_sending_from_a_protected_port_does_not_make_the_capture_two_sided(tmp_path: Path) -> None:
    """A client packet from port 25 to port 25 is the client's (the engine reads it so): in a capture of the
    clients' side only, it must not make replay wait for server answers that the capture cannot show, which
    would leave every later connection unproven and uninspected."""
    trick = tcp_packet(CLIENT, SERVER4, 25, 25, 5, SYN)
    packets = [trick, *(client(i) for i in range(5))]
    cap = tmp_path / "c.pcap"
    write(cap, packets)
    assert not replay.has_server_packets(str(cap), [25])
    with cap.open("rb") as f:
        head, two_sided, _ = replay.look_ahead(iter(CaptureReader(f)), [25])
    assert two_sided is False and len(head) == 6


def test_the_trick_packet_first_then_a_blocked_client_only_session_is_still_reset(tmp_path: Path) -> None:
    import random

    from inspector.bench import smtp_session
    from inspector.rules import DOMAIN, RuleFile

    rules_file = tmp_path / "r.txt"
    rules_file.write_text("blocked-0.example\nblocked-1.example\n")
    session = smtp_session(bytes((198, 51, 100, 9)), 40001, True, random.Random(3))
    cap = tmp_path / "c.pcap"
    write(cap, [tcp_packet(CLIENT, SERVER4, 25, 25, 5, SYN), *session])
    result = replay.replay_file(Engine(Config(), load_rules([RuleFile(rules_file, DOMAIN)])), str(cap), collect=True)
    assert [d["reason"] for d in result.decisions][:1] == ["domain"]


def test_an_ipv6_server_packet_makes_the_capture_two_sided(tmp_path: Path) -> None:
    from inspector.bench import SERVER6

    v6 = bytes.fromhex("20010db8000000010000000000000007")
    packets = [tcp_packet(v6, SERVER6, 40000, 25, 1, SYN), tcp_packet(SERVER6, v6, 25, 40000, 9, SYN | ACK)]
    cap = tmp_path / "c.pcap"
    write(cap, packets)
    assert replay.has_server_packets(str(cap), [25])
    with cap.open("rb") as f:
        head, two_sided, _ = replay.look_ahead(iter(CaptureReader(f)), [25])
    assert two_sided is True and len(head) == 2


def test_a_read_error_inside_the_look_ahead_keeps_the_records_before_it() -> None:
    """An I/O error while looking ahead is returned, not raised: replay replays what was read first, then
    reports it, as it does for a truncated capture."""

    def records():
        yield 1.0, client(0)
        yield 2.0, client(1)
        raise OSError(5, "Input/output error")

    head, two_sided, error = replay.look_ahead(records(), [25])
    assert [d for _, d in head] == [client(0), client(1)] and two_sided is False
    assert isinstance(error, OSError)
