"""Verdicts are data: an action, a named reason, the rule that fired and a ban.

The kernel verdict (NF_ACCEPT / NF_DROP) is derived at the edge by the runner;
the engine only says what should happen and why.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(str, enum.Enum):
    ACCEPT = "accept"
    DROP = "drop"
    RESET = "reset"  # drop, and answer both ends with TCP resets


class Reason(str, enum.Enum):
    DOMAIN = "domain"
    PAYLOAD = "payload"
    RATE = "rate"
    TCP_FLAGS = "tcp-flags"
    BANNED = "banned"
    MALFORMED = "malformed"


@dataclass(frozen=True, slots=True)
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
    final: bool = False  # accept, and nothing more of this connection needs inspecting

    @property
    def applied(self) -> Action:
        return Action.ACCEPT if self.alert else self.action


# The decoded fields of a packet, as :func:`inspector.packet.decode` returns them:
# (flow key, raw source address, source port, destination port, seq, TCP flags, payload start, payload end).
Fields = tuple[bytes, bytes, int, int, int, int, int, int]


@dataclass(frozen=True, slots=True)
class Decision:
    """What :meth:`inspector.engine.Engine.process` returns for one packet: the verdict, and for a
    non-accept verdict the packet facts a report needs (addresses as text, ports, the ban network)
    and the decoded ``fields`` a responder needs (so a reset does not decode the packet again;
    None for a malformed packet).  The verdict's attributes are readable on the decision itself
    (``decision.reason``, ``decision.action`` ...).  Accepts are the shared constants
    :data:`ACCEPT`, :data:`ACCEPT_FINAL`, :data:`ACCEPT_BODY` and :data:`ACCEPT_RESUME`, compared
    with ``is``.
    """

    verdict: Verdict
    time: float = 0.0  # seconds, the packet's timestamp
    src: str = ""
    sport: int = 0
    dst: str = ""
    dport: int = 0
    ban_network: str | None = None
    fields: Fields | None = None

    @property
    def action(self) -> Action:
        return self.verdict.action

    @property
    def reason(self) -> Reason | None:
        return self.verdict.reason

    @property
    def rule(self) -> str | None:
        return self.verdict.rule

    @property
    def match(self) -> str | None:
        return self.verdict.match

    @property
    def ban(self) -> int:
        return self.verdict.ban

    @property
    def alert(self) -> bool:
        return self.verdict.alert

    @property
    def detail(self) -> str | None:
        return self.verdict.detail

    @property
    def final(self) -> bool:
        return self.verdict.final

    @property
    def applied(self) -> Action:
        return self.verdict.applied

    def as_dict(self) -> dict[str, object]:
        """The ``verdict`` event's fields (JSON-ready)."""
        v = self.verdict
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


ACCEPT = Decision(Verdict(Action.ACCEPT))
# the flow is decided: the kernel may let the rest of the connection through (connmark)
ACCEPT_FINAL = Decision(Verdict(Action.ACCEPT, final=True))
# SMTP, decide = "early": the flow is inside a DATA body; the kernel may keep the body segments that
# cannot hold an end-of-data line (setup-nfqueue.sh's in-body rules, the body mark on the connection)
ACCEPT_BODY = Decision(Verdict(Action.ACCEPT, detail="body"))
# the flow left the body (or needs its next segment): every segment must be queued again
ACCEPT_RESUME = Decision(Verdict(Action.ACCEPT, detail="resume"))
