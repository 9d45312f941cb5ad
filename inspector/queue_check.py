"""Every installed queue is bound, or the service does not start.

The rules of ``setup-nfqueue.sh install --workers N`` spread IPv4 over queues
``Q..Q+N-1`` (``--queue-balance``) and send IPv6 to ``Q``.  A service that
binds fewer queues leaves the others unread: with ``--queue-bypass`` their
sources pass uninspected, without it they get no service at all.  So
``inspector run`` compares the queues the installed rules name (iptables and
ip6tables, chain ``INSPECTOR``) with the ones it will bind, and ``inspector
status`` shows an installed queue that nobody reads as an error.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable

__all__ = ["installed_queues", "missing_queues", "refusal", "parse_queue_rules"]


def parse_queue_rules(text: str) -> set[int]:
    """The queue numbers of ``iptables -S`` output: ``--queue-num N`` and ``--queue-balance A:B``."""
    queues: set[int] = set()
    for line in text.splitlines():
        words = line.split()
        if "--queue-balance" in words:
            first, _, last = words[words.index("--queue-balance") + 1].partition(":")
            queues.update(range(int(first), int(last or first) + 1))
        elif "--queue-num" in words:
            queues.add(int(words[words.index("--queue-num") + 1]))
    return queues


def installed_queues(tools: Iterable[str] = ("iptables", "ip6tables"), chain: str = "INSPECTOR") -> set[int] | None:
    """The queues the installed rules send packets to; None if they cannot be read (no root,
    no iptables).  An empty set: no rules installed."""
    queues: set[int] = set()
    readable = False
    for tool in tools:
        try:
            r = subprocess.run([tool, "-w", "-S", chain], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            readable = True
            queues |= parse_queue_rules(r.stdout)
        elif "No chain" in r.stderr or "does not exist" in r.stderr:
            readable = True  # not installed for this family
    return queues if readable else None


def missing_queues(installed: Iterable[int], bound: Iterable[int]) -> list[int]:
    """Installed queues that are not bound, in order."""
    return sorted(set(installed) - set(bound))


def refusal(installed: set[int] | None, first: int, workers: int) -> str | None:
    """Why ``inspector run`` must not start with ``workers`` workers from queue ``first`` (None: it may)."""
    if not installed:
        return None
    ours = range(first, first + workers)
    missing = missing_queues(installed, ours)
    if not missing:
        return None
    low, high = min(installed), max(installed)
    span = f"{low}..{high}" if high > low else f"{low}"
    return (f"the installed rules send packets to queue{'s' if len(installed) > 1 else ''} {span}, but "
            f"{workers} worker{'s' if workers != 1 else ''} from queue {first} would leave "
            f"queue{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} unbound (their traffic would "
            f"pass uninspected with --queue-bypass, or not at all); run with --queue {low} --workers "
            f"{high - low + 1}, or reinstall the rules: setup-nfqueue.sh install --queue {first} --workers {workers}")
