"""Client→server stream reassembly for the first ``depth`` bytes of a flow, as Linux receives it.

Offsets are relative to the flow's base sequence number (ISN + 1, or the
first sequence number seen when a flow is picked up midstream), so sequence
wrap-around needs no special handling past this point.

The model is the receiving Linux kernel's (``net/ipv4/tcp_input.c``), whose
view is what the protected MTA or sshd acts on:

* **In order** (``tcp_data_queue``): data already delivered never changes; a
  segment that starts before the next expected byte delivers only its new part.
* **Out of order** (``tcp_data_queue_ofo``): a segment that starts exactly
  where the last held one ends is coalesced into it (``tcp_ooo_try_coalesce``);
  a segment wholly inside a held one is dropped; one that starts at the same
  sequence number and covers it replaces it; held segments wholly covered by
  a new one are removed (``merge_right``); partial overlaps are kept as they
  came.  When the gap fills, held segments are delivered in sequence order,
  each trimmed to what is new (``tcp_ofo_queue``).
* **Urgent data** (``tcp_check_urg``, ``tcp_urg``, ``tcp_recvmsg`` without
  ``SO_OOBINLINE``): the byte an urgent pointer designates is taken out of the
  stream.  A pointer to bytes already received is ignored; a newer pointer
  replaces an older one whose byte has not arrived yet (that byte stays in the
  stream).  Whether a newer pointer also frees an urgent byte that has already
  arrived depends on how far the application has read, which no observer can
  know: that is reported as :attr:`ambiguous`.
* **PAWS** (``tcp_paws_discard``, RFC 7323 section 5): with timestamps
  negotiated, a segment whose TSval is more than 1 behind ``ts_recent`` is
  discarded.  ``ts_recent`` is updated from accepted segments that start at or
  before the last window update (``tcp_replace_ts_recent``); when the engine
  cannot know whether an update happened it keeps the bounds ``[ts_lo, ts_hi]``.
  A segment accepted although the bounds leave its fate open is *uncertain*:
  if another copy of its bytes with different content arrives, the stream is
  :attr:`ambiguous`.

Overlapping bytes that differ from what was kept are counted in ``conflicts``:
that is an evasion attempt, not a network accident.  :attr:`ambiguous` names
the first case where the receiver's stream cannot be predicted; the engine
then resets the connection rather than guess.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

_HALF = 0x80000000
_MASK = 0xFFFFFFFF
MAX_HELD = 256  # held out-of-order segments; beyond this Linux would prune under memory pressure


def ts_before(a: int, b: int, slack: int = 0) -> bool:
    """Is 32-bit timestamp ``a`` more than ``slack`` behind ``b`` (``(s32)(b - a) > slack``)?"""
    return ((b - a + _HALF) & _MASK) - _HALF > slack


class Stream:
    """Reassembles one direction of a TCP connection into an ordered prefix."""

    __slots__ = ("base", "delivered", "depth", "pending", "conflicts", "_head", "urg", "urg_count",
                 "ts_lo", "ts_hi", "uncertain", "ambiguous", "paws_discarded", "urgent_removed", "_engulfed")

    def __init__(self, base: int, depth: int) -> None:
        self.base = base
        self.delivered = 0  # stream offset of the next byte expected in order (Linux's rcv_nxt)
        self.depth = depth
        self.pending: list[list[Any]] | None = None  # held segments [offset, bytes], sorted by offset
        self.conflicts = 0
        self._head = b""  # the last delivered bytes, to compare retransmissions against
        self.urg: int | None = None  # offset of the current urgent byte (Linux's urg_seq)
        self.urg_count = 0
        self.ts_lo: int | None = None  # None: timestamps not negotiated
        self.ts_hi: int | None = None  # the highest value ts_recent may have reached
        self.uncertain: int | None = None  # lowest offset of bytes accepted without certainty
        self.ambiguous: str | None = None
        self.paws_discarded = 0
        self.urgent_removed = 0
        self._engulfed = False  # a coalesced held segment covers a later one (see _hold)

    @property
    def full(self) -> bool:
        return self.delivered >= self.depth

    def offset(self, seq: int) -> int:
        """Signed stream offset of sequence number ``seq``."""
        return ((seq - self.base + _HALF) & _MASK) - _HALF

    def timestamps(self, ts_recent: int) -> None:
        """Timestamps are negotiated and the receiver's ``ts_recent`` is this (the SYN's TSval)."""
        self.ts_lo = self.ts_hi = ts_recent

    def ack(self, seq: int, tsval: int) -> None:
        """A segment without data (a pure ACK) carrying TSval ``tsval``: it can move ``ts_recent``."""
        if self.ts_lo is not None and not ts_before(tsval, self.ts_lo, 1):
            self._update_ts(((seq - self.base + _HALF) & _MASK) - _HALF, tsval)

    def push(self, seq: int, data: bytes, tsval: int | None = None, urgent: int | None = None) -> bytes:
        """Add a segment; return the bytes that became contiguous (maybe ``b""``).

        ``tsval`` is the segment's TSval option, ``urgent`` the sequence number of
        the urgent byte its urgent pointer designates (``seq + urg_ptr - 1``, or
        ``seq`` for a zero pointer, as Linux computes it).
        """
        off = ((seq - self.base + _HALF) & _MASK) - _HALF
        end = off + len(data)
        doubt = False
        if tsval is not None and self.ts_lo is not None:
            if ts_before(tsval, self.ts_lo, 1):
                self.paws_discarded += 1
                return b""  # tcp_paws_discard: dropped before anything else looks at it
            hi = self.ts_hi
            assert hi is not None
            doubt = ts_before(tsval, hi, 1)
            self._update_ts(off, tsval)
        if urgent is not None:
            self._urgent(((urgent - self.base + _HALF) & _MASK) - _HALF)
        depth = self.depth
        if end > depth:
            if off >= depth:
                return b""
            data = data[: depth - off]
            end = depth
        done = self.delivered
        if doubt and end > done and (self.uncertain is None or off < self.uncertain):
            self.uncertain = max(off, done)
        if off <= done:
            if end <= done:
                if off >= 0 and end > off:
                    self._check_old(off, data)
                return b""
            if off < done:
                self._check_old(off, data[: done - off])
                data = data[done - off:]
            start = done
            self.delivered = end
            if self.pending:
                data += self._drain()
            self._remember(data)
            return data if self.urg is None else self._strip_urgent(start, data)
        self._hold(off, end, data)
        return b""

    def _update_ts(self, off: int, tsval: int) -> None:
        # tcp_replace_ts_recent: only a segment at or before rcv_wup updates ts_recent, and
        # only forwards.  rcv_wup is rcv_nxt when the receiver last sent anything: offset 0
        # for certain, the current rcv_nxt at most.
        lo, hi = self.ts_lo, self.ts_hi
        assert lo is not None
        if off <= 0 and not ts_before(tsval, lo):
            self.ts_lo = tsval
        if off <= self.delivered and hi is not None and not ts_before(tsval, hi):
            self.ts_hi = tsval

    def _urgent(self, ptr: int) -> None:
        # tcp_check_urg, with the application reading everything as soon as it arrives
        done = self.delivered
        if ptr < done:
            return  # points at bytes already received: ignored
        old = self.urg
        if old is not None and old >= done and ptr <= old:
            return  # an older or duplicate pointer
        if old is not None and old < done:
            # the previous urgent byte has arrived; whether this pointer lets it back into the
            # stream depends on whether the application has read up to it yet
            self.ambiguous = self.ambiguous or "urgent-pointer-replaced"
        self.urg = ptr
        self.urg_count += 1

    def _strip_urgent(self, start: int, data: bytes) -> bytes:
        urg = self.urg
        if urg is not None and start <= urg < start + len(data):
            self.urgent_removed += 1
            i = urg - start
            return data[:i] + data[i + 1:]
        return data
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
            self.pending = [p for p in self.pending if p[0] + len(p[1]) > off] or None
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
                self._conflict_range(off, off + len(data))

    def _conflict_range(self, off: int, end: int) -> None:
        self.conflicts += 1
        unc = self.uncertain
        if (unc is not None and end > unc) or self._engulfed:
            self.ambiguous = self.ambiguous or "conflicting-copy-of-uncertain-bytes"

    def _hold(self, off: int, end: int, data: bytes) -> None:
        pending = self.pending
        if pending is None:
            self.pending = [[off, data]]
            return
        last = pending[-1]
        last_end = last[0] + len(last[1])
        if off == last_end:  # fast path: coalesce onto the last held segment
            last[1] += data
            return
        if off > last_end:
            pending.append([off, data])
            if len(pending) > MAX_HELD:
                self.ambiguous = self.ambiguous or "too-many-held-segments"
            return
        i = bisect_right(pending, off, key=_first) - 1
        if i >= 0:
            p_off, p_data = pending[i]
            p_end = p_off + len(p_data)
            if off < p_end:
                if end <= p_end:  # all of it is already held: dropped
                    if p_data[off - p_off:end - p_off] != data:
                        self._conflict_range(off, end)
                    return
                if off == p_off:  # same start, covers it: replaces it
                    if data[:len(p_data)] != p_data:
                        self._conflict_range(off, p_end)
                    pending[i] = [off, data]
                    self._merge_right(i, end)
                    return
                if data[:p_end - off] != p_data[off - p_off:]:
                    self._conflict_range(off, p_end)
            elif off == p_end:  # adjacent to its predecessor: coalesced, no merge_right
                p_data += data
                pending[i][1] = p_data
                if i + 1 < len(pending) and pending[i + 1][0] < end:
                    # Linux does the same (no merge_right after a coalesce), and delivers the
                    # coalesced bytes first; but it now holds overlapping segments, and where a
                    # later segment lands among them depends on the shape of its rb-tree: from
                    # here on a conflicting copy cannot be predicted
                    nxt_off, nxt_data = pending[i + 1]
                    both = min(end, nxt_off + len(nxt_data))
                    if data[nxt_off - off:both - off] != nxt_data[:both - nxt_off]:
                        self.conflicts += 1
                    self._engulfed = True
                return
        pending.insert(i + 1, [off, data])
        self._merge_right(i + 1, end)
        if len(pending) > MAX_HELD:
            self.ambiguous = self.ambiguous or "too-many-held-segments"

    def _merge_right(self, i: int, end: int) -> None:
        pending = self.pending
        assert pending is not None
        off, data = pending[i]
        while i + 1 < len(pending):
            n_off, n_data = pending[i + 1]
            if end <= n_off:
                break
            n_end = n_off + len(n_data)
            if end < n_end:  # partial overlap: both kept
                if data[n_off - off:] != n_data[:end - n_off]:
                    self._conflict_range(n_off, end)
                break
            if data[n_off - off:n_end - off] != n_data:
                self._conflict_range(n_off, n_end)
            del pending[i + 1]

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
        if not rest:
            self._engulfed = False
        self.delivered = done
        return b"".join(out)


def _first(item: list[Any]) -> int:
    return int(item[0])
