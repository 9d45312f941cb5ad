"""Helpers for tests and comparisons that ship with the package.

:class:`StringRecipe` emulates the seeds' iptables recipe
``-p tcp --dport 25 -m string --algo bm --string "@example.com" -j REJECT``:
a case-sensitive search of each packet on its own, anywhere in it, with no
notion of streams or SMTP.  It exists to show, side by side with the engine,
the cases that recipe gets wrong.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .packet import Malformed, decode


class StringRecipe:
    """Per-packet, case-sensitive substring match, like ``iptables -m string``."""

    def __init__(self, domains: Iterable[str], ports: Iterable[int] = (25,)) -> None:
        self.needles = [b"@" + d.encode() for d in domains]
        self.ports = set(ports)

    def matches(self, packets: Iterable[bytes]) -> int:
        """Number of packets the recipe would reject."""
        hits = 0
        for data in packets:
            try:
                d = decode(data)
            except Malformed:
                continue
            if d is None or d[3] not in self.ports:
                continue
            # xt_string searches the whole packet from the IP header on (--from 0)
            if any(n in data for n in self.needles):
                hits += 1
        return hits


class FakeFirewall:
    """A :class:`inspector.firewall.Firewall` that records bans in memory, with a clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.entries: dict[str, float] = {}
        self.calls: list[tuple[str, str, int]] = []

    def ensure_sets(self) -> None:
        self.calls.append(("ensure_sets", "", 0))

    def ban(self, network: str, seconds: int) -> None:
        self.calls.append(("ban", network, seconds))
        self.entries[network] = self.clock() + seconds

    def unban(self, network: str) -> bool:
        self.calls.append(("unban", network, 0))
        return self.entries.pop(network, None) is not None

    def bans(self) -> list[tuple[str, int]]:
        now = self.clock()
        return [(n, int(t - now)) for n, t in self.entries.items() if t > now]


class FakePacket:
    """A queued packet as NetfilterQueue hands it over, recording the verdict."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.verdict: str | None = None
        self.mark: int | None = None

    def get_payload(self) -> bytes:
        return self.payload

    def set_payload(self, payload: bytes) -> None:
        self.payload = payload

    def get_mark(self) -> int:
        return self.mark or 0

    def set_mark(self, mark: int) -> None:
        self.mark = mark

    def accept(self) -> None:
        assert self.verdict is None, "a packet gets one verdict"
        self.verdict = "accept"

    def drop(self) -> None:
        assert self.verdict is None, "a packet gets one verdict"
        self.verdict = "drop"

    def repeat(self) -> None:
        assert self.verdict is None, "a packet gets one verdict"
        self.verdict = "repeat"


class RecordingSender:
    """A reset sender that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, packet: bytes) -> None:
        self.sent.append(packet)


class FakeQueue:
    """A :class:`inspector.service.loop.PacketQueue` in memory: :meth:`put` queues a packet (and
    makes the descriptor readable); :meth:`read` hands every queued packet to the handler."""

    def __init__(self, number: int = 0) -> None:
        import os

        self.number = number
        self.handler: Callable[[FakePacket], None] | None = None
        self.waiting: list[FakePacket] = []
        self.handled: list[FakePacket] = []
        self.closed = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)

    def bind(self, handler: Callable[[FakePacket], None]) -> None:
        self.handler = handler

    def fileno(self) -> int:
        return self._r

    def put(self, payload: bytes) -> FakePacket:
        import os

        packet = FakePacket(payload)
        self.waiting.append(packet)
        os.write(self._w, b"x")
        return packet

    def read(self) -> None:
        import os

        try:
            os.read(self._r, 4096)
        except BlockingIOError:
            pass
        waiting, self.waiting = self.waiting, []
        assert self.handler is not None
        for packet in waiting:
            self.handler(packet)
            self.handled.append(packet)

    def close(self) -> None:
        import os

        if not self.closed:
            self.closed = True
            os.close(self._r)
            os.close(self._w)
