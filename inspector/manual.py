"""Manual bans: ``inspector ban TARGET`` and ``inspector unban TARGET``.

A target is an address, a CIDR network or a range ``first-last`` (the seeds'
``iptables -m iprange --src-range``); a range becomes the fewest networks that
cover exactly it (:func:`ipaddress.summarize_address_range`), each one entry of
the ``hash:net`` ban sets.  A lone IPv6 address is folded to its /64, as every
IPv6 ban is.  Durations: ``3600``, ``90s``, ``30m``, ``12h``, ``1d``, ``2w``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .respond.bans import BanPipeline

__all__ = ["TargetError", "ban_form", "manual_ban_handler", "parse_duration", "parse_target"]

MAX_NETWORKS = 512
MAX_SECONDS = 366 * 86400  # a range is at most 2*bits-2 networks (254 for IPv6): this only guards the format
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class TargetError(ValueError):
    """A ban target or duration that cannot be used; the message says why."""


def _network_text(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def parse_target(text: str, ipv6_prefix: int = 64) -> list[str]:
    """The networks a target stands for, in ban form (``"198.51.100.7"``, ``"198.51.100.16/28"``,
    ``"2001:db8:1::/64"``).  Raises :class:`TargetError`."""
    text = text.strip()
    if "-" in text:
        first_text, _, last_text = text.partition("-")
        try:
            first = ipaddress.ip_address(first_text.strip())
            last = ipaddress.ip_address(last_text.strip())
        except ValueError:
            raise TargetError(f"{text!r}: a range is two addresses of one family, e.g. "
                              "198.51.100.10-198.51.100.20") from None
        if first.version != last.version:
            raise TargetError(f"{text!r}: the two ends are of different families")
        if int(first) > int(last):
            raise TargetError(f"{text!r}: the range ends before it starts")
        nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = list(
            ipaddress.summarize_address_range(first, last))  # one family: checked above
        if len(nets) > MAX_NETWORKS:
            raise TargetError(f"{text!r}: more than {MAX_NETWORKS} networks")
        return [_network_text(n) for n in nets]
    try:
        if "/" in text:
            net = ipaddress.ip_network(text, strict=False)
        else:
            addr = ipaddress.ip_address(text)
            net = ipaddress.ip_network(f"{addr}/{ipv6_prefix if addr.version == 6 else 32}", strict=False)
    except ValueError:
        raise TargetError(f"{text!r} is not an address, a network (CIDR) or a range a-b") from None
    return [_network_text(net)]


def ban_form(address: str, ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> str:
    """The ban entry that ``unban ADDRESS`` lifts: a network as given (``/32`` as the bare
    address), a lone address widened as the service bans it (IPv6: its /64)."""
    net = ipaddress.ip_network(address.strip(), strict=False)
    if "/" not in address:
        prefix = ipv4_prefix if net.version == 4 else ipv6_prefix
        net = ipaddress.ip_network(f"{net.network_address}/{prefix}", strict=False)
    return _network_text(net)


def parse_duration(text: str) -> int:
    """Seconds in ``text`` (``3600``, ``90s``, ``30m``, ``12h``, ``1d``, ``2w``); at least 1."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw]?)\s*", text.lower())
    if not m or int(m.group(1)) <= 0:
        raise TargetError(f"{text!r} is not a duration like 3600, 30m, 12h, 1d or 2w")
    return int(m.group(1)) * _UNITS[m.group(2)]


def manual_ban_handler(pipeline: BanPipeline, clock: Callable[[], float]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The control socket's ``ban`` request: ``{"cmd": "ban", "networks": [...], "seconds": N,
    "reason": TEXT}``, each network through ``pipeline`` as ``reason="manual"``, ``rule=TEXT``,
    ``path="manual"``.  Replies ``{"ok": true, "banned": [...], "refused": [{"network", "why"}]}``."""
    from .respond.bans import Ban

    def handle(request: dict[str, Any]) -> dict[str, Any]:
        networks, seconds, note = request.get("networks"), request.get("seconds"), request.get("reason")
        if not isinstance(networks, list) or not networks or len(networks) > MAX_NETWORKS:
            return {"ok": False, "error": f"networks: a list of 1 to {MAX_NETWORKS} networks"}
        if not isinstance(seconds, int) or isinstance(seconds, bool) or not 0 < seconds <= MAX_SECONDS:
            return {"ok": False, "error": f"seconds: 1 to {MAX_SECONDS}"}
        if note is not None and (not isinstance(note, str) or len(note) > 200):
            return {"ok": False, "error": "reason: a text of at most 200 characters"}
        try:
            nets = [_network_text(ipaddress.ip_network(str(n), strict=False)) for n in networks]
        except ValueError as e:
            return {"ok": False, "error": str(e)}
        now = clock()
        banned: list[str] = []
        refused: list[dict[str, str]] = []
        for net in nets:
            if pipeline.issue(Ban(net, seconds, "manual", note or None, path="manual"), now):
                banned.append(net)
            else:
                refused.append({"network": net, "why": pipeline.protected(net) or "the kernel set refused it "
                                                                                   "(see the event log)"})
        return {"ok": True, "banned": banned, "refused": refused}

    return handle
