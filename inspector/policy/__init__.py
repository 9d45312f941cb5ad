"""The MTA policy path: the same domain rules, asked by the MTA itself.

After STARTTLS the packets show nothing, but the MTA still sees every
envelope in clear.  Postfix (``check_policy_service``) and Exim (an ACL
``${readsocket}``) ask this service about each ``MAIL FROM``/``RCPT TO``; a
blocked domain is answered with a reply that ends the session, and the
client is banned through the same ban pipeline as a packet verdict (event
``path`` = ``policy``), so its next connection is dropped in the kernel.

Modules: :mod:`.protocol` (the wire format, sans I/O), :mod:`.decide` (the
decision, pure), :mod:`.server` (sockets and bounds), :mod:`.settings`
(``[policy]``).  :class:`PolicyService` wires them to the rules, the
whitelist, the ban pipeline and the events: a side component with
``start()``, ``close()`` and ``status()``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..detect.domains import DomainMatcher
from ..events import EventSink
from .decide import Decision, PolicyDecider
from .server import PolicyServer
from .settings import PolicySettings

if TYPE_CHECKING:
    from ..config import Config
    from ..rules import RuleSet
    from ..service.host import Host

__all__ = ["BanIssuer", "PolicyService", "attach"]

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

    def reload(self, config: Config, rules: RuleSet | None = None) -> None:
        """Swap in ``rules`` (already loaded by the packet side), or load ``config``'s rules aside
        (a thread: a big list takes seconds) and swap them in; a broken rule file keeps the rules
        in use (an ``error`` event says why).  The listen address and the limits change on
        restart only."""
        from ..rules import RuleError, load_rules

        if rules is not None:
            self.swap_domains(rules.domains)
            return

        def build() -> None:
            try:
                self.swap_domains(load_rules(config.rules).domains)
            except RuleError as e:
                self.events.emit({"event": "error", "what": "policy-reload", "path": "policy",
                                  "time": round(self.clock(), 3), "error": str(e), "kept": "the rules in use"})
        threading.Thread(target=build, name="inspector-policy-reload", daemon=True).start()

    def start(self) -> None:
        """Bind and serve; raises OSError if the address cannot be bound."""
        self.server.start()

    def close(self) -> None:
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


def attach(host: Host, rules: RuleSet | None = None) -> None:
    """Run the policy service beside ``host`` (the process that owns the ban store) when
    ``[policy] listen`` is set: same rules (``rules``, the packet side's when it is in this
    process, else loaded here), same whitelist, bans through ``host.bans`` with ``path``
    ``policy``.  Raises ServiceError if the rules cannot be loaded."""
    from ..nets import Whitelist
    from ..respond.bans import Ban
    from ..rules import RuleError, load_rules
    from ..service import ServiceError

    config = host.config
    if config.policy.listen is None:
        return
    if rules is None:
        try:
            rules = load_rules(config.rules)
        except RuleError as e:
            raise ServiceError(str(e)) from None
    pipeline = host.bans
    whitelist = Whitelist(config.whitelist)  # with loopback, as the packet path (it never sees lo)
    own = {str(a) for a in pipeline.own}

    def whitelisted(address: str) -> bool:
        # this host's own addresses reach the MTA over lo, which the packet path never inspects;
        # other hosts in an own /64 are rejected like anyone else (and not banned: the pipeline refuses)
        return address in whitelist or address in own

    def ban(network: str, seconds: int, rule: str, now: float) -> bool:
        return pipeline.issue(Ban(network, seconds, "domain", rule, path="policy"), now)

    host.add_component("policy", _Started(PolicyService(
        config.policy, rules.domains, whitelisted, pipeline.network, ban, config.ban_domain,
        host.events, host.clock, alert=config.alert)))


class _Started:
    """A policy service as a host component: a bind failure at start is a ServiceError."""

    def __init__(self, service: PolicyService) -> None:
        self.service = service

    def start(self) -> None:
        from ..service import ServiceError

        try:
            self.service.start()
        except OSError as e:
            raise ServiceError(f"[policy] listen: {e}") from None

    def close(self) -> None:
        self.service.close()

    def status(self) -> dict[str, Any]:
        return self.service.status()

    def reload(self, config: Config, rules: RuleSet | None = None) -> None:
        self.service.reload(config, rules)
