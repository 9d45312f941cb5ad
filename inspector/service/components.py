"""The side components the config asks for, built for the process that owns the ban store.

:func:`configured` is the one place where a component is wired in: one ``if`` per component,
reading its own config section and taking what it needs: the ban pipeline (``bans.issue``
from any thread, ``bans.add_listener``), the event sink, the control server (to register its
own requests) and the clock.  Each component follows :class:`inspector.service.Component`:
``start()``, ``close()``, ``status() -> dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import Config
from ..control import ControlServer
from ..events import EventSink
from ..respond.bans import BanPipeline
from ..rules import RuleSet
from . import Component, ServiceError

__all__ = ["configured"]


def configured(config: Config, bans: BanPipeline, events: EventSink, control: ControlServer,
               clock: Callable[[], float], rules: RuleSet | None = None) -> dict[str, Component]:
    """The components ``config`` enables, by the name of their ``status`` section (the fleet
    client, the connection-limit poller and the notifier add themselves here too).  ``rules``:
    the packet side's rules when it runs in this process (shared, not loaded twice)."""
    found: dict[str, Component] = {}
    if config.policy.listen is not None:
        found["policy"] = _policy(config, bans, events, clock, rules)
    return found


def _policy(config: Config, bans: BanPipeline, events: EventSink, clock: Callable[[], float],
            rules: RuleSet | None) -> Component:
    """``[policy] listen``: the MTA's policy hook, on the same rules and whitelist, banning through
    ``bans`` with ``path`` ``policy`` (inspector/policy/)."""
    from ..nets import Whitelist
    from ..policy.service import PolicyService
    from ..respond.bans import Ban
    from ..rules import RuleError, load_rules

    if rules is None:
        try:
            rules = load_rules(config.rules)
        except RuleError as e:
            raise ServiceError(str(e)) from None
    whitelist = Whitelist(config.whitelist)  # with loopback, as the packet path (it never sees lo)
    own = {str(a) for a in bans.own}

    def whitelisted(address: str) -> bool:
        # this host's own addresses reach the MTA over lo, which the packet path never inspects;
        # other hosts in an own /64 are rejected like anyone else (and not banned: the pipeline refuses)
        return address in whitelist or address in own

    def ban(network: str, seconds: int, rule: str, now: float) -> bool:
        return bans.issue(Ban(network, seconds, "domain", rule, path="policy"), now)

    return _PolicyComponent(PolicyService(config.policy, rules.domains, whitelisted, bans.network, ban,
                                          config.ban_domain, events, clock, alert=config.alert))


class _PolicyComponent:
    """The policy service as a component: a bind failure is a ServiceError; reloads take the rules."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def start(self) -> None:
        try:
            self.service.start()
        except OSError as e:
            raise ServiceError(f"[policy] listen: {e}") from None

    def close(self) -> None:
        self.service.close()

    def status(self) -> dict[str, Any]:
        return dict(self.service.status())

    def reload(self, config: Config, rules: RuleSet | None = None) -> None:
        self.service.reload(config.rules, rules)
