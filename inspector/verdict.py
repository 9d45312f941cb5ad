"""Verdicts are data: an action, a named reason, the rule that fired and a ban.

The kernel verdict (NF_ACCEPT / NF_DROP) is derived at the edge by the runner;
the engine only says what should happen and why.

Verdicts and decisions are never changed once made, but they are not frozen
dataclasses: a frozen one sets each field through ``object.__setattr__``, which
made the engine 3-5 % slower on the mixed workload (``benchmarks/engine.py``,
measured), since every non-accept packet makes one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(enum.StrEnum):
    """What happens to the packet: accept, drop, or reset (drop, and answer both ends with TCP resets)."""
    ACCEPT = "accept"
    DROP = "drop"
    RESET = "reset"  # drop, and answer both ends with TCP resets


class Reason(enum.StrEnum):
    """Why a packet was not simply accepted (the ``reason`` of events and bans)."""
    DOMAIN = "domain"
    PAYLOAD = "payload"
    RATE = "rate"
    TCP_FLAGS = "tcp-flags"
    BANNED = "banned"
    MALFORMED = "malformed"
    TCP_STREAM = "tcp-stream"  # the receiver's view of the stream cannot be predicted (detail: which case)
    DESYNC = "desync"  # the engine's view of a stream could no longer be the receiver's (reordering)


@dataclass(slots=True)
class Verdict:
    """What the engine decided for one packet.

    ``alert`` is set in alert mode: the verdict says what enforce mode would do,
    and ``applied`` (what the kernel is told) is always ``accept``.
    """

    action: Action
    reason: Reason | None = None
    rule: str | None = None
    match: str | None = None
    ban: int = 0
    alert: bool = False
    detail: str | None = None
    bypass: bool = False  # accept, and let the rest of this connection bypass inspection

    @property
    def applied(self) -> Action:
        """What the kernel is told: accept in alert mode, else the action."""
        return Action.ACCEPT if self.alert else self.action


# The decoded fields of a packet, as :func:`inspector.packet.decode` returns them:
# (flow key, raw source address, source port, destination port, seq, TCP flags, payload start, payload end).
Fields = tuple[bytes, bytes, int, int, int, int, int, int]


@dataclass(slots=True)
class Decision(Verdict):
    """What :meth:`inspector.engine.Engine.process` returns for one packet: the verdict, and for a
    non-accept verdict the packet facts a report needs (``time`` in seconds, addresses as text,
    ports, the ban network) and the decoded ``fields`` a responder needs (so a reset does not
    decode the packet again; None for a malformed packet).  Accepts are the shared constants
    :data:`ACCEPT`, :data:`BYPASS`, :data:`ACCEPT_BODY`, :data:`ACCEPT_RESUME` and :data:`ACCEPT_REPLIES`,
    compared with ``is``.
    """

    time: float = 0.0
    src: str = ""
    sport: int = 0
    dst: str = ""
    dport: int = 0
    ban_network: str | None = None
    fields: Fields | None = None

    def as_dict(self) -> dict[str, object]:
        """The ``verdict`` event's fields (JSON-ready)."""
        v = self
        out: dict[str, object] = {
            "time": round(self.time, 6),
            "verdict": v.action.value,
            "reason": v.reason.value if v.reason else None,
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
            "dport": self.dport,
        }
        if v.rule is not None:
            out["rule"] = v.rule
        if v.match is not None:
            out["match"] = v.match
        if v.ban:
            out["ban"] = v.ban
            out["ban_network"] = self.ban_network
        if v.detail:
            out["detail"] = v.detail
        if v.alert:
            out["alert"] = True
        return out


ACCEPT = Decision(Action.ACCEPT)
# bypass (Suricata's term): the flow is decided, the kernel may let the rest of the connection
# through without queueing it (the runner marks the packet; the chain saves the mark on the connection)
BYPASS = Decision(Action.ACCEPT, bypass=True)
# SMTP, decide = "early": the flow is inside a DATA body; the kernel may keep the body segments that
# cannot hold an end-of-data line (setup-nfqueue.sh's in-body rules, the body mark on the connection)
ACCEPT_BODY = Decision(Action.ACCEPT, detail="body")
# the flow left the body (or needs its next segment): every segment must be queued again, and the
# server's packets no longer are (neither the body nor the reply mark)
ACCEPT_RESUME = Decision(Action.ACCEPT, detail="resume")
# SMTP: the server's replies are wanted (a RCPT was read: see SmtpSession.server); the kernel queues the
# server's payload segments of the connection too (the reply mark), and every client segment
ACCEPT_REPLIES = Decision(Action.ACCEPT, detail="replies")
