"""Classic BPF programs for ``iptables -m bpf``: queue only what the engine needs.

The engine needs SYNs (the ISN: where Linux starts the stream), segments that
carry payload (stream inspection), and bare FINs and RSTs of flows it still
inspects (a flow's end, so that a reused 4-tuple is never read against an old
stream; flows it has decided are let through by connmark before this program
runs).  Pure ACKs need no userspace visit.  Packet length alone cannot tell a pure ACK with TCP options from a
one-byte segment without options, so these programs compute the payload length
exactly: IP length minus IP header minus TCP header.  Anything they cannot
parse (IPv4 fragments, IPv6 extension headers) is queued, so nothing is missed.

``python -m inspector.bpf 4|6`` prints the bytecode in the form
``iptables -m bpf --bytecode`` takes; ``scripts/setup-nfqueue.sh`` embeds it
(a test keeps the two in step).  :func:`run` interprets a program, for tests.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["program", "dot_first", "bytecode", "run"]

# classic BPF encoding (linux/filter.h)
LD, LDX, ST, ALU, JMP, RET, MISC = 0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x07
W, H, B = 0x00, 0x08, 0x10
IMM, ABS, IND, MEM, MSH = 0x00, 0x20, 0x40, 0x60, 0xA0
ADD, SUB, AND, RSH = 0x00, 0x10, 0x50, 0x70
K, X = 0x00, 0x08
JEQ, JGT, JSET = 0x10, 0x20, 0x40
TAX = 0x00

Insn = tuple[int, int, int, int]  # code, jt, jf, k
_SYN_FIN_RST = 0x07  # SYN | FIN | RST


# the two ends every program jumps to: queue the packet (1) or not (0)
_VERDICTS: list[tuple[Any, ...]] = [("label", "match"), (RET | K, 0, 0, 1), ("label", "skip"), (RET | K, 0, 0, 0)]


def _assemble(lines: list[tuple[Any, ...]]) -> list[Insn]:
    """Resolve ``("label", name)`` markers and jump targets given as label names."""
    labels: dict[str, int] = {}
    code: list[tuple[Any, ...]] = []
    for item in lines:
        if item[0] == "label":
            labels[item[1]] = len(code)
        else:
            code.append(item)
    out: list[Insn] = []
    for pc, (op, jt, jf, k) in enumerate(code):
        def rel(target: object, pc: int = pc) -> int:
            return labels[target] - pc - 1 if isinstance(target, str) else int(target)  # type: ignore[call-overload]
        out.append((op, rel(jt), rel(jf), k))
    return out


def program(family: int) -> list[Insn]:
    """The 'SYN, FIN, RST or payload' program for IPv4 (4) or IPv6 (6); it starts at the IP header."""
    if family == 4:
        return _assemble([
            (LD | B | ABS, 0, 0, 9),              # A = protocol
            (JMP | JEQ | K, 0, "match", 6),       # not TCP: let the engine decide
            (LD | H | ABS, 0, 0, 6),              # A = flags + fragment offset
            (JMP | JSET | K, "match", 0, 0x3FFF),  # a fragment: queue (the engine counts it)
            (LDX | B | MSH, 0, 0, 0),             # X = IHL * 4
            (LD | B | IND, 0, 0, 13),             # A = TCP flags
            (JMP | JSET | K, "match", 0, _SYN_FIN_RST),  # SYN, FIN or RST: queue
            (LD | B | IND, 0, 0, 12),             # A = TCP data offset byte
            (ALU | AND | K, 0, 0, 0xF0),
            (ALU | RSH | K, 0, 0, 2),             # A = TCP header length
            (ALU | ADD | X, 0, 0, 0),             # A = IP + TCP header length
            (ST, 0, 0, 0),                        # M[0] = A
            (LD | H | ABS, 0, 0, 2),              # A = IP total length
            (LDX | W | MEM, 0, 0, 0),             # X = M[0]
            (ALU | SUB | X, 0, 0, 0),             # A = payload length
            (JMP | JEQ | K, "skip", "match", 0),
            *_VERDICTS,
        ])
    if family == 6:
        return _assemble([
            (LD | B | ABS, 0, 0, 6),              # A = next header
            (JMP | JEQ | K, 0, "match", 6),       # extension headers: queue, the engine walks them
            (LD | B | ABS, 0, 0, 53),             # A = TCP flags (40 + 13)
            (JMP | JSET | K, "match", 0, _SYN_FIN_RST),
            (LD | B | ABS, 0, 0, 52),             # A = TCP data offset byte
            (ALU | AND | K, 0, 0, 0xF0),
            (ALU | RSH | K, 0, 0, 2),
            (MISC | TAX, 0, 0, 0),                # X = TCP header length
            (LD | H | ABS, 0, 0, 4),              # A = IPv6 payload length
            (ALU | SUB | X, 0, 0, 0),             # A = TCP payload length
            (JMP | JEQ | K, "skip", "match", 0),
            *_VERDICTS,
        ])
    raise ValueError("family must be 4 or 6")


def dot_first(family: int) -> list[Insn]:
    """'The first payload byte is ``.``' for IPv4 (4) or IPv6 (6): with ``-m string "\\n."`` it
    queues every segment of an SMTP body that could hold an end-of-data line, however the
    client split it (setup-nfqueue.sh's in-body rules).  Fragments and IPv6 extension
    headers match (queued: the engine decides)."""
    if family == 4:
        return _assemble([
            (LD | H | ABS, 0, 0, 6),              # A = flags + fragment offset
            (JMP | JSET | K, "match", 0, 0x3FFF),
            (LDX | B | MSH, 0, 0, 0),             # X = IHL * 4
            (LD | B | IND, 0, 0, 12),             # A = TCP data offset byte
            (ALU | AND | K, 0, 0, 0xF0),
            (ALU | RSH | K, 0, 0, 2),             # A = TCP header length
            (ALU | ADD | X, 0, 0, 0),             # A = offset of the payload
            (MISC | TAX, 0, 0, 0),                # X = A
            (LD | H | ABS, 0, 0, 2),              # A = IP total length
            (JMP | JGT | X, 0, "skip", 0),        # no payload: no match
            (LD | B | IND, 0, 0, 0),              # A = first payload byte
            (JMP | JEQ | K, "match", "skip", 0x2E),
            *_VERDICTS,
        ])
    if family == 6:
        return _assemble([
            (LD | B | ABS, 0, 0, 6),              # A = next header
            (JMP | JEQ | K, 0, "match", 6),       # extension headers: queue
            (LD | B | ABS, 0, 0, 52),             # A = TCP data offset byte
            (ALU | AND | K, 0, 0, 0xF0),
            (ALU | RSH | K, 0, 0, 2),
            (ALU | ADD | K, 0, 0, 40),            # A = offset of the payload
            (MISC | TAX, 0, 0, 0),
            (LD | H | ABS, 0, 0, 4),              # A = IPv6 payload length
            (ALU | ADD | K, 0, 0, 40),            # A = packet length
            (JMP | JGT | X, 0, "skip", 0),
            (LD | B | IND, 0, 0, 0),
            (JMP | JEQ | K, "match", "skip", 0x2E),
            *_VERDICTS,
        ])
    raise ValueError("family must be 4 or 6")


def bytecode(family: int, insns: list[Insn] | None = None) -> str:
    """The program (default: :func:`program`) as ``iptables -m bpf --bytecode`` takes it."""
    if insns is None:
        insns = program(family)
    return ",".join([str(len(insns))] + [f"{c} {jt} {jf} {k}" for c, jt, jf, k in insns])


def run(insns: list[Insn], packet: bytes) -> int:
    """Interpret a program over ``packet`` (a minimal cBPF machine, enough for the above)."""
    a = x = 0
    mem = [0] * 16
    pc = 0
    n = len(packet)

    def load(offset: int, size: int) -> int:
        if offset < 0 or offset + size > n:
            raise IndexError
        return int.from_bytes(packet[offset:offset + size], "big")

    try:
        while pc < len(insns):
            code, jt, jf, k = insns[pc]
            pc += 1
            cls = code & 0x07
            if cls == LD:
                size = {W: 4, H: 2, B: 1}[code & 0x18]
                mode = code & 0xE0
                a = load(k, size) if mode == ABS else load(x + k, size) if mode == IND else mem[k] if mode == MEM else k
            elif cls == LDX:
                mode = code & 0xE0
                x = (load(k, 1) & 0x0F) * 4 if mode == MSH else mem[k] if mode == MEM else k
            elif cls == ST:
                mem[k] = a
            elif cls == ALU:
                operand = x if code & X else k
                op = code & 0xF0
                a = {ADD: a + operand, SUB: a - operand, AND: a & operand, RSH: a >> operand}[op] & 0xFFFFFFFF
            elif cls == JMP:
                operand = x if code & X else k
                op = code & 0xF0
                taken = (a == operand) if op == JEQ else (a > operand) if op == JGT else bool(a & operand)
                pc += jt if taken else jf
            elif cls == RET:
                return k
            elif cls == MISC:
                x = a
    except IndexError:
        return 0  # the kernel's BPF returns 0 on an out-of-bounds load
    return 0


if __name__ == "__main__":
    # python -m inspector.bpf [4|6] [dot]
    fam = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    print(bytecode(fam, dot_first(fam) if sys.argv[2:] == ["dot"] else None))
