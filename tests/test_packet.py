import struct

import pytest

from inspector.packet import ACK, SYN, Malformed, decode
from tests.conftest import CLIENT6, SERVER6, pkt


def test_decode_ipv4_tcp_payload():
    data = pkt(b"EHLO x\r\n", seq=77, sport=4242, dport=25)
    key, src, sport, dport, seq, flags, poff, pend = decode(data)
    assert (sport, dport, seq) == (4242, 25, 77)
    assert src == bytes([198, 51, 100, 7])
    assert data[poff:pend] == b"EHLO x\r\n"
    assert len(key) == 12 and key[:4] == src


def test_decode_ipv6_with_extension_headers():
    from scapy.layers.inet import TCP
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop

    data = bytes(IPv6(src=CLIENT6, dst=SERVER6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
                 / TCP(sport=1, dport=25, flags="S", seq=5) / b"hi")
    key, src, sport, dport, seq, flags, poff, pend = decode(data)
    assert (dport, seq, flags & SYN) == (25, 5, SYN)
    assert len(src) == 16 and len(key) == 36
    assert data[poff:pend] == b"hi"


def test_ethernet_padding_is_ignored():
    data = pkt(b"abc") + b"\0" * 6
    *_, poff, pend = decode(data)
    assert data[poff:pend] == b"abc"


def test_not_tcp_is_none():
    from scapy.layers.inet import IP, UDP

    assert decode(bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP() / b"x")) is None


def _ipv4(ihl=5, total=None, frag=0, proto=6, body=b""):
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total if total is not None else 20 + len(body),
                         0, frag, 64, proto, 0, bytes(4), bytes(4))
    return header + body


@pytest.mark.parametrize("data, reason", [
    (b"\x45\x00", "short"),
    (_ipv4(ihl=4, body=bytes(20)), "ipv4-ihl"),
    (_ipv4(total=400, body=bytes(20)), "ipv4-length"),
    (_ipv4(frag=0x2000, body=bytes(20)), "fragment"),
    (_ipv4(frag=0x0010, body=bytes(20)), "fragment"),
    (_ipv4(body=bytes(10)), "tcp-short"),
    (_ipv4(body=bytes(12) + b"\xf0" + bytes(7)), "tcp-offset"),   # data offset 60 > 20 bytes left
    (_ipv4(body=bytes(12) + b"\x10" + bytes(7)), "tcp-offset"),   # data offset 4 < 5
    (b"\x75" + bytes(40), "ip-version"),
    (b"\x60" + bytes(3) + b"\x00\x00\x06\x40" + bytes(32), "ipv6-length"),
    (b"\x60" + bytes(3) + b"\x00\x08\x2c\x40" + bytes(32) + b"\x06" + bytes(7), "fragment"),
])
def test_malformed(data, reason):
    with pytest.raises(Malformed) as e:
        decode(data)
    assert e.value.args[0] == reason


def test_udp_fragment_is_not_malformed():
    assert decode(_ipv4(frag=0x2000, proto=17, body=bytes(20))) is None


def test_flags():
    assert decode(pkt(flags="A"))[5] == ACK


def test_ipv4_fast_path_agrees_with_the_general_decoder():
    """decode() reads IPv4 without options and TCP in one unpack; on any bytes (valid, cut short,
    fragments, other protocols, bad offsets) it must agree with the general decoder."""
    import random

    from inspector.bench import tcp_packet
    from inspector.packet import Malformed, _decode, decode

    rng = random.Random(16)
    base = tcp_packet(bytes([198, 51, 100, 7]), bytes([192, 0, 2, 25]), 40000, 25, 1000, 0x18, b"RCPT TO:<a@b>\r\n")

    def outcome(f, data):
        try:
            return f(data) if f is decode else f(data, len(data))
        except Malformed as e:
            return ("malformed", e.args[0])

    for _ in range(20000):
        data = bytearray(base[: rng.randrange(len(base) + 1)] if rng.random() < 0.2 else base)
        for _ in range(rng.randrange(4)):
            if data:
                i = rng.choice((2, 3, 6, 7, 9, 32, rng.randrange(len(data))))
                if i < len(data):
                    data[i] = rng.randrange(256)
        data = bytes(data)
        assert outcome(decode, data) == outcome(_decode, data), data.hex()


def test_format_addr_writes_what_ipaddress_writes():
    import ipaddress
    import random

    from inspector.packet import format_addr

    rng = random.Random(5952)
    samples = [bytes(16), bytes(15) + b"\x01", b"\x20\x01\x0d\xb8" + bytes(12), bytes(10) + b"\xff\xff\xc0\x00\x02\x01",
               bytes(12) + b"\xc0\x00\x02\x01", b"\x00\x01" + bytes(14), bytes(4), b"\xff" * 4]
    for _ in range(5000):
        n = rng.choice((4, 16))
        # runs of zero groups of every length, as RFC 5952 compression cares about them
        raw = bytes(rng.choice((0, 0, 0, rng.randrange(256))) for _ in range(n))
        samples.append(raw)
    for raw in samples:
        assert format_addr(raw) == str(ipaddress.ip_address(raw)), raw.hex()


def test_syn_options_linux_layout_and_others_agree_with_the_general_parse():
    """syn_options reads Linux's SYN layout (MSS, SACK-permitted, timestamps, NOP, window scale) directly;
    every other layout, and near misses of that one, go through the general option parser."""
    import struct as _struct

    from inspector.packet import _options, syn_options

    def syn(options: bytes) -> tuple[bytes, int]:
        options += b"\x00" * (-len(options) % 4)
        tcp = _struct.pack("!HHIIBBHHH", 40000, 25, 7, 0, (5 + len(options) // 4) << 4, 0x02, 64240, 0, 0)
        ip = _struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(options), 0, 0x4000, 64, 6, 0,
                          bytes((198, 51, 100, 1)), bytes((192, 0, 2, 25)))
        return ip + tcp + options, 40 + len(options)

    ts = _struct.pack("!II", 0xDEADBEEF, 0)
    layouts = [
        b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + ts + b"\x01\x03\x03\x07",  # Linux
        b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + ts + b"\x01\x03\x03",  # window scale cut short: 19 bytes
        b"\x02\x04\x05\xb4\x01\x01\x08\x0a" + ts + b"\x01\x03\x03\x07",  # NOP NOP instead of SACK-permitted
        b"\x02\x04\x05\xb4\x04\x02\x08\x09" + ts + b"\x01\x03\x03\x07",  # a timestamp option of the wrong size
        b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + ts + b"\x22\x03\x03\x07",  # a Fast Open option where the NOP was
        b"\x02\x04\x05\xb4\x04\x02\x08\x0a" + ts + b"\x01\x03\x03\x07\x22\x0a" + bytes(8),  # and a cookie after
        b"\x02\x04\x05\xb4",  # MSS only
        b"",
    ]
    for options in layouts:
        data, poff = syn(options)
        opts = _options(data, 40, poff)
        want_ts = _struct.unpack("!I", opts[8][:4])[0] if len(opts.get(8, b"")) == 8 else None
        assert syn_options(data, poff) == (want_ts, bool(opts.get(34))), options
    assert syn_options(*syn(layouts[0])) == (0xDEADBEEF, False)
    assert syn_options(*syn(layouts[5]))[1] is True
