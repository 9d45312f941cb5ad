"""Client→server stream reassembly for the first ``depth`` bytes of a flow.

Offsets are relative to the flow's base sequence number (ISN + 1, or the
first sequence number seen when a flow is picked up midstream), so sequence
wrap-around needs no special handling past this point.

Overlap policy follows the Linux receiver, whose view is what the protected
MTA or sshd acts on:

* data already delivered in order never changes (a retransmission or an
  overlapping segment cannot rewrite it: the data that arrived first wins);
* out-of-order segments are held as Linux's ``tcp_data_queue_ofo`` holds
  them: a segment wholly inside a held one is dropped, held segments wholly
  inside a new one are replaced by it, and when the gap fills, the held
  segments are delivered in sequence order, each trimmed to what is new.

Overlapping bytes that differ from what was kept are counted in
``conflicts``: that is an evasion attempt, not a network accident.
"""

from __future__ import annotations

_HALF = 0x80000000
_MASK = 0xFFFFFFFF


class Stream:
    """Reassembles one direction of a TCP connection into an ordered prefix."""

    __slots__ = ("base", "delivered", "depth", "pending", "conflicts", "_head")

    def __init__(self, base: int, depth: int) -> None:
        self.base = base
        self.delivered = 0  # stream offset of the next byte expected in order
        self.depth = depth
        self.pending: list[tuple[int, bytes]] | None = None  # held segments, sorted
        self.conflicts = 0
        self._head = b""  # the last delivered bytes, to compare retransmissions against

    @property
    def full(self) -> bool:
        return self.delivered >= self.depth

    def offset(self, seq: int) -> int:
        """Signed stream offset of sequence number ``seq``."""
        return ((seq - self.base + _HALF) & _MASK) - _HALF

    def push(self, seq: int, data: bytes) -> bytes:
        """Add a segment; return the bytes that became contiguous (maybe ``b""``)."""
        off = ((seq - self.base + _HALF) & _MASK) - _HALF
        end = off + len(data)
        depth = self.depth
        if end > depth:
            if off >= depth:
                return b""
            data = data[: depth - off]
            end = depth
        done = self.delivered
        if off <= done:
            if end <= done:
                if off >= 0 and end > off:
                    self._check_old(off, data)
                return b""
            if off < done:
                self._check_old(off, data[: done - off])
                data = data[done - off:]
            self.delivered = end
            if self.pending:
                data += self._drain()
            self._remember(data)
            return data
        self._hold(off, end, data)
        return b""

    def skip_to(self, off: int) -> int:
        """Take the bytes before stream offset ``off`` as delivered unseen (an SMTP body the
        kernel kept, see ``setup-nfqueue.sh``); returns how many were skipped.  Held segments
        that end before ``off`` are dropped."""
        gap = off - self.delivered
        if gap <= 0:
            return 0
        self.delivered = off
        self._head = b""
        if self.pending:
            self.pending = [(p_off, p_data) for p_off, p_data in self.pending if p_off + len(p_data) > off] or None
        return gap

    def _remember(self, data: bytes) -> None:
        # Keep a short window of delivered bytes: enough to see a conflicting
        # retransmission of the latest segment, bounded whatever the depth.
        self._head = (self._head + data)[-2048:]

    def _check_old(self, off: int, data: bytes) -> None:
        head = self._head
        start = self.delivered - len(head)
        if off >= start:
            rel = off - start
            if head[rel:rel + len(data)] != data[: len(head) - rel]:
                self.conflicts += 1

    def _hold(self, off: int, end: int, data: bytes) -> None:
        pending = self.pending
        if pending is None:
            self.pending = [(off, data)]
            return
        keep = []
        for p_off, p_data in pending:
            p_end = p_off + len(p_data)
            if p_off <= off and p_end >= end:
                if p_data[off - p_off:end - p_off] != data:
                    self.conflicts += 1
                return  # all of it is already held
            if p_off >= off and p_end <= end:
                if data[p_off - off:p_end - off] != p_data:
                    self.conflicts += 1
                continue  # covered by the new segment: replaced
            keep.append((p_off, p_data))
        keep.append((off, data))
        keep.sort(key=_first)
        self.pending = keep

    def _drain(self) -> bytes:
        pending = self.pending
        assert pending is not None
        out = []
        done = self.delivered
        i = 0
        for i, (p_off, p_data) in enumerate(pending):  # noqa: B007
            if p_off > done:
                break
            p_end = p_off + len(p_data)
            if p_end > done:
                out.append(p_data[done - p_off:])
                done = p_end
        else:
            i = len(pending)
        rest = pending[i:]
        self.pending = rest or None
        self.delivered = done
        return b"".join(out)


def _first(item: tuple[int, bytes]) -> int:
    return item[0]
