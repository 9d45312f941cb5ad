"""Shared helpers: packets built with scapy (tests only), engines from rule text."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6

from inspector.config import Config
from inspector.engine import Engine
from inspector.rules import DOMAIN, PAYLOAD, RuleFile, load_rules

CLIENT4, SERVER4 = "198.51.100.7", "192.0.2.25"
CLIENT6, SERVER6 = "2001:db8:1::7", "2001:db8::25"


def pkt(payload: bytes = b"", flags: str = "PA", seq: int = 1001, sport: int = 40000, dport: int = 25,
        src: str = CLIENT4, dst: str = SERVER4) -> bytes:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return bytes(ip / TCP(sport=sport, dport=dport, seq=seq, ack=1, flags=flags) / payload)


class Conn:
    """A client connection that tracks its own sequence numbers."""

    def __init__(self, sport: int = 40000, dport: int = 25, src: str = CLIENT4, dst: str = SERVER4,
                 isn: int = 1000) -> None:
        self.sport, self.dport, self.src, self.dst = sport, dport, src, dst
        self.isn = isn
        self.seq = isn + 1

    def syn(self) -> bytes:
        return pkt(flags="S", seq=self.isn, sport=self.sport, dport=self.dport, src=self.src, dst=self.dst)

    def ack(self) -> bytes:
        """The client's ACK that completes the handshake (with no server side shown, it proves the flow)."""
        return pkt(flags="A", seq=self.seq, sport=self.sport, dport=self.dport, src=self.src, dst=self.dst)

    def opened(self) -> list[bytes]:
        """SYN and handshake ACK: a proven connection."""
        return [self.syn(), self.ack()]

    def send(self, data: bytes, flags: str = "PA") -> bytes:
        p = pkt(data, flags=flags, seq=self.seq, sport=self.sport, dport=self.dport, src=self.src, dst=self.dst)
        self.seq = (self.seq + len(data)) & 0xFFFFFFFF
        return p

    def at(self, offset: int, data: bytes) -> bytes:
        """A segment at stream offset ``offset`` (for out-of-order and overlap tests)."""
        return pkt(data, seq=(self.isn + 1 + offset) & 0xFFFFFFFF, sport=self.sport, dport=self.dport,
                   src=self.src, dst=self.dst)


@pytest.fixture
def make_engine(tmp_path: Path):
    def make(domains: str = "blocked.test\n", payload: str = "", **config: object) -> Engine:
        files = []
        if domains:
            (tmp_path / "d.txt").write_text(domains)
            files.append(RuleFile(tmp_path / "d.txt", DOMAIN))
        if payload:
            (tmp_path / "p.payload").write_text(payload)
            files.append(RuleFile(tmp_path / "p.payload", PAYLOAD))
        cfg = Config(**config)  # type: ignore[arg-type]
        return Engine(cfg, load_rules(files))
    return make
