"""Property-based tests: arbitrary input never raises out of the engine and state stays bounded.

CI runs a few thousand examples; ``INSPECTOR_FUZZ_EXAMPLES=1000000`` runs at scale.
"""

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inspector.config import Config
from inspector.engine import Engine
from inspector.rules import RuleSet, load_rules
from inspector.verdict import Action

EXAMPLES = int(os.environ.get("INSPECTOR_FUZZ_EXAMPLES", "3000"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _engine(tmp_path_factory=None) -> Engine:
    import tempfile
    from pathlib import Path

    from inspector.rules import DOMAIN, PAYLOAD, RuleFile

    d = Path(tempfile.mkdtemp())
    (d / "d.txt").write_text("blocked.test\nexample.com\n")
    (d / "p.payload").write_text("evilbot\n")
    rules: RuleSet = load_rules([RuleFile(d / "d.txt", DOMAIN), RuleFile(d / "p.payload", PAYLOAD)])
    return Engine(Config(max_flows=64, rate_capacity=64, depth=512), rules)


ENGINE = _engine()
TIME = [0.0]


def _check(data: bytes) -> None:
    TIME[0] += 0.37
    v = ENGINE.process(data, TIME[0])
    assert v.action in (Action.ACCEPT, Action.DROP, Action.RESET)
    assert ENGINE.counts["engine-error"] == 0, ENGINE.counts
    assert len(ENGINE.flows) <= 64
    for lim, _ in ENGINE._limiters.values():
        assert len(lim) <= 64


@SETTINGS
@given(st.binary(max_size=200))
def test_arbitrary_bytes(data):
    _check(data)


ports = st.sampled_from([22, 25, 80, 0, 65535])
smtpish = st.lists(st.sampled_from([b"MAIL FROM:<a@blocked.test>", b"RCPT TO:", b"<", b">", b"@", b'"',
                                    b"\r\n", b"\n", b"DATA", b".", b"BDAT 7", b"BDAT 99999999999 LAST",
                                    b"STARTTLS", b"evil", b"bot", b"EXAMPLE.com", b"\x00", b"\xff"]),
                   max_size=12).map(b"".join)
payloads = st.one_of(st.binary(max_size=300), smtpish)


@st.composite
def tcp_packets(draw):
    v6 = draw(st.booleans())
    sport, dport = draw(ports), draw(ports)
    seq = draw(st.sampled_from([0, 1, 1000, 0xFFFFFFFF, 0x7FFFFFFF])) + draw(st.integers(0, 64))
    flags = draw(st.integers(0, 255))
    doff = draw(st.sampled_from([5, 5, 5, 6, 15, 4, 0]))
    payload = draw(payloads)
    options = draw(st.binary(max_size=40)) if doff > 5 else b""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, 0, doff << 4, flags, 512, 0, 0) + options + payload
    src = draw(st.integers(0, 3))
    lie = draw(st.sampled_from([0, 0, 0, 1, -1, 1000]))
    if v6:
        hdr = struct.pack("!IHBB16s16s", 0x60000000, max(0, len(tcp) + lie) & 0xFFFF, 6, 64,
                          bytes(15) + bytes([src]), bytes(15) + b"\x01")
    else:
        ihl = draw(st.sampled_from([5, 5, 5, 6, 4, 15]))
        opts = bytes((ihl - 5) * 4) if ihl > 5 else b""
        frag = draw(st.sampled_from([0, 0, 0, 0x2000, 0x4000, 1]))
        hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, max(0, 20 + len(opts) + len(tcp) + lie) & 0xFFFF,
                          0, frag, 64, 6, 0, bytes([198, 18, 0, src]), bytes([192, 0, 2, 25])) + opts
    cut = draw(st.sampled_from([None, None, None, 10, 30, 45]))
    data = hdr + tcp
    return data[:cut] if cut else data


@SETTINGS
@given(st.lists(tcp_packets(), min_size=1, max_size=20))
def test_valid_looking_packets(packets):
    for p in packets:
        _check(p)


def test_mutation_fuzz_smoke():
    """The at-scale fuzzer (benchmarks/fuzz.py), briefly: 30,000 mutated packets."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "fuzz.py"
    r = subprocess.run([sys.executable, str(script), "--inputs", "30000", "--seed", "7"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "engine errors 0" in r.stdout
