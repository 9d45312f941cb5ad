"""``inspector replay``: the engine over a capture, using capture timestamps.

Prints one JSON object per non-accept verdict and a final summary line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO

from .engine import Engine
from .packet import Malformed, decode
from .progress import Progress
from .sources.pcap import CaptureError, CaptureReader


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


def has_server_packets(path: str, ports: Iterable[int], look: int = 100_000) -> bool:
    """Whether the first ``look`` records of the capture at ``path`` hold a TCP packet from one of
    ``ports`` (server -> client; a capture taken at a server shows one within its first packets).

    A first pass over the start of the file (headers only), so that the engine knows before the first packet
    that handshakes must show the server's SYN-ACK (see ``Engine.expect_server_packets``).  An
    unreadable capture returns False: the replay itself reports the error."""
    wanted = frozenset(ports)
    try:
        with open(path, "rb", buffering=0) as f:
            for n, (_, data) in enumerate(CaptureReader(f, path)):
                if n >= look:
                    break
                try:
                    d = decode(data)
                except Malformed:
                    continue  # the replay counts it
                if d is not None and d[2] in wanted:
                    return True
    except (CaptureError, OSError):
        return False
    return False


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
        if has_server_packets(path, engine.server_ports):
            engine.expect_server_packets()
        with open(path, "rb", buffering=0) as f:
            reader = CaptureReader(f, path)
            bar = Progress.for_file("replay", path)
            progress = (lambda: bar.update(reader.bytes_read, reader.records)) if bar.enabled else None
            try:
                run(engine, reader, emit, progress)
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
