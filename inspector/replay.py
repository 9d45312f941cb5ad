"""``inspector replay``: the engine over a capture, using capture timestamps.

Prints one JSON object per non-accept verdict and a final summary line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import IO

from .engine import Engine
from .packet import Malformed, decode
from .progress import Progress
from .sources.pcap import CaptureError, CaptureReader

LOOK = 100_000  # records looked at for a server packet before the first is replayed
LOOK_BYTES = 64 << 20  # datagram bytes held while looking (past it the start is read a second time)


@dataclass
class ReplayResult:
    """What a replay found: packets, the decisions (when collected), the summary line and the error that ended it, if
    any.
    """
    packets: int = 0
    decisions: list[dict[str, object]] = field(default_factory=list)
    summary: dict[str, object] = field(default_factory=dict)
    error: str | None = None


def run(engine: Engine, packets: Iterable[tuple[float, bytes]], emit: Callable[[dict[str, object]], None],
        progress: Callable[[], None] | None = None) -> None:
    """Feed ``packets`` to ``engine``; call ``emit`` for every non-accept decision
    (the engine counts them: ``verdict:<reason>`` in ``engine.counts``)."""
    process = engine.process
    for ts, data in packets:
        if progress is not None:
            progress()
        decision = process(data, ts)
        if decision.reason is not None:
            emit(decision.as_dict())


def has_server_packets(path: str, ports: Iterable[int], look: int = LOOK) -> bool:
    """Whether the first ``look`` records of the capture at ``path`` hold a server -> client TCP packet: from one
    of ``ports`` to a port that is not one of them, as the engine tells them (a capture taken at a server
    shows one within its first packets).

    A first pass over the start of the file (headers only), so that the engine knows before the first packet
    that handshakes must show the server's SYN-ACK (see ``Engine.expect_server_packets``).  An
    unreadable capture returns False: the replay itself reports the error.  :func:`replay_file`
    reads that start once instead (:func:`look_ahead`) and comes here only for captures of large packets."""
    wanted = frozenset(ports)
    try:
        with open(path, "rb", buffering=0) as f:
            for n, (_, data) in enumerate(CaptureReader(f, path)):
                if n >= look:
                    break
                if _from_server(data, wanted):
                    return True
    except (CaptureError, OSError):
        return False
    return False


def _from_server(data: bytes, ports: frozenset[int]) -> bool:
    """Is ``data`` a TCP packet from one of ``ports`` to a port not among them (the engine's server -> client
    packet; a client may well send from port 25 to port 25)?  A malformed packet is not."""
    try:
        d = decode(data)
    except Malformed:
        return False
    return d is not None and d[2] in ports and d[3] not in ports


def look_ahead(records: Iterator[tuple[float, bytes]], ports: Iterable[int], look: int = LOOK,
               max_bytes: int = LOOK_BYTES) -> tuple[list[tuple[float, bytes]], bool | None, Exception | None]:
    """Read up to ``look`` records of ``records`` (at most ``max_bytes`` of datagrams) to learn whether the
    capture is two-sided, as :func:`has_server_packets` does, without reading them twice.

    Returns ``(records read, two-sided, the error that ended the capture or None)`` (a
    :class:`CaptureError` or an ``OSError``, to be raised once the records before it are replayed): two-sided is
    ``True`` at the first server -> client packet (reading stops there), ``False`` when ``look``
    records (or the whole capture) held none, ``None`` when ``max_bytes`` ran out first (ask
    :func:`has_server_packets`)."""
    wanted = frozenset(ports)
    # the source port as the two bytes that follow an IPv4 header without options (where decode reads it)
    wanted_raw = frozenset(p.to_bytes(2, "big") for p in wanted if 0 <= p < 0x10000)
    head: list[tuple[float, bytes]] = []
    append = head.append
    size = 0
    try:
        for record in islice(records, look):
            append(record)
            data = record[1]
            if (data[20:22] in wanted_raw or data[:1] != b"E") and _from_server(data, wanted):
                return head, True, None
            size += len(data)
            if size > max_bytes:
                return head, None, None
    except (CaptureError, OSError) as e:
        return head, False, e
    return head, False, None


def replay_file(engine: Engine, path: str, out: IO[str] | None = None, collect: bool = False) -> ReplayResult:
    """Replay the capture at ``path``; write JSON lines to ``out`` (if given)."""
    result = ReplayResult()

    def emit(d: dict[str, object]) -> None:
        if collect:
            result.decisions.append(d)
        if out is not None:
            out.write(json.dumps(d) + "\n")

    started = time.perf_counter()
    reader: CaptureReader | None = None
    try:
        with open(path, "rb", buffering=0) as f:
            reader = CaptureReader(f, path)
            records = iter(reader)
            # the start of the capture, read once: is it two-sided?  (see Engine.expect_server_packets)
            head, two_sided, error = look_ahead(records, engine.server_ports)
            if two_sided is None:
                two_sided = has_server_packets(path, engine.server_ports)
            if two_sided:
                engine.expect_server_packets()
            bar = Progress.for_file("replay", path)
            progress = (lambda: bar.update(reader.bytes_read, reader.records)) if bar.enabled else None
            try:
                run(engine, head, emit, progress)
                del head
                if error is not None:
                    raise error
                run(engine, records, emit, progress)
            finally:
                bar.done()
    except CaptureError as e:
        result.error = str(e)
    except OSError as e:
        result.error = f"{path}: cannot read: {e.strerror or e}"
    elapsed = time.perf_counter() - started
    verdicts = {k.split(":", 1)[1]: n for k, n in engine.counts.items() if k.startswith("verdict:")}
    stats = engine.stats()
    result.packets = engine.packets
    result.summary = {
        "packets": engine.packets,
        "records": reader.records if reader else 0,
        "non_ip": reader.non_ip if reader else 0,
        "flows": stats["flows"],
        "malformed": stats["malformed"],
        "verdicts": dict(sorted(verdicts.items())),
        "bans": engine.counts["bans"],
        "alerts": engine.counts["alerts"],
        "whitelisted": engine.counts["whitelisted"],
        "overlap_conflicts": engine.counts["overlap-conflicts"],
        "engine_errors": engine.counts["engine-error"],
        "seconds": round(elapsed, 3),
        "packets_per_s": round(engine.packets / elapsed) if elapsed > 0 else 0,
    }
    if result.error:
        result.summary["error"] = result.error
    if out is not None:
        out.write(json.dumps({"summary": result.summary}) + "\n")
        out.flush()
    return result


def main_replay(engine: Engine, path: str) -> int:
    """``inspector replay``: JSON lines to stdout; returns the exit code (2: the capture could not be read to the end).
    """
    result = replay_file(engine, path, sys.stdout)
    if result.error:
        print(f"inspector: error: {result.error}", file=sys.stderr)
        return 2
    return 0
