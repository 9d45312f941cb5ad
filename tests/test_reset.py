import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt

from inspector.respond.reset import rst_for_client, rst_for_server


def offending(v6: bool, ext: bool = False) -> bytes:
    tcp = TCP(sport=40000, dport=25, seq=5000, ack=9000, flags="PA", options=[("NOP", None)] * 4)
    payload = b"RCPT TO:<a@blocked.test>\r\n"
    if v6:
        ip = IPv6(src="2001:db8:1::7", dst="2001:db8::25")
        return bytes((ip / IPv6ExtHdrDestOpt() / tcp / payload) if ext else (ip / tcp / payload))
    return bytes(IP(src="198.51.100.7", dst="192.0.2.25") / tcp / payload)


def valid_checksums(raw: bytes) -> bool:
    pkt = IPv6(raw) if raw[0] >> 4 == 6 else IP(raw)
    fresh = pkt.copy()
    if IP in fresh:
        del fresh[IP].chksum
    del fresh[TCP].chksum
    fresh = type(pkt)(bytes(fresh))
    return fresh[TCP].chksum == pkt[TCP].chksum and (IP not in pkt or fresh[IP].chksum == pkt[IP].chksum)


@pytest.mark.parametrize("v6, ext", [(False, False), (True, False), (True, True)])
def test_rst_for_server_is_in_window_at_the_client_seq(v6, ext):
    raw = rst_for_server(offending(v6, ext))
    pkt = IPv6(raw) if v6 else IP(raw)
    t = pkt[TCP]
    assert (pkt.src, pkt.dst) == (("2001:db8:1::7", "2001:db8::25") if v6 else ("198.51.100.7", "192.0.2.25"))
    assert (t.sport, t.dport, t.seq, str(t.flags)) == (40000, 25, 5000, "R")
    assert bytes(t.payload) == b""
    assert valid_checksums(raw)


@pytest.mark.parametrize("v6, ext", [(False, False), (True, False), (True, True)])
def test_rst_for_client_comes_from_the_server_at_the_acked_seq(v6, ext):
    raw = rst_for_client(offending(v6, ext))
    pkt = IPv6(raw) if v6 else IP(raw)
    t = pkt[TCP]
    assert (pkt.dst, pkt.src) == (("2001:db8:1::7", "2001:db8::25") if v6 else ("198.51.100.7", "192.0.2.25"))
    assert (t.sport, t.dport, t.seq, t.ack, str(t.flags)) == (25, 40000, 9000, 5000 + 26, "RA")
    assert valid_checksums(raw)


def test_not_tcp():
    from scapy.layers.inet import UDP

    with pytest.raises(ValueError):
        rst_for_server(bytes(IP(src="192.0.2.1", dst="192.0.2.2") / UDP()))
