#!/usr/bin/env python3
"""Build the synthetic captures that ``tests/cases.toml`` pairs with expected verdicts.

    python tests/make_captures.py [OUTDIR]      (default: tests/pcaps/generated/)

Every capture is deterministic: fixed timestamps, ports, initial sequence
numbers, MAC addresses, IP IDs and TTLs, so the same script always writes the
same bytes (``tests/test_replay_cases.py`` checks that the committed copies
match a fresh build).  Addresses are documentation/benchmark ranges only:
clients in 198.51.100.0/24, 203.0.113.0/24, 198.18.0.0/15 and 2001:db8::/32;
the server is 192.0.2.25 / 2001:db8::25 (SMTP on 25, SSH on 22).

Each ``case_*`` function builds one capture named after the function
(``case_smtp_rcpt_blocked`` -> ``smtp-rcpt-blocked.pcap``); its docstring says
what the capture holds, and the expected verdicts live in cases.toml.

Packet counting conventions the expectations rely on: a client connection is
SYN, handshake ACK, one packet per segment of the plan, FIN (with
``server_side=True`` the server's SYN-ACK, replies and FIN are interleaved;
they are never inspected).  ``EHLO``/``QUIT`` lines are written out in each case.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Raw

LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_LINUX_SLL = 1, 101, 113
T0 = 1_700_000_000  # capture epoch: 2023-11-14 22:13:20 UTC
SERVER4, SERVER6 = "192.0.2.25", "2001:db8::25"
CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"

Seg = tuple[int, bytes]  # (offset in the client stream, bytes)


# -- capture file -------------------------------------------------------------


class Capture:
    """Frames with timestamps in microseconds after T0, written as classic pcap."""

    def __init__(self, linktype: int = LINKTYPE_ETHERNET) -> None:
        self.linktype = linktype
        self.vlan: int | None = None  # Ethernet: tag every frame with this 802.1Q VLAN id
        self.records: list[tuple[int, bytes]] = []
        self.now = 0  # microseconds after T0

    def at(self, seconds: float) -> None:
        """Move the clock to ``seconds`` after T0 (never backwards)."""
        us = round(seconds * 1_000_000)
        assert us >= self.now, "captures are written in time order"
        self.now = us

    def frame(self, frame: bytes, gap_us: int = 1000) -> None:
        self.records.append((self.now, frame))
        self.now += gap_us

    def ip(self, datagram: bytes, to_server: bool = True) -> None:
        """Add an IP datagram in the capture's link-layer framing."""
        etype = 0x86DD if datagram[0] >> 4 == 6 else 0x0800
        if self.linktype == LINKTYPE_RAW:
            self.frame(datagram)
        elif self.linktype == LINKTYPE_LINUX_SLL:
            # packet type (0: to us, 4: sent by us), ARPHRD_ETHER, address length, address, protocol
            kind = 0 if to_server else 4
            mac = bytes.fromhex((CLIENT_MAC if to_server else SERVER_MAC).replace(":", ""))
            self.frame(struct.pack("!HHH8sH", kind, 1, 6, mac, etype) + datagram)
        else:
            src, dst = (CLIENT_MAC, SERVER_MAC) if to_server else (SERVER_MAC, CLIENT_MAC)
            if self.vlan is None:
                head = Ether(src=src, dst=dst, type=etype)
            else:
                head = Ether(src=src, dst=dst, type=0x8100) / Dot1Q(vlan=self.vlan, type=etype)
            self.frame(bytes(head) + datagram)

    def write(self, path: Path) -> None:
        out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, self.linktype)]
        for us, frame in self.records:
            sec, usec = divmod(us, 1_000_000)
            out.append(struct.pack("<IIII", T0 + sec, usec, len(frame), len(frame)))
            out.append(frame)
        path.write_bytes(b"".join(out))


def ip_header(src: str, dst: str, **fields: object) -> IP | IPv6:
    if ":" in src:
        return IPv6(src=src, dst=dst, hlim=64, **fields)
    return IP(src=src, dst=dst, ttl=64, id=0, flags="DF", **fields)


# -- TCP connections ------------------------------------------------------------


class Conn:
    """One TCP connection; client-side sequence numbers by stream offset."""

    def __init__(self, cap: Capture, client: str, cport: int, dport: int = 25, isn: int = 0x10000000,
                 server: str | None = None, server_side: bool = False, server_isn: int = 0x70000000) -> None:
        self.cap = cap
        self.client, self.cport, self.dport = client, cport, dport
        self.server = server or (SERVER6 if ":" in client else SERVER4)
        self.isn, self.server_isn = isn, server_isn
        self.server_side = server_side
        self.ext = None  # IPv6 extension headers (a scapy layer) for the client's packets
        self.sent = 0  # highest client stream offset sent so far
        self.received = 0  # server stream bytes sent

    def _client(self, flags: str, seq: int, payload: bytes = b"") -> None:
        ack = (self.server_isn + 1 + self.received) & 0xFFFFFFFF if "A" in flags else 0
        tcp = TCP(sport=self.cport, dport=self.dport, seq=seq & 0xFFFFFFFF, ack=ack, flags=flags, window=64240)
        pkt = ip_header(self.client, self.server)
        pkt = (pkt / self.ext / tcp) if self.ext is not None else pkt / tcp
        if payload:
            pkt = pkt / Raw(payload)
        self.cap.ip(bytes(pkt))

    def _server(self, flags: str, payload: bytes = b"") -> None:
        seq = self.server_isn if "S" in flags else self.server_isn + 1 + self.received
        tcp = TCP(sport=self.dport, dport=self.cport, seq=seq & 0xFFFFFFFF,
                  ack=(self.isn + 1 + self.sent) & 0xFFFFFFFF, flags=flags, window=65160)
        pkt = ip_header(self.server, self.client) / tcp
        if payload:
            pkt = pkt / Raw(payload)
        self.cap.ip(bytes(pkt), to_server=False)
        self.received += len(payload) + (1 if "F" in flags else 0)

    def seq_at(self, offset: int) -> int:
        return (self.isn + 1 + offset) & 0xFFFFFFFF

    def syn(self) -> None:
        self._client("S", self.isn)

    def handshake(self, greeting: bytes = b"", retransmit_syn: bool = False) -> None:
        self.syn()
        if retransmit_syn:
            self.syn()  # same ISN: the same connection
        if self.server_side:
            self._server("SA")
        self._client("A", self.seq_at(0))
        if self.server_side and greeting:
            self._server("PA", greeting)

    def segment(self, offset: int, data: bytes, flags: str = "PA") -> None:
        self._client(flags, self.seq_at(offset), data)
        if data:
            self.sent = max(self.sent, offset + len(data))

    def send(self, data: bytes) -> None:
        self.segment(self.sent, data)

    def reply(self, data: bytes) -> None:
        if self.server_side and data:
            self._server("PA", data)

    def fin(self) -> None:
        if self.server_side:
            self._server("FA")
        self._client("FA", self.seq_at(self.sent))


# -- client streams and segment plans --------------------------------------------


def lines(*commands: str | bytes) -> list[bytes]:
    """Command lines with CRLF added; ``bytes`` that already end in a newline (a message
    body, several pipelined lines) are kept as they are."""
    out = []
    for c in commands:
        b = c.encode("latin-1") if isinstance(c, str) else c
        out.append(b if b.endswith(b"\n") else b + b"\r\n")
    return out


def per_line(stream_lines: Iterable[bytes]) -> list[Seg]:
    """The default plan: one segment per line (a list item may hold several lines)."""
    out, off = [], 0
    for ln in stream_lines:
        out.append((off, ln))
        off += len(ln)
    return out


def cut(plan: list[Seg], index: int, *at: int) -> list[Seg]:
    """Split ``plan[index]`` at the given positions (relative to that segment)."""
    off, data = plan[index]
    bounds = [0, *at, len(data)]
    pieces = [(off + a, data[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    return plan[:index] + pieces + plan[index + 1:]


def bytewise(plan: list[Seg], index: int) -> list[Seg]:
    """Send ``plan[index]`` one byte per segment."""
    return cut(plan, index, *range(1, len(plan[index][1])))


_REPLIES = {b"DATA": b"354 go ahead\r\n", b"QUIT": b"221 bye\r\n", b"STARTTLS": b"220 ready to start TLS\r\n"}


def session(cap: Capture, client: str, cport: int, plan: list[Seg], *, dport: int = 25, isn: int = 0x10000000,
            server_side: bool = False, replies: dict[int, bytes] | None = None,
            handshake: bool = True, fin: bool = True) -> Conn:
    """A client connection sending ``plan``'s segments in list order.

    With ``server_side`` the server answers the handshake, greets, and sends
    one reply after each client segment that ends a line (``replies`` maps a
    plan index to a specific reply, ``b""`` for none).
    """
    c = Conn(cap, client, cport, dport=dport, isn=isn, server_side=server_side)
    if handshake:
        c.handshake(b"220 mx.example ESMTP\r\n" if dport == 25 else b"SSH-2.0-OpenSSH_9.6\r\n")
    for i, (off, data) in enumerate(plan):
        c.segment(off, data)
        if server_side and data.endswith(b"\n") and dport == 25:
            last = data.rstrip(b"\r\n").rsplit(b"\n", 1)[-1].strip().upper()
            reply = (replies or {}).get(i)
            if reply is None:
                reply = _REPLIES.get(last, b"250 2.0.0 ok\r\n")
            c.reply(reply)
    if fin:
        c.fin()
    return c


def smtp(cap: Capture, client: str, cport: int, *commands: str | bytes, **kw: object) -> Conn:
    """A plain SMTP session: one segment per command line."""
    return session(cap, client, cport, per_line(lines(*commands)), **kw)  # type: ignore[arg-type]


def ssh(cap: Capture, client: str, cport: int, isn: int, *, retransmit_syn: bool = False,
        server_side: bool = False, banner: bytes = b"SSH-2.0-OpenSSH_9.6\r\n") -> Conn:
    """An SSH connection: SYN (optionally sent twice), ACK, client banner, FIN."""
    c = Conn(cap, client, cport, dport=22, isn=isn, server_side=server_side)
    c.handshake(b"SSH-2.0-OpenSSH_9.6\r\n", retransmit_syn=retransmit_syn)
    c.send(banner)
    c.fin()
    return c


# A body the DATA cases share: mentions of the blocked domain in headers and text only.
BODY = lines("From: <a@blocked.test>", "To: <x@blocked.test>", "Subject: about blocked.test", "",
             "RCPT TO:<x@blocked.test>", "MAIL FROM:<y@blocked.test>", "see you at blocked.test", ".")


# -- SMTP envelope cases ------------------------------------------------------------


def case_smtp_clean(cap: Capture) -> None:
    """A complete clean SMTP session with server replies: no verdicts."""
    smtp(cap, "198.51.100.10", 40010, "EHLO client.example", "MAIL FROM:<alice@fine.example>",
         "RCPT TO:<bob@fine.example>", "DATA", b"".join(lines("Subject: hi", "", "hello", ".")), "QUIT",
         server_side=True)


def case_smtp_rcpt_blocked(cap: Capture) -> None:
    """RCPT TO a blocked domain (line 3 of 6), server replies included."""
    smtp(cap, "198.51.100.11", 40011, "EHLO client.example", "MAIL FROM:<alice@fine.example>",
         "RCPT TO:<bob@blocked.test>", "DATA", b"".join(lines("Subject: hi", "", "hello", ".")), "QUIT",
         server_side=True)


def case_smtp_mail_from_blocked(cap: Capture) -> None:
    """MAIL FROM a blocked domain (line 2 of 4)."""
    smtp(cap, "198.51.100.12", 40012, "EHLO client.example", "MAIL FROM:<alice@blocked.test>",
         "RCPT TO:<bob@fine.example>", "QUIT")


def case_smtp_rcpt_upper_case(cap: Capture) -> None:
    """Upper-case address: RCPT TO:<X@BLOCKED.TEST> (line 3 of 4)."""
    smtp(cap, "198.51.100.13", 40013, "EHLO CLIENT.EXAMPLE", "MAIL FROM:<A@FINE.EXAMPLE>",
         "RCPT TO:<X@BLOCKED.TEST>", "QUIT")


def case_smtp_rcpt_mixed_case(cap: Capture) -> None:
    """Lower-case verbs, mixed-case domain: rcpt to:<x@Blocked.Test> (line 3 of 4)."""
    smtp(cap, "198.51.100.14", 40014, "ehlo client.example", "mail from:<a@fine.example>",
         "rcpt to:<x@Blocked.Test>", "quit")


def case_smtp_third_rcpt_blocked(cap: Capture) -> None:
    """Four recipients, only the third blocked (line 5 of 7)."""
    smtp(cap, "198.51.100.15", 40015, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<r1@fine.example>", "RCPT TO:<r2@other.example>", "RCPT TO:<r3@blocked.test>",
         "RCPT TO:<r4@fine.example>", "QUIT")


def case_smtp_pipelined_envelope(cap: Capture) -> None:
    """PIPELINING: MAIL, RCPT, RCPT (blocked), DATA in one segment (segment 2 of 4)."""
    plan = per_line([
        *lines("EHLO client.example"),
        b"".join(lines("MAIL FROM:<a@fine.example>", "RCPT TO:<b@fine.example>", "RCPT TO:<c@blocked.test>",
                       "DATA")),
        b"".join(lines("Subject: hi", "", "hello", ".")),
        *lines("QUIT"),
    ])
    session(cap, "198.51.100.16", 40016, plan, server_side=True)


def case_smtp_source_route(cap: Capture) -> None:
    """Source route: RCPT TO:<@relay.example,@r2.example:user@blocked.test> (line 3 of 4)."""
    smtp(cap, "198.51.100.17", 40017, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<@relay.example,@r2.example:user@blocked.test>", "QUIT")


def case_smtp_quoted_local_part_blocked(cap: Capture) -> None:
    """Quoted local part with an @ inside: RCPT TO:<"odd@local"@blocked.test> (line 3 of 4)."""
    smtp(cap, "198.51.100.18", 40018, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         'RCPT TO:<"odd@local"@blocked.test>', "QUIT")


def case_smtp_quoted_local_part_not_blocked(cap: Capture) -> None:
    """RCPT TO:<"x@blocked.test"@fine.example> (domain fine.example: no verdict), then a
    sentinel RCPT TO:<sentinel@blocked.test> (line 4 of 5) that must be the one to fire."""
    smtp(cap, "198.51.100.19", 40019, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         'RCPT TO:<"x@blocked.test"@fine.example>', "RCPT TO:<sentinel@blocked.test>", "QUIT")


def case_smtp_mail_from_space_after_colon(cap: Capture) -> None:
    """MAIL FROM: <a@blocked.test> (space after the colon; line 2 of 3)."""
    smtp(cap, "198.51.100.20", 40020, "EHLO client.example", "MAIL FROM: <a@blocked.test>", "QUIT")


def case_smtp_mail_from_no_brackets(cap: Capture) -> None:
    """MAIL FROM:a@blocked.test (no angle brackets; line 2 of 3)."""
    smtp(cap, "198.51.100.21", 40021, "EHLO client.example", "MAIL FROM:a@blocked.test", "QUIT")


def case_smtp_rcpt_subdomain(cap: Capture) -> None:
    """RCPT TO:<user@mx.sub.blocked.test>: a subdomain is blocked too (line 3 of 4)."""
    smtp(cap, "198.51.100.22", 40022, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<user@mx.sub.blocked.test>", "QUIT")


def case_smtp_lookalike_domains(cap: Capture) -> None:
    """Look-alikes that must not fire (notblocked.test, blocked.test.evil.example,
    blocked.testing, in MAIL FROM and RCPT TO), then a sentinel blocked RCPT (line 7 of 8)."""
    smtp(cap, "198.51.100.23", 40023, "EHLO client.example", "MAIL FROM:<a@notblocked.test>",
         "RCPT TO:<b@notblocked.test>", "RCPT TO:<c@blocked.test.evil.example>", "RCPT TO:<d@blocked.testing>",
         "RCPT TO:<e@xblocked.test>", "RCPT TO:<sentinel@blocked.test>", "QUIT")


def case_smtp_rcpt_trailing_dot(cap: Capture) -> None:
    """RCPT TO:<user@blocked.test.> (absolute name with the root dot; line 3 of 4)."""
    smtp(cap, "198.51.100.24", 40024, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<user@blocked.test.>", "QUIT")


# -- segmentation, reordering, retransmission, overlap ---------------------------------


def _rcpt_session_plan(rcpt: bytes = b"RCPT TO:<bob@blocked.test>\r\n") -> list[Seg]:
    return per_line([*lines("EHLO client.example", "MAIL FROM:<a@fine.example>"), rcpt, *lines("QUIT")])


def case_smtp_rcpt_split_two_segments(cap: Capture) -> None:
    """The RCPT line split inside the domain: 'RCPT TO:<bob@bloc' | 'ked.test>\\r\\n'
    (segments: EHLO, MAIL, part 1, part 2, QUIT; the verdict is on part 2)."""
    plan = cut(_rcpt_session_plan(), 2, len(b"RCPT TO:<bob@bloc"))
    session(cap, "198.51.100.30", 40030, plan, server_side=True)


def case_smtp_rcpt_split_every_byte(cap: Capture) -> None:
    """The 28-byte RCPT line sent one byte per segment; the verdict is on the final '\\n'."""
    plan = bytewise(_rcpt_session_plan(), 2)
    session(cap, "198.51.100.31", 40031, plan)


def case_smtp_rcpt_out_of_order(cap: Capture) -> None:
    """RCPT line in three parts sent 3, 1, 2: the line completes (verdict) when part 2 arrives."""
    plan = cut(_rcpt_session_plan(), 2, 9, 17)  # 'RCPT TO:<' 'bob@bloc' 'ked.test>\r\n'
    ehlo, mail, p1, p2, p3, quit_ = plan
    session(cap, "198.51.100.32", 40032, [ehlo, mail, p3, p1, p2, quit_])


def case_smtp_session_reversed(cap: Capture) -> None:
    """After the handshake every segment arrives in reverse order (QUIT first, EHLO last):
    nothing is contiguous until EHLO arrives, whose packet completes the blocked RCPT."""
    plan = _rcpt_session_plan()
    session(cap, "198.51.100.33", 40033, plan[::-1])


def case_smtp_rcpt_retransmitted(cap: Capture) -> None:
    """Retransmissions: MAIL twice, the split RCPT's parts each twice (same data).
    Segments: EHLO, MAIL, MAIL, part1, part1, part2 (verdict), part2, QUIT."""
    plan = cut(_rcpt_session_plan(), 2, len(b"RCPT TO:<bob@bloc"))
    ehlo, mail, p1, p2, quit_ = plan
    session(cap, "198.51.100.34", 40034, [ehlo, mail, mail, p1, p1, p2, p2, quit_])


def case_smtp_overlap_first_wins_blocked(cap: Capture) -> None:
    """'RCPT TO:<a@blo' arrives first; then a segment from the same offset carrying
    'RCPT TO:<a@xyzcked.test>\\r\\n'.  The first-arrived bytes win, so the stream reads
    'RCPT TO:<a@blocked.test>' (verdict on the second segment)."""
    ehlo, mail = lines("EHLO client.example", "MAIL FROM:<a@fine.example>")
    at = len(ehlo) + len(mail)
    plan = [(0, ehlo), (len(ehlo), mail), (at, b"RCPT TO:<a@blo"), (at, b"RCPT TO:<a@xyzcked.test>\r\n")]
    plan.append((at + len(b"RCPT TO:<a@xyzcked.test>\r\n"), b"QUIT\r\n"))
    session(cap, "198.51.100.35", 40035, plan)


def case_smtp_overlap_first_wins_clean(cap: Capture) -> None:
    """Mirror: 'RCPT TO:<a@xyz' first, then 'RCPT TO:<a@blocked.test>\\r\\n' from the same
    offset: the stream reads 'RCPT TO:<a@xyzcked.test>' (not blocked).  A sentinel
    blocked RCPT follows (segment 5 of 6) and must be the one that fires."""
    ehlo, mail = lines("EHLO client.example", "MAIL FROM:<a@fine.example>")
    at = len(ehlo) + len(mail)
    end = at + len(b"RCPT TO:<a@blocked.test>\r\n")
    sentinel = b"RCPT TO:<sentinel@blocked.test>\r\n"
    plan = [(0, ehlo), (len(ehlo), mail), (at, b"RCPT TO:<a@xyz"), (at, b"RCPT TO:<a@blocked.test>\r\n"),
            (end, sentinel), (end + len(sentinel), b"QUIT\r\n")]
    session(cap, "198.51.100.36", 40036, plan)


def case_smtp_rcpt_seq_wraparound(cap: Capture) -> None:
    """The ISN sits just below 2**32, so the RCPT line's sequence numbers wrap to 0
    in the middle of the line (split there; verdict on the second part)."""
    plan = _rcpt_session_plan()
    rcpt_off = plan[2][0]
    isn = (2**32 - 1 - rcpt_off - 12) & 0xFFFFFFFF  # offset rcpt_off + 12 has sequence number 0
    plan = cut(plan, 2, 12)
    session(cap, "198.51.100.37", 40037, plan, isn=isn)


# -- what is not an envelope ----------------------------------------------------------


def case_smtp_body_mentions_only(cap: Capture) -> None:
    """The blocked domain only in the message body (headers, a 'RCPT TO:' line, text): no verdict."""
    smtp(cap, "198.51.100.40", 40040, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<b@fine.example>", "DATA", b"".join(BODY), "QUIT", server_side=True)


def case_smtp_body_then_second_transaction(cap: Capture) -> None:
    """Body mentions (no verdict), then after the '.' line a second transaction whose
    RCPT is blocked (segment 7 of 8)."""
    smtp(cap, "198.51.100.41", 40041, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<b@fine.example>", "DATA", b"".join(BODY), "MAIL FROM:<a@fine.example>",
         "RCPT TO:<second@blocked.test>", "QUIT", server_side=True)


def case_smtp_bdat_chunk_mentions(cap: Capture) -> None:
    """BDAT chunks are message data, whatever they hold.  'BDAT n' and a chunk (split over
    two segments, mid-address) holding 'RCPT TO:<x@blocked.test>'; then one segment with
    'BDAT n LAST' and a last chunk 'RCPT TO:<y@blocked.test>\\r\\nbye' (no final CRLF).
    Right after it, a sentinel 'MAIL FROM:<sentinel@blocked.test>' (segment 8 of 9) must be
    the one to fire: a chunk length counted a byte too short or too long would garble it."""
    chunk1 = b"".join(lines("From: <a@blocked.test>", "RCPT TO:<x@blocked.test>", "", "hi"))
    chunk2 = b"RCPT TO:<y@blocked.test>\r\nbye"
    plan = per_line([
        *lines("EHLO client.example", "MAIL FROM:<a@fine.example>", "RCPT TO:<b@fine.example>",
               f"BDAT {len(chunk1)}"),
        chunk1,
        b"BDAT %d LAST\r\n" % len(chunk2) + chunk2,
        *lines("MAIL FROM:<sentinel@blocked.test>", "QUIT"),
    ])
    plan = cut(plan, 4, chunk1.index(b"x@blo") + 4)
    session(cap, "198.51.100.42", 40042, plan)


def case_smtp_bdat_last_mentions_only(cap: Capture) -> None:
    """BDAT n LAST whose chunk holds 'RCPT TO:<x@blocked.test>', then QUIT: no verdict."""
    chunk = b"".join(lines("RCPT TO:<x@blocked.test>", "MAIL FROM:<y@blocked.test>", "", "hi"))
    smtp(cap, "198.51.100.43", 40043, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<b@fine.example>", f"BDAT {len(chunk)} LAST", chunk, "QUIT", server_side=True)


def case_smtp_ehlo_blocked_domain(cap: Capture) -> None:
    """EHLO/HELO blocked.test (never an envelope address: no verdict), then a sentinel
    blocked RCPT (line 5 of 6) that must be the one to fire."""
    smtp(cap, "198.51.100.44", 40044, "EHLO blocked.test", "HELO mx.blocked.test", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<sentinel@blocked.test>", "QUIT")


def case_smtp_starttls_then_tls(cap: Capture) -> None:
    """STARTTLS, then TLS records (a ClientHello-like record, then an application-data record
    that happens to contain 'RCPT TO:<x@blocked.test>'): nothing after STARTTLS is SMTP."""
    hello = bytes.fromhex("160301002a0100002603035a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a"
                          "000002130101000000")
    inner = b"RCPT TO:<x@blocked.test>\r\n"
    app = b"\x17\x03\x03" + struct.pack("!H", len(inner)) + inner
    plan = per_line([*lines("EHLO client.example", "STARTTLS"), hello, app, b"\x17\x03\x03\x00\x05QUIT\n"])
    session(cap, "198.51.100.45", 40045, plan, server_side=True, replies={2: b"", 3: b"", 4: b""})


def case_smtp_midstream_rcpt_blocked(cap: Capture) -> None:
    """Capture starts midstream (no SYN, no handshake): the tail of an EHLO line,
    MAIL, a blocked RCPT (segment 3 of 4), QUIT, FIN."""
    plan = per_line([b"o.example\r\n", *lines("MAIL FROM:<a@fine.example>", "RCPT TO:<x@blocked.test>", "QUIT")])
    session(cap, "198.51.100.46", 40046, plan, isn=0x2345_0000, handshake=False)


# -- IPv6 --------------------------------------------------------------------------------


def case_smtp6_clean(cap: Capture) -> None:
    """IPv6 clean session with server replies: no verdicts."""
    smtp(cap, "2001:db8:100::10", 40110, "EHLO client.example", "MAIL FROM:<alice@fine.example>",
         "RCPT TO:<bob@fine.example>", "QUIT", server_side=True)


def case_smtp6_rcpt_blocked(cap: Capture) -> None:
    """IPv6 blocked RCPT (line 3 of 4); the ban covers the client's /64."""
    smtp(cap, "2001:db8:100::11", 40111, "EHLO client.example", "MAIL FROM:<alice@fine.example>",
         "RCPT TO:<bob@blocked.test>", "QUIT", server_side=True)


def case_smtp6_rcpt_split(cap: Capture) -> None:
    """IPv6 RCPT split in the domain (segments EHLO, MAIL, part 1, part 2 (verdict), QUIT)."""
    plan = cut(_rcpt_session_plan(), 2, len(b"RCPT TO:<bob@blocked.t"))
    session(cap, "2001:db8:100::12", 40112, plan)


def case_smtp6_ext_headers_rcpt_blocked(cap: Capture) -> None:
    """IPv6 with Hop-by-Hop and Destination Options headers before TCP on every client packet:
    a blocked RCPT (line 3 of 4)."""
    c = Conn(cap, "2001:db8:100::13", 40113)
    c.ext = IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt()
    c.handshake()
    for line in lines("EHLO client.example", "MAIL FROM:<a@fine.example>", "RCPT TO:<x@blocked.test>", "QUIT"):
        c.send(line)
    c.fin()


# -- link layers and international names ----------------------------------------------


def case_smtp_vlan_rcpt_blocked(cap: Capture) -> None:
    """Ethernet frames with an 802.1Q tag (VLAN 100): a blocked RCPT (line 3 of 4)."""
    cap.vlan = 100
    smtp(cap, "198.51.100.25", 40025, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@blocked.test>", "QUIT", server_side=True)


def case_smtp_linux_sll_rcpt_blocked(cap: Capture) -> None:
    """Linux cooked capture (SLL, as 'tcpdump -i any' writes): a blocked RCPT (line 3 of 4)."""
    smtp(cap, "198.51.100.26", 40026, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@blocked.test>", "QUIT", server_side=True)


def case_smtp_idn_rcpt_blocked(cap: Capture) -> None:
    """An internationalised domain: RCPT TO its A-label form (xn--bcher-kva.test) from one
    source, and SMTPUTF8-style in UTF-8 upper case (BÜCHER.TEST) from another (line 3 of 4 each)."""
    smtp(cap, "198.51.100.27", 40027, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@xn--bcher-kva.test>", "QUIT")
    smtp(cap, "198.51.100.28", 40028, "EHLO client.example", "MAIL FROM:<a@fine.example> SMTPUTF8",
         "RCPT TO:<x@BÜCHER.TEST>".encode(), "QUIT")


# -- SSH connection rate --------------------------------------------------------------------


def case_ssh_burst_one_source(cap: Capture) -> None:
    """Six SSH connections (SYN, ACK, banner, FIN) from one source, 1.5 s apart."""
    for i in range(6):
        cap.at(1.5 * i)
        ssh(cap, "203.0.113.50", 50000 + i, isn=0x3000_0000 + i * 0x100000)


def case_ssh_spread_20s(cap: Capture) -> None:
    """The same six connections 20 s apart: never five within 60 s."""
    for i in range(6):
        cap.at(20.0 * i)
        ssh(cap, "203.0.113.51", 50010 + i, isn=0x3100_0000 + i * 0x100000, server_side=True)


def case_ssh_six_sources(cap: Capture) -> None:
    """Six connections within 7.5 s from six different sources."""
    for i in range(6):
        cap.at(1.5 * i)
        ssh(cap, f"198.18.0.{10 + i}", 50020 + i, isn=0x3200_0000 + i * 0x100000, server_side=True)


def case_ssh_retransmitted_syn(cap: Capture) -> None:
    """Four connections; the 1st and 3rd SYN are sent twice (same ISN): 6 SYNs, 4 connections."""
    for i in range(4):
        cap.at(1.5 * i)
        ssh(cap, "203.0.113.52", 50030 + i, isn=0x3300_0000 + i * 0x100000, retransmit_syn=i in (0, 2))


def case_ssh6_burst_same_64(cap: Capture) -> None:
    """Six connections from six addresses in 2001:db8:1:2::/64 (counted as one source),
    then one from another /64 (2001:db8:1:3::1), which is neither limited nor banned."""
    for i in range(6):
        cap.at(1.5 * i)
        ssh(cap, f"2001:db8:1:2::a{i + 1}", 50040 + i, isn=0x3400_0000 + i * 0x100000)
    cap.at(10.0)
    ssh(cap, "2001:db8:1:3::1", 50046, isn=0x3460_0000)


# -- payload scope -------------------------------------------------------------------------


def case_ssh_payload_split_upper(cap: Capture) -> None:
    """Port 22: the client banner 'SSH-2.0-EVIL' | 'BOT_1.0\\r\\n' (upper case, split), then a
    key-exchange-like segment.  Client packets: SYN, ACK, part 1, part 2 (verdict), kex, FIN."""
    plan = per_line([b"SSH-2.0-EVIL", b"BOT_1.0\r\n", b"\x00\x00\x01\x0c\x0a\x14" + b"\x00" * 16])
    session(cap, "198.51.100.60", 40060, plan, dport=22, server_side=True)


def case_smtp_payload_string_ignored(cap: Capture) -> None:
    """The payload string on port 25 (EHLO EVILBOT, 'evilbot' in the body): payload rules
    apply to the non-SMTP ports only, so no verdict."""
    smtp(cap, "198.51.100.61", 40061, "EHLO EVILBOT", "MAIL FROM:<evilbot@fine.example>",
         "RCPT TO:<b@fine.example>", "DATA", b"".join(lines("Subject: evilbot", "", "EVIL", "BOT evilbot", ".")),
         "QUIT")


# -- TCP flags ------------------------------------------------------------------------------


_PROBES = (("", 0x2000_0000), ("FPU", 0x2000_1000), ("SF", 0x2000_2000), ("SR", 0x2000_3000))


def _probes(cap: Capture, client: str, dport: int) -> None:
    for i, (flags, seq) in enumerate(_PROBES):
        pkt = ip_header(client, SERVER4) / TCP(sport=41000 + i, dport=dport, seq=seq, flags=flags, window=1024)
        cap.ip(bytes(pkt))


def case_tcp_flags_port22(cap: Capture) -> None:
    """NULL, XMAS (FIN+PSH+URG), SYN+FIN, SYN+RST probes to port 22, then a normal SSH
    connection from the same source (flag drops do not ban by default)."""
    _probes(cap, "203.0.113.70", 22)
    ssh(cap, "203.0.113.70", 41010, isn=0x3500_0000)


def case_tcp_flags_port80(cap: Capture) -> None:
    """The same four probes to port 80, which is not protected: no verdicts."""
    _probes(cap, "203.0.113.71", 80)


# -- TCP as the Linux receiver reads it; proven connections (issues 11 and 12) --------------


class Raw4:
    """A client connection written packet by packet: any flags, options, sequence numbers."""

    def __init__(self, cap: Capture, client: str, cport: int, isn: int, dport: int = 25,
                 server: str | None = None, ts: int | None = None) -> None:
        self.cap, self.client, self.cport, self.isn, self.dport = cap, client, cport, isn, dport
        self.server = server or (SERVER6 if ":" in client else SERVER4)
        self.ts = ts

    def pkt(self, flags: str, off: int = 0, data: bytes = b"", *, seq: int | None = None, urgptr: int = 0,
            tsval: int | None = None, ack: int = 0x70000001) -> None:
        opts: list = []
        if "S" in flags:
            opts = [("MSS", 1460)] + ([("Timestamp", (self.ts, 0))] if self.ts is not None else [])
        elif self.ts is not None:
            opts = [("NOP", None), ("NOP", None), ("Timestamp", (tsval if tsval is not None else self.ts, 0))]
        tcp = TCP(sport=self.cport, dport=self.dport, flags=flags, urgptr=urgptr, options=opts, window=64240,
                  seq=(seq if seq is not None else self.isn + 1 + off) & 0xFFFFFFFF, ack=ack if "A" in flags else 0)
        p = ip_header(self.client, self.server) / tcp
        self.cap.ip(bytes(p / Raw(data) if data else p))

    def opened(self, syn_data: bytes = b"") -> None:
        self.pkt("S", seq=self.isn, data=syn_data)
        self.pkt("A", tsval=self.ts)

    def lines(self, off: int, *texts: bytes, tsval: int | None = None) -> int:
        for t in texts:
            self.pkt("PA", off, t, tsval=tsval)
            off += len(t)
        return off


_EHLO, _MAIL = b"EHLO client.example\r\n", b"MAIL FROM:<a@fine.example>\r\n"


def case_tcp_urgent_byte(cap: Capture) -> None:
    """URG with the urgent pointer on one byte inside the recipient's domain (IPv4, then IPv6):
    Linux takes that byte out of the stream (no SO_OOBINLINE), the MTA reads <v@blocked.test>."""
    for client, port in (("198.51.100.120", 40120), ("2001:db8:1::120", 40121)):
        c = Raw4(cap, client, port, 0x1200_0000)
        c.opened()
        off = c.lines(0, _EHLO, _MAIL)
        line = b"RCPT TO:<v@blocXked.test>\r\n"
        c.pkt("PAU", off, line, urgptr=line.index(b"X") + 1)
        c.lines(off + len(line), b"QUIT\r\n")


def case_tcp_paws(cap: Capture) -> None:
    """Timestamps negotiated.  198.51.100.121: a stale copy (TSval far behind) of the RCPT says
    <v@safe-ok.test>, the current copy <v@blocked.test>: Linux discards the stale one.
    198.51.100.122: the reverse; the MTA reads the safe recipient."""
    for client, port, first, second in (("198.51.100.121", 40122, b"<v@safe-ok.test>", b"<v@blocked.test>"),
                                        ("198.51.100.122", 40123, b"<v@blocked.test>", b"<v@safe-ok.test>")):
        c = Raw4(cap, client, port, 0x1210_0000, ts=100_000)
        c.opened()
        off = c.lines(0, _EHLO, _MAIL, tsval=100_001)
        c.pkt("PA", off, b"RCPT TO:" + first + b"\r\n", tsval=5)
        c.pkt("PA", off, b"RCPT TO:" + second + b"\r\n", tsval=100_002)
        c.lines(off + 26, b"QUIT\r\n", tsval=100_003)


def case_tcp_syn_on_open_flow(cap: Capture) -> None:
    """RFC 5961 4.2.  198.51.100.123: a SYN with a new ISN in the middle of a split RCPT; the
    connection stays, the rest of the recipient arrives in its window.  198.51.100.124: data at
    the new ISN + 1 after such a SYN: old data or a new connection, the view cannot tell: reset."""
    c = Raw4(cap, "198.51.100.123", 40124, 0x1220_0000)
    c.opened()
    off = c.lines(0, _EHLO, _MAIL, b"RCPT TO:<v@blo")
    c.pkt("S", seq=0x5555_0000)
    c.lines(off, b"cked.test>\r\n", b"QUIT\r\n")
    d = Raw4(cap, "198.51.100.124", 40125, 0x1230_0000)
    d.opened()
    d.lines(0, _EHLO)
    d.pkt("S", seq=0x6666_0000)
    d.pkt("PA", data=_EHLO, seq=0x6666_0001)


def case_tcp_syn_data(cap: Capture) -> None:
    """A SYN carrying QUIT, then a normal session with a blocked recipient (IPv4, IPv6): the SYN's
    data is not part of the stream.  Then forged SYNs alone, one carrying a blocked envelope, five
    to port 22 from one source: nothing is proven, nothing counted or banned."""
    for client, port in (("198.51.100.125", 40126), ("2001:db8:2::125", 40127)):
        c = Raw4(cap, client, port, 0x1240_0000)
        c.opened(syn_data=b"QUIT\r\n")
        c.lines(0, _EHLO, _MAIL, b"RCPT TO:<victim@blocked.test>\r\n")
    Raw4(cap, "198.51.100.126", 40128, 0x1250_0000).pkt(
        "S", seq=0x1250_0000, data=b"MAIL FROM:<x@blocked.test>\r\nRCPT TO:<x@blocked.test>\r\n")
    for i in range(5):
        Raw4(cap, "198.51.100.127", 40130 + i, 0x1260_0000 + i, dport=22).pkt("S", seq=0x1260_0000 + i)


def case_tcp_ofo_merge(cap: Capture) -> None:
    """Two adjacent out-of-order segments (bloc, ked.), one overlapping both (ZZZZ), then the gap
    filled: Linux has coalesced the pair and drops ZZZZ; the MTA reads <v@blocked.test>."""
    c = Raw4(cap, "198.51.100.128", 40140, 0x1270_0000)
    c.opened()
    off = c.lines(0, _EHLO, _MAIL)
    head = b"RCPT TO:<v@"
    d = off + len(head)
    c.pkt("PA", d, b"bloc")
    c.pkt("PA", d + 4, b"ked.")
    c.pkt("PA", d + 2, b"ZZZZ")
    c.pkt("PA", d + 8, b"test>\r\n")
    c.pkt("PA", off, head)


def case_tcp_fin_psh_urg_ack(cap: Capture) -> None:
    """A clean session whose QUIT comes with FIN+PSH+URG+ACK (legal: not an Xmas probe), then an
    exact Xmas probe (FIN+PSH+URG, nmap -sX) from another source."""
    c = Raw4(cap, "198.51.100.129", 40150, 0x1280_0000)
    c.opened()
    off = c.lines(0, _EHLO, _MAIL, b"RCPT TO:<b@fine.example>\r\n")
    c.pkt("FPUA", off, b"QUIT\r\n", urgptr=0)
    Raw4(cap, "198.51.100.130", 40151, 0x1290_0000).pkt("FPU", seq=0x1290_0000)


def case_tcp_two_sided_proof(cap: Capture) -> None:
    """A capture with both directions.  A spoofed 198.51.100.131: SYN, the server's SYN-ACK, then a
    blind ACK with an envelope whose acknowledgment number is wrong: unproven, ignored.  A real
    198.51.100.132 acknowledges the SYN-ACK: proven, blocked and banned."""
    for client, port, ack in (("198.51.100.131", 40160, 0x1234_5678), ("198.51.100.132", 40161, 0x7000_0001)):
        c = Raw4(cap, client, port, 0x12A0_0000)
        c.pkt("S", seq=c.isn)
        synack = ip_header(SERVER4, client) / TCP(sport=25, dport=port, flags="SA", seq=0x7000_0000,
                                                  ack=c.isn + 1, window=65160)
        cap.ip(bytes(synack), to_server=False)
        c.pkt("PA", 0, _MAIL + b"RCPT TO:<x@blocked.test>\r\n", ack=ack)


def case_tcp_own_address(cap: Capture) -> None:
    """Connections from the server's own address (IPv4) and from its own /64 (IPv6) with a blocked
    recipient: reset, but the ban is refused."""
    for client, server, port in (("192.0.2.25", SERVER4, 40170), ("2001:db8::99", SERVER6, 40171)):
        c = Raw4(cap, client, port, 0x12B0_0000, server=server)
        c.opened()
        c.lines(0, _EHLO, _MAIL, b"RCPT TO:<x@blocked.test>\r\n")


# -- bans ---------------------------------------------------------------------------------


def case_smtp_banned_followup(cap: Capture) -> None:
    """Source A: blocked RCPT (line 3 of 4) at t=0; a new SMTP connection at t=10 (SYN, ACK,
    4 lines, FIN: 7 packets, all banned); an SSH connection at t=20 (4 packets, banned: the
    ban is per source, not per port); a SYN to port 80 (not protected).  Source B: a clean
    session at t=30.  Every session shows the server's side: a capture that holds server packets
    proves connections by their handshakes (replay checks the file first)."""
    smtp(cap, "198.51.100.80", 40080, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@blocked.test>", "QUIT", server_side=True)
    cap.at(10)
    smtp(cap, "198.51.100.80", 40081, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@fine.example>", "QUIT", isn=0x1100_0000, server_side=True)
    cap.at(20)
    ssh(cap, "198.51.100.80", 40082, isn=0x1200_0000, server_side=True)
    Conn(cap, "198.51.100.80", 40083, dport=80, isn=0x1300_0000).syn()
    cap.at(30)
    smtp(cap, "198.51.100.81", 40084, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@fine.example>", "QUIT", isn=0x1400_0000, server_side=True)


def case_smtp_ban_expires(cap: Capture) -> None:
    """With a 30 s domain ban: blocked RCPT at t=0 (line 3 of 4); a connection at t=10
    (SYN, ACK, EHLO, QUIT, FIN: banned); a clean connection at t=60 (accepted)."""
    smtp(cap, "198.51.100.82", 40085, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@blocked.test>", "QUIT", server_side=True)
    cap.at(10)
    smtp(cap, "198.51.100.82", 40086, "EHLO client.example", "QUIT", isn=0x1500_0000, server_side=True)
    cap.at(60)
    smtp(cap, "198.51.100.82", 40087, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@fine.example>", "QUIT", isn=0x1600_0000, server_side=True)


# -- malformed ------------------------------------------------------------------------------


def _tcp_datagram(src: str = "203.0.113.90", dport: int = 22, flags: str = "S", payload: bytes = b"") -> bytearray:
    pkt = ip_header(src, SERVER4) / TCP(sport=42000, dport=dport, seq=0x4000_0000, flags=flags, window=1024)
    return bytearray(bytes(pkt / Raw(payload)) if payload else bytes(pkt))


def _ipv4_checksum(d: bytearray) -> None:
    """Recompute the IPv4 header checksum after a field was patched (only that field is wrong)."""
    ihl = max(20, (d[0] & 0x0F) * 4)
    d[10:12] = b"\0\0"
    total = sum(struct.unpack(f"!{ihl // 2}H", bytes(d[:ihl])))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    d[10:12] = struct.pack("!H", ~total & 0xFFFF)


def _then_valid_syn(cap: Capture, src: str = "203.0.113.90") -> None:
    # a well-formed SYN from the same source afterwards: malformed packets do not ban
    Conn(cap, src, 42001, dport=22, isn=0x4100_0000).syn()


def case_malformed_truncated_ipv4_header(cap: Capture) -> None:
    """Raw IP link: a datagram cut after 12 bytes of its IPv4 header, then a valid SYN."""
    cap.ip(bytes(_tcp_datagram()[:12]))
    _then_valid_syn(cap)


def case_malformed_bad_ihl(cap: Capture) -> None:
    """Raw IP link: IPv4 header length field 3 (12 bytes, below the minimum 5), then a valid SYN."""
    d = _tcp_datagram()
    d[0] = 0x43
    _ipv4_checksum(d)
    cap.ip(bytes(d))
    _then_valid_syn(cap)


def case_malformed_tcp_offset_past_end(cap: Capture) -> None:
    """Raw IP link: TCP data offset 15 (60-byte header) in a datagram with a 20-byte TCP
    header and no payload, then a valid SYN."""
    d = _tcp_datagram()
    d[20 + 12] = 0xF0
    cap.ip(bytes(d))
    _then_valid_syn(cap)


def case_malformed_ipv4_length_exceeds_packet(cap: Capture) -> None:
    """Raw IP link: IPv4 total length 1500 on a 40-byte datagram, then a valid SYN."""
    d = _tcp_datagram()
    d[2:4] = struct.pack("!H", 1500)
    _ipv4_checksum(d)
    cap.ip(bytes(d))
    _then_valid_syn(cap)


def case_malformed_tcp_fragments(cap: Capture) -> None:
    """Ethernet: an IPv4 TCP segment to port 25 in two fragments (MF set; then offset 3),
    an IPv6 first fragment carrying TCP, then a valid SYN."""
    whole = bytes(IP(src="203.0.113.90", dst=SERVER4, ttl=64, id=7)
                  / TCP(sport=42000, dport=25, seq=0x4000_0000, flags="PA", window=1024)
                  / Raw(b"RCPT TO:<x@blocked.test>\r\n"))
    payload = whole[20:]
    for frag_off, chunk, more in ((0, payload[:24], True), (3, payload[24:], False)):
        ip = IP(src="203.0.113.90", dst=SERVER4, ttl=64, id=7, proto=6, frag=frag_off, flags="MF" if more else 0)
        cap.ip(bytes(ip / Raw(chunk)))
    tcp6 = bytes(TCP(sport=42002, dport=25, seq=0x4000_0000, flags="PA", window=1024) / Raw(b"EHLO x\r\n"))
    cap.ip(bytes(IPv6(src="2001:db8:90::1", dst=SERVER6, hlim=64) / IPv6ExtHdrFragment(nh=6, offset=0, m=1, id=9)
                 / Raw(tcp6[:16])))
    _then_valid_syn(cap)


# -- whitelist and alert mode ----------------------------------------------------------------


def case_whitelist(cap: Capture) -> None:
    """203.0.113.7 (whitelisted): a blocked RCPT session, then six SSH connections in 7.5 s;
    then 198.51.100.92 (not whitelisted): a blocked RCPT (line 3 of 4)."""
    smtp(cap, "203.0.113.7", 40090, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@blocked.test>", "QUIT")
    for i in range(6):
        cap.at(1 + 1.5 * i)
        ssh(cap, "203.0.113.7", 50090 + i, isn=0x3600_0000 + i * 0x100000)
    cap.at(20)
    smtp(cap, "198.51.100.92", 40092, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@blocked.test>", "QUIT")


def case_alert_mode(cap: Capture) -> None:
    """A blocked RCPT (line 3 of 4), replayed in alert mode."""
    smtp(cap, "198.51.100.93", 40093, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@blocked.test>", "QUIT", server_side=True)


# -- evasions found while writing these cases (expected to fail until fixed) ------------------


def case_smtp_starttls_refused_plaintext(cap: Capture) -> None:
    """STARTTLS is refused (502) and the client goes on in plain text with a blocked RCPT
    (segment 4 of 5): the MTA processes it, so it must be blocked."""
    smtp(cap, "198.51.100.100", 40100, "EHLO client.example", "STARTTLS", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@blocked.test>", "QUIT", server_side=True,
         replies={1: b"502 5.5.1 Error: command not implemented\r\n"})


def case_smtp_data_without_rcpt(cap: Capture) -> None:
    """DATA before any RCPT is refused by the MTA (Postfix 3.7: '554 5.5.1 Error: no valid
    recipients'); the blocked RCPT that follows (segment 4 of 7) is a command, not message data."""
    smtp(cap, "198.51.100.101", 40101, "EHLO client.example", "MAIL FROM:<a@fine.example>", "DATA",
         "RCPT TO:<x@blocked.test>", "DATA", b"".join(lines("hi", ".")), "QUIT", server_side=True,
         replies={2: b"554 5.5.1 Error: no valid recipients\r\n"})


def case_smtp_rcpt_address_comment(cap: Capture) -> None:
    """RFC 822 comments in the path: Postfix (strict_rfc821_envelopes = no, the default)
    drops them and reads x@blocked.test in both 'RCPT TO:<x@blocked.test(comment)>' (source A,
    line 3 of 4) and 'RCPT TO:<x@(comment)blocked.test>' (source B, line 3 of 4)."""
    smtp(cap, "198.51.100.106", 40106, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@blocked.test(comment)>", "QUIT")
    smtp(cap, "198.51.100.107", 40107, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<x@(comment)blocked.test>", "QUIT")


def case_smtp_second_transaction_after_large_body(cap: Capture) -> None:
    """A first message of about 6 kB (five 1200-byte body segments), then a second
    transaction with a blocked RCPT (segment 12 of 13)."""
    body_line = b"x" * 78 + b"\r\n"
    smtp(cap, "198.51.100.102", 40102, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<b@fine.example>", "DATA", *[body_line * 15] * 5, ".",
         "MAIL FROM:<a@fine.example>", "RCPT TO:<x@blocked.test>", "QUIT")


def case_smtp_body_space_dot_line(cap: Capture) -> None:
    """A body line ' .' (space, dot) does not end the message (only '.' alone does), so the
    'RCPT TO:<x@blocked.test>' line after it is message data: no verdict."""
    smtp(cap, "198.51.100.103", 40103, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<b@fine.example>", "DATA",
         b"".join(lines("Subject: x", "", " .", "RCPT TO:<x@blocked.test>", ".")), "QUIT")


def case_smtp_body_space_dot_then_bdat(cap: Capture) -> None:
    """The same confusion used to hide an envelope: the body holds ' .' and then 'BDAT 100000'.
    The MTA is still reading the message; the engine takes ' .' for its end and 'BDAT 100000'
    for a chunk to skip.  After the real '.', the blocked RCPT of a second transaction
    (segment 8 of 9) is a command to the MTA."""
    smtp(cap, "198.51.100.108", 40108, "EHLO client.example", "MAIL FROM:<a@fine.example>",
         "RCPT TO:<b@fine.example>", "DATA", b"".join(lines("Subject: x", "", " .", "BDAT 100000", "hi")), ".",
         "MAIL FROM:<a@fine.example>", "RCPT TO:<x@blocked.test>", "QUIT")


def _bogus_then_tail(cap: Capture, client: str, cport: int, flags: str) -> None:
    ehlo, mail = lines("EHLO client.example", "MAIL FROM:<a@fine.example>")
    c = Conn(cap, client, cport)
    c.handshake()
    c.send(ehlo)
    c.send(mail)
    c.send(b"RCPT TO:<x@blo")
    # far outside any receive window: Linux drops it (RFC 5961 for RST), the connection goes on
    c.segment(c.sent + 0x4000_0000, b"", flags)
    c.send(b"cked.test>\r\n")
    c.send(b"QUIT\r\n")
    c.fin()


def case_smtp_out_of_window_rst(cap: Capture) -> None:
    """Client: EHLO, MAIL, 'RCPT TO:<x@blo', an RST with a sequence number 2**30 beyond
    the window (the server's stack ignores it), 'cked.test>\\r\\n' (verdict), QUIT, FIN."""
    _bogus_then_tail(cap, "198.51.100.104", 40104, "R")


def case_smtp_out_of_window_fin(cap: Capture) -> None:
    """As smtp-out-of-window-rst, with a FIN+ACK 2**30 beyond the window instead of the RST."""
    _bogus_then_tail(cap, "198.51.100.105", 40105, "FA")


# -- driver ---------------------------------------------------------------------------------

LINKTYPES = {
    "malformed-truncated-ipv4-header": LINKTYPE_RAW,
    "malformed-bad-ihl": LINKTYPE_RAW,
    "malformed-tcp-offset-past-end": LINKTYPE_RAW,
    "malformed-ipv4-length-exceeds-packet": LINKTYPE_RAW,
    "smtp-linux-sll-rcpt-blocked": LINKTYPE_LINUX_SLL,
}


def builders() -> dict[str, Callable[[Capture], None]]:
    """Capture name -> builder, in definition order."""
    return {name[5:].replace("_", "-"): fn for name, fn in globals().items()
            if name.startswith("case_") and callable(fn)}


def build(outdir: Path) -> list[Path]:
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in builders().items():
        cap = Capture(LINKTYPES.get(name, LINKTYPE_ETHERNET))
        fn(cap)
        path = outdir / f"{name}.pcap"
        cap.write(path)
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    outdir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "pcaps" / "generated"
    written = build(outdir)
    print(f"wrote {len(written)} captures to {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
