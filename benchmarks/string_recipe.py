"""The seeds' iptables recipe, emulated for comparisons with the engine.

``-p tcp --dport 25 -m string --algo bm --string "@example.com" -j REJECT``: a case-sensitive
search of each packet on its own, anywhere in it, with no notion of streams or SMTP.  It
exists to show, side by side with the engine, the cases that recipe gets wrong
(``benchmarks/seed_recipe.py``, ``tests/test_seed_recipe.py``).
"""

from __future__ import annotations

from collections.abc import Iterable

from inspector.packet import Malformed, decode


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
