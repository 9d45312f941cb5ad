"""Fakes of the service's side effects, shipped with the package for the tests and replay.

:class:`FakeFirewall` (the ipset sets), :class:`FakePacket` (a queued packet and its verdict),
:class:`FakeQueue` (an NFQUEUE), :class:`RecordingSender` (the raw reset sender).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable


class FakeFirewall:
    """A :class:`inspector.firewall.Firewall` that records bans in memory, with a clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.entries: dict[str, float] = {}
        self.calls: list[tuple[str, str, int]] = []

    def ensure_sets(self) -> None:
        """Record the call."""
        self.calls.append(("ensure_sets", "", 0))

    def ban(self, network: str, seconds: int) -> None:
        """Record the call; keep ``network`` until the clock passes ``seconds``."""
        self.calls.append(("ban", network, seconds))
        self.entries[network] = self.clock() + seconds

    def unban(self, network: str) -> bool:
        """Record the call; True if ``network`` was there."""
        self.calls.append(("unban", network, 0))
        return self.entries.pop(network, None) is not None

    def bans(self) -> list[tuple[str, int]]:
        """The unexpired entries as ``(network, seconds left)``."""
        now = self.clock()
        return [(n, int(t - now)) for n, t in self.entries.items() if t > now]

    def whitelist(self) -> list[str]:
        """The kernel whitelist sets' networks (``white``; None: the sets do not exist)."""
        return list(self.white or [])

    def add_whitelist(self, network: str) -> bool:
        """Add ``network`` to ``white``; False when the sets do not exist (``white`` is None)."""
        if self.white is None:
            return False
        self.white.append(network)
        return True

    white: list[str] | None = None  # the kernel's whitelist sets (setup-nfqueue.sh); None: not installed


class FakePacket:
    """A queued packet as NetfilterQueue hands it over, recording the verdict."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.verdict: str | None = None
        self.mark: int | None = None

    def get_payload(self) -> bytes:
        """The packet's bytes."""
        return self.payload

    def set_payload(self, payload: bytes) -> None:
        """Replace the packet's bytes."""
        self.payload = payload

    def get_mark(self) -> int:
        """The mark (0 if none was set)."""
        return self.mark or 0

    def set_mark(self, mark: int) -> None:
        """Set the mark."""
        self.mark = mark

    def accept(self) -> None:
        """Verdict accept (a second verdict fails the test)."""
        assert self.verdict is None, "a packet gets one verdict"
        self.verdict = "accept"

    def drop(self) -> None:
        """Verdict drop (a second verdict fails the test)."""
        assert self.verdict is None, "a packet gets one verdict"
        self.verdict = "drop"

    def repeat(self) -> None:
        """Verdict repeat (a second verdict fails the test)."""
        assert self.verdict is None, "a packet gets one verdict"
        self.verdict = "repeat"


class RecordingSender:
    """A reset sender that keeps what it was asked to send."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, packet: bytes) -> None:
        """Keep ``packet``."""
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
        self.wakeups = 0
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)

    def bind(self, handler: Callable[[FakePacket], None]) -> None:
        """Keep ``handler``."""
        self.handler = handler

    def fileno(self) -> int:
        """The read end of a pipe that :meth:`put` makes readable."""
        return self._r

    def put(self, payload: bytes) -> FakePacket:
        """Queue a packet with these bytes; returns it (its verdict is set when it is handled)."""
        import os

        packet = FakePacket(payload)
        self.waiting.append(packet)
        os.write(self._w, b"x")
        return packet

    def read(self) -> None:
        """Hand every queued packet to the handler (counted in ``wakeups``)."""
        import os

        self.wakeups += 1
        with contextlib.suppress(BlockingIOError):
            os.read(self._r, 4096)
        waiting, self.waiting = self.waiting, []
        assert self.handler is not None
        for packet in waiting:
            self.handler(packet)
            self.handled.append(packet)

    def close(self) -> None:
        """Close the pipe (``closed`` becomes True)."""
        import os

        if not self.closed:
            self.closed = True
            os.close(self._r)
            os.close(self._w)
