"""The policy path as a side component: the server wired to the rules, whitelist, bans and events.

:class:`PolicyService` has ``start()``, ``close()`` and ``status()``
(:class:`inspector.service.Component`); :func:`inspector.service.components.configured`
builds it when ``[policy] listen`` is set.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from ..detect.domains import DomainMatcher
from ..events import EventSink
from ..rules import RuleError, RuleFile, RuleSet, load_rules
from .decide import Decision, PolicyDecider
from .server import PolicyServer
from .settings import PolicySettings

__all__ = ["BanIssuer", "PolicyService"]

# (network, seconds, rule, now) -> issued; the one ban pipeline, callable from any thread
BanIssuer = Callable[[str, int, str, float], bool]


class PolicyService:
    """The policy server wired to the rules, whitelist, bans and events.

    ``domains``: the current blocked-domain matcher (swap it with
    :meth:`swap_domains` on reload).  ``whitelisted(address)``, ``ban_network(address)``:
    as the packet path uses them.  ``ban``: the ban pipeline (see :data:`BanIssuer`),
    ``ban_seconds``: the domain ban time (``[bans] domain``; 0: reject without ban).
    ``clock``: wall-clock time for bans and events.
    """

    def __init__(self, settings: PolicySettings, domains: DomainMatcher, whitelisted: Callable[[str], bool],
                 ban_network: Callable[[str], str], ban: BanIssuer, ban_seconds: int, events: EventSink,
                 clock: Callable[[], float], alert: bool = False) -> None:
        if settings.listen is None:
            raise ValueError("[policy] listen is not set")
        self.settings = settings
        self._domains = domains
        self.ban = ban
        self.ban_seconds = ban_seconds
        self.events = events
        self.clock = clock
        self.decider = PolicyDecider(lambda: self._domains, whitelisted, ban_network, settings.reply, alert)
        self.server = PolicyServer(settings.listen, self.decider.decide, self._act, settings.limits,
                                   settings.uids())

    def swap_domains(self, domains: DomainMatcher) -> None:
        """Use new rules from the next request on (one reference swap)."""
        self._domains = domains

    def reload(self, files: Iterable[RuleFile], rules: RuleSet | None = None) -> None:
        """Swap in ``rules`` (already loaded by the packet side), or load the rule ``files`` aside
        (a thread: a big list takes seconds) and swap them in; a broken rule file keeps the rules
        in use (an ``error`` event says why).  The listen address and the limits change on
        restart only."""
        files = tuple(files)
        if rules is not None:
            self.swap_domains(rules.domains)
            return

        def build() -> None:
            try:
                self.swap_domains(load_rules(files).domains)
            except RuleError as e:
                self.events.emit({"event": "error", "what": "policy-reload", "path": "policy",
                                  "time": round(self.clock(), 3), "error": str(e), "kept": "the rules in use"})
        threading.Thread(target=build, name="inspector-policy-reload", daemon=True).start()

    def start(self) -> None:
        """Bind and serve; raises OSError if the address cannot be bound."""
        self.server.start()

    def close(self) -> None:
        """Stop the policy server (open MTA connections are closed; the MTA then uses its default action)."""
        self.server.close()

    def status(self) -> dict[str, Any]:
        """The ``policy`` section of ``inspector status``."""
        return self.server.status()

    def _act(self, decision: Decision) -> None:
        """Report a decision and, for a rejection, ban its client (runs in the server's worker thread)."""
        now = self.clock()
        if decision.outcome in ("malformed", "error"):
            self.events.emit({"event": "error", "what": "policy-request", "path": "policy", "time": round(now, 3),
                              "error": decision.error or "decision failed (answered DUNNO)"})
            return
        if decision.outcome not in ("reject", "alert"):
            return
        seconds = self.ban_seconds if decision.ban_network else 0
        event: dict[str, Any] = {"event": "verdict", "time": round(now, 3), "path": "policy",
                                 "verdict": "reject", "reason": "domain", "src": decision.client,
                                 "rule": decision.rule, "match": decision.match, "field": decision.field,
                                 "state": decision.state, "tls": decision.tls}
        if decision.outcome == "alert":
            event["alert"] = True
        elif seconds:
            event["ban"] = seconds
            event["ban_network"] = decision.ban_network
        self.events.emit(event)
        if decision.outcome == "reject" and seconds and decision.ban_network and decision.rule:
            self.ban(decision.ban_network, seconds, decision.rule, now)

