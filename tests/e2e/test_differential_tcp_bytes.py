"""The TCP differential, byte for byte: the engine's client stream against what the receiving
application read from a real Linux socket (issue 12, kinds 1 and 6).

The TCP cases of ``differential/tcp_cases.py`` (and a few more here) are sent by the
differential sender to ``differential/receiver.py`` in the server namespace, which records
exactly the bytes ``recv`` returned; each capture is replayed through an engine with no rules
and ``decide = "depth"`` whose streams are recorded.  A case passes when the engine's stream
equals the bytes the application read (IPv4 and IPv6).  The Postfix harness
(``test_differential.py``) checks the same cases by their verdicts.

Run alone: ``sudo .venv/bin/python -m pytest tests/e2e/test_differential_tcp_bytes.py -q``.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inspector import engine as engine_module
from inspector.config import Config
from inspector.engine import Engine
from inspector.replay import replay_file
from inspector.rules import load_rules
from inspector.stream import Stream

from .bed import SERVER, Bed, NamespaceUnavailable, why_not
from .differential.harness import FIRST, Case, Seg
from .differential.tcp_cases import tcp_cases

pytestmark = [pytest.mark.e2e, pytest.mark.differential]
HERE = Path(__file__).resolve().parent
SENDER = HERE / "differential" / "sender.py"
RECEIVER = HERE / "differential" / "receiver.py"


def extra_cases() -> list[Case]:
    """Receiver rules the Postfix cases do not isolate: each shows in the bytes read."""
    return [
        Case("bytes-retransmission-with-other-bytes", [Seg(b"abcdefgh"), Seg(b"abXYefgh", off=0), Seg(b"ij")]),
        Case("bytes-held-inside-held", [Seg(b"efgh", off=4), Seg(b"XY", off=5), Seg(b"abcd", off=0)]),
        Case("bytes-covering-replaces-held", [Seg(b"fg", off=5), Seg(b"efghij", off=4), Seg(b"abcd", off=0)]),
        Case("bytes-urgent-pointer-zero", [Seg(b"abc"), Seg(b"Xdef", flags="PAU", urg=0), Seg(b"gh")]),
        Case("bytes-urgent-pointer-at-received-data", [Seg(b"abcdef"), Seg(b"ghij", flags="PAU", urg=1, off=2),
                                                       Seg(b"kl", off=6)]),
        Case("bytes-data-without-ack", [Seg(b"abc"), Seg(b"XYZ", noack=True), Seg(b"def", off=3)]),
        Case("bytes-rst-carries-no-data", [Seg(b"abc"), Seg(b"def", flags="RA", off=10)]),
        # timestamps negotiated, then a segment without the option, then a copy with it
        Case("bytes-segment-without-timestamp", [Seg(b"abc"), Seg(b"XYZ", tsval=-1), Seg(b"def", off=3)],
             timestamps=True),
    ]


class RecordingStream(Stream):
    """A Stream that keeps everything it delivers (for the comparison only)."""

    delivered_bytes: dict[int, bytearray] = {}

    def push(self, seq: int, data: bytes, *args: int | None) -> bytes:
        out = super().push(seq, data, *args)
        RecordingStream.delivered_bytes.setdefault(id(self), bytearray()).extend(out)
        return out


def engine_stream(pcap: Path, monkeypatch: pytest.MonkeyPatch) -> bytes:
    RecordingStream.delivered_bytes = {}
    monkeypatch.setattr(engine_module, "Stream", RecordingStream)
    engine = Engine(Config(decide="depth", depth=65536), load_rules([]))
    result = replay_file(engine, str(pcap), collect=True)
    assert result.error is None, result.error
    streams = [bytes(b) for b in RecordingStream.delivered_bytes.values()]
    return streams[0] if streams else b""


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, int], tuple[dict, Path]]]:
    reason = why_not()
    if reason:
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("tcp-bytes")
    bed = Bed(workdir)
    try:
        try:
            bed.up()
        except NamespaceUnavailable as e:
            pytest.skip(str(e))
        for tool in ("iptables", "ip6tables"):
            bed.c(tool, "-A", "OUTPUT", "-p", "tcp", "--tcp-flags", "RST", "RST", "-j", "DROP")
        log = workdir / "received.jsonl"
        proc = subprocess.Popen(["ip", "netns", "exec", bed.server, sys.executable, str(RECEIVER), str(log), "25"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def stop() -> None:
            proc.terminate()
            proc.communicate(timeout=5)  # also closes its pipes
        bed.stack.callback(stop)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 10)
        assert ready and proc.stdout.readline().strip() == "ready", "the receiver did not start"
        cases = [*tcp_cases(), *extra_cases()]
        sessions, keys = [], []
        for case in cases:
            for fam in case.families:
                src = str(FIRST[fam] + len(sessions))
                bed.c("ip", "addr", "add", *(f"{src}/64 nodad" if fam == 6 else f"{src}/24").split(), "dev", "veth-c")
                pcap = workdir / f"{case.name}-v{fam}.pcap"
                sessions.append({"src": src, "dst": SERVER[fam], "dport": 25, "sport": 45000 + len(sessions),
                                 "isn": case.isn, "timestamps": case.timestamps, "pcap": str(pcap), "settle": 0.2,
                                 "segments": [s.spec() for s in case.segments], "syn_data": case.syn_data.hex()})
                keys.append((case.name, fam))
        peer = bed.s("cat", "/sys/class/net/veth-s/address").stdout.strip()
        spec = workdir / "sender.json"
        spec.write_text(json.dumps({"iface": "veth-c", "peer_mac": peer, "sessions": sessions}))
        r = subprocess.run(["ip", "netns", "exec", bed.client, sys.executable, str(SENDER), str(spec)],
                           capture_output=True, text=True, timeout=30 + 4 * len(sessions))
        assert r.returncode == 0, r.stderr[-3000:]
        time.sleep(1.0)  # the receiver logs each connection when it ends
        got = {(e["peer"], e["sport"]): e for e in map(json.loads, log.read_text().splitlines())}
        out = {}
        for key, s in zip(keys, sessions, strict=True):
            out[key] = (got.get((s["src"], s["sport"]), {}), Path(s["pcap"]))
        yield out
    finally:
        bed.close()


def _params() -> list[object]:
    return [pytest.param(c.name, fam, id=f"{c.name}-v{fam}") for c in [*tcp_cases(), *extra_cases()]
            for fam in c.families]


@pytest.mark.parametrize(("name", "family"), _params())
def test_engine_stream_is_what_the_application_read(recorded: dict, name: str, family: int,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    received, pcap = recorded[(name, family)]
    assert received, f"{name}: the receiver recorded no connection"
    read = bytes.fromhex(received["data"])
    assert engine_stream(pcap, monkeypatch) == read
