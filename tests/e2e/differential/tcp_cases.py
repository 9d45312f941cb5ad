"""The TCP-level differential cases (issue 12, kinds 1 and 6; issue 11 item 2), as data.

Each kind with a case where the receiver's rule makes Postfix accept a blocked
recipient (the engine must block) and, where it exists, the reverse, where the rule
hides one the segments seem to carry (the engine must not).  The safe and blocked
domains have the same length (``example.org`` / ``example.com``), so two copies of a
segment cover the same sequence numbers.
"""

from __future__ import annotations

from .harness import Case, Seg

CRLF = b"\r\n"
EHLO = b"EHLO client.example.org\r\n"
MAIL = b"MAIL FROM:<a@example.org>\r\n"
BODY = b"Subject: t\r\n\r\nhello\r\n.\r\n"
DATA = b"DATA\r\n"
SAFE, BLOCKED = b"<v@example.org>", b"<v@example.com>"
RCPT = b"RCPT TO:"


def _head() -> list[Seg]:
    return [Seg(EHLO), Seg(MAIL)]


def _tail(off: int) -> list[Seg]:
    """DATA and the message from stream offset ``off`` on."""
    return [Seg(DATA, off=off), Seg(BODY, off=off + len(DATA))]


def urgent() -> list[Case]:
    """tcp_check_urg / tcp_urg: the byte the urgent pointer designates is not read (no SO_OOBINLINE)."""
    off = len(EHLO) + len(MAIL)
    line = RCPT + b"<v@exaXmple.com>" + CRLF
    a, b = RCPT + b"<v@exa", b"Xmple.com>" + CRLF
    last = RCPT + BLOCKED + CRLF + DATA + BODY + b"QUIT\r\n"
    return [
        Case("tcp-urg-byte-inside-domain", [*_head(), Seg(line, flags="PAU", urg=line.index(b"X") + 1),
                                            *_tail(off + len(line))], postfix_accepts=True, kind="1"),
        # the pointer designates the first byte of the next segment (not arrived yet when it is seen)
        Case("tcp-urg-pointer-into-next-segment", [*_head(), Seg(a, flags="PAU", urg=len(a) + 1), Seg(b),
                                                   *_tail(off + len(a) + len(b))], postfix_accepts=True, kind="1"),
        # kind 6: FIN+PSH+URG+ACK is a legal segment (not an Xmas probe): its data is read, less its urgent byte
        Case("tcp-fin-psh-urg-ack-carries-the-envelope", [*_head(), Seg(last, flags="FPUA", urg=len(last))],
             postfix_accepts=True, kind="6"),
    ]


def paws() -> list[Case]:
    """tcp_paws_discard: with timestamps, a segment whose TSval is behind ts_recent is dropped."""
    off = len(EHLO) + len(MAIL)
    n = len(RCPT + SAFE + CRLF)
    return [
        Case("tcp-paws-stale-copy-first", [*_head(), Seg(RCPT + SAFE + CRLF, tsval=1),
                                           Seg(RCPT + BLOCKED + CRLF, off=off), *_tail(off + n)],
             postfix_accepts=True, timestamps=True, kind="1"),
        Case("tcp-paws-stale-copy-is-the-blocked-one", [*_head(), Seg(RCPT + BLOCKED + CRLF, tsval=1),
                                                        Seg(RCPT + SAFE + CRLF, off=off), *_tail(off + n)],
             postfix_accepts=False, timestamps=True, kind="1"),
    ]


def syn_on_open_connection() -> list[Case]:
    """RFC 5961 4.2: a SYN with a new ISN on an open connection draws a challenge ACK, nothing else."""
    off = len(EHLO) + len(MAIL)
    a, b = RCPT + b"<v@exa", b"mple.com>" + CRLF
    return [
        Case("tcp-syn-new-isn-mid-envelope", [*_head(), Seg(a), Seg(flags="S", seq=0x5A5A5A5A, noack=True),
                                              Seg(b, off=off + len(a)), *_tail(off + len(a) + len(b))],
             postfix_accepts=True, kind="1"),
    ]


def syn_data() -> list[Case]:
    """Data on a SYN without a Fast Open cookie is not delivered (RFC 7413; issue 11 item 2)."""
    off = len(EHLO) + len(MAIL)
    rcpt = RCPT + BLOCKED + CRLF
    return [
        Case("tcp-syn-data-quit-then-blocked", [*_head(), Seg(rcpt), *_tail(off + len(rcpt))],
             syn_data=b"QUIT\r\n", postfix_accepts=True, kind="1"),
        Case("tcp-syn-data-holds-the-blocked-envelope", [*_head(), Seg(RCPT + SAFE + CRLF), *_tail(off + len(rcpt))],
             syn_data=EHLO + MAIL + rcpt + DATA, postfix_accepts=False, kind="1"),
    ]


def ofo_merge() -> list[Case]:
    """tcp_data_queue_ofo: adjacent held segments are coalesced; one inside them is dropped."""
    off = len(EHLO) + len(MAIL)
    head = RCPT + b"<v@"
    d = off + len(head)
    rest = b"com>" + CRLF
    end = d + 8 + len(rest)
    return [
        Case("tcp-ofo-adjacent-merge-then-overlap", [*_head(), Seg(b"exam", off=d), Seg(b"ple.", off=d + 4),
                                                     Seg(b"ZZZZ", off=d + 2), Seg(rest, off=d + 8),
                                                     Seg(head, off=off), *_tail(end)],
             postfix_accepts=True, kind="1"),
        # the overlap lands on the first held segment only: a partial overlap, kept as it came
        Case("tcp-ofo-partial-overlap-lower-wins", [*_head(), Seg(b"ple.", off=d + 4), Seg(b"exZZZZ", off=d),
                                                    Seg(rest, off=d + 8), Seg(head, off=off), *_tail(end)],
             postfix_accepts=False, kind="1"),
    ]


def tcp_cases() -> list[Case]:
    return [*urgent(), *paws(), *syn_on_open_connection(), *syn_data(), *ofo_merge()]
