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
    TCP_STREAM = "tcp-stream"  # the receiver's view of the stream cannot be predicted (detail: which case)


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


ACCEPT = Verdict(Action.ACCEPT)
# the flow is decided: the kernel may let the rest of the connection through (connmark)
ACCEPT_FINAL = Verdict(Action.ACCEPT, final=True)
