"""The policy decision: one request in, one :class:`Decision` out; pure (no I/O, no clock).

The envelope addresses an MTA hands over (``sender``, ``recipient``) are
checked with the packet path's own :class:`~inspector.detect.domains.DomainMatcher`
and :func:`~inspector.detect.domains.normalize_domain`, so subdomains, case,
a trailing root dot and IDN names are judged exactly as in a plain-text
session.  Postfix passes addresses in its internal (unquoted) form, so the
domain is what follows the last ``@``; a quoted local part such as
``"x@y"@example.com`` arrives as ``x@y@example.com`` and still yields
``example.com``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from ..detect.domains import DomainMatcher, normalize_domain
from .protocol import Request

__all__ = ["DUNNO", "Decision", "PolicyDecider", "address_domain", "address_domains"]

DUNNO = "DUNNO"
CHECKED = ("sender", "recipient")  # the attributes holding envelope addresses, in the order checked


def address_domain(address: str) -> str | None:
    """The normalised domain of an envelope address as Postfix passes it (None: none to check).

    ``user@Example.COM.`` gives ``example.com``; the null sender (empty), an
    address without ``@`` and a domain literal (``user@[192.0.2.1]``) give None.
    """
    at = address.rfind("@")
    if at < 0:
        return None
    return normalize_domain(address[at + 1:])


def address_domains(address: str) -> list[str]:
    """Every domain the address may be delivered to, as Postfix rewrites it by default.

    The domain after the last ``@``; and, in the local part (the whole address
    when it has no ``@``), the domain after the rightmost ``%``
    (``allow_percent_hack``: ``v%example.com@[192.0.2.25]`` goes to
    ``v@example.com``) and the one before the first ``!`` (``swap_bangpath``:
    ``example.com!v`` goes to ``v@example.com``).  Postfix rewrites these after
    the policy check, so the policy request still carries the original form.
    """
    out = []
    at = address.rfind("@")
    local = address if at < 0 else address[:at]
    if at >= 0:
        d = normalize_domain(address[at + 1:])
        if d:
            out.append(d)
    pct = local.rfind("%")
    if pct >= 0:
        d = normalize_domain(local[pct + 1:])
        if d:
            out.append(d)
    bang = local.find("!")
    if bang > 0:
        d = normalize_domain(local[:bang])
        if d:
            out.append(d)
    return out


@dataclass(frozen=True)
class Decision:
    """What to answer, and what the service should do about it.

    ``outcome``: ``"dunno"`` (not blocked), ``"reject"`` (a blocked domain:
    ``action`` ends the session and ``ban_network`` is banned, if any),
    ``"whitelisted"`` (blocked domain, whitelisted client: DUNNO),
    ``"alert"`` (blocked domain in alert mode: DUNNO, reported) or
    ``"malformed"`` (the request could not be read: DUNNO, counted).
    """

    action: str
    outcome: str
    rule: str | None = None
    match: str | None = None  # the address that matched
    field: str | None = None  # "sender" or "recipient"
    client: str | None = None
    ban_network: str | None = None
    error: str | None = None
    state: str | None = None  # Postfix protocol_state (RCPT, MAIL, ...)
    tls: str | None = None  # encryption_protocol, when the session is encrypted


class PolicyDecider:
    """Checks a request's envelope against the blocked domains.

    ``domains``: returns the current matcher (rules reload by swapping it).
    ``whitelisted(address) -> bool``: the service's whitelist.
    ``ban_network(address) -> str``: the network a ban of ``address`` covers
    (IPv6 folded to its prefix); raises ``ValueError`` for a non-address.
    ``reply``: the action for a blocked envelope; it must be a ``421`` or
    ``521`` reply, the only ones on which Postfix ends the session (Postfix
    access(5), "421 text" / "521 text").
    """

    def __init__(self, domains: Callable[[], DomainMatcher], whitelisted: Callable[[str], bool],
                 ban_network: Callable[[str], str], reply: str, alert: bool = False) -> None:
        if reply[:3] not in ("421", "521") or (len(reply) > 3 and reply[3] != " "):
            raise ValueError(f"the policy reply must be a 421 or 521 reply (Postfix ends the session on those "
                             f"only), not {reply!r}")
        self.domains = domains
        self.whitelisted = whitelisted
        self.ban_network = ban_network
        self.reply = reply
        self.alert = alert

    def decide(self, request: Request) -> Decision:
        """The decision for one request; never raises for any request content."""
        if request.error is not None:
            return Decision(DUNNO, "malformed", error=request.error)
        matcher = self.domains()
        for name in CHECKED:
            address = request.get(name)
            if not address:
                continue
            for domain in address_domains(address):
                rule = matcher.match(domain)
                if rule is not None:
                    return self._hit(request, rule, address, name)
        return Decision(DUNNO, "dunno")

    def _hit(self, request: Request, rule: str, address: str, name: str) -> Decision:
        client = request.get("client_address").strip()
        try:
            ip = ipaddress.ip_address(client)
            if ip.version == 6 and ip.ipv4_mapped is not None:  # a dual-stack socket's view of an IPv4 client
                client = str(ip.ipv4_mapped)
        except ValueError:
            ip = None
        extra = {"rule": rule, "match": address, "field": name, "client": client or None,
                 "state": request.get("protocol_state") or None, "tls": request.get("encryption_protocol") or None}
        if not client:
            # no client address at all: a local submission (Exim's -bs), which the packet path never sees
            return Decision(DUNNO, "whitelisted", **extra)
        if ip is None:
            # an unusable client address ("unknown"): reject, ban nothing
            return Decision(self.reply, "reject", **extra)
        if self.whitelisted(client):
            return Decision(DUNNO, "whitelisted", **extra)
        if self.alert:
            return Decision(DUNNO, "alert", **extra)
        return Decision(self.reply, "reject", ban_network=self.ban_network(client), **extra)
