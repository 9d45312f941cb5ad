"""One whitelist for the kernel and the service.

``setup-nfqueue.sh install`` fills the kernel's whitelist sets
(``inspector-white4``/``inspector-white6``) from ``--whitelist`` and with the
SSH client it runs under; the config has ``[whitelist] cidrs``.  Both must
protect the same sources everywhere: the kernel RETURNs them before any ban
DROP, and the engine, the log policy and every ban path refuse them.  So at
start and on every reload the service takes the union: the kernel's entries
join the config's whitelist, and the config's entries are added to the
kernel sets.

Entries that the ``[whitelist] files``/``hosts`` component put into the sets
(:class:`inspector.whitelist_sources.KernelWhitelist`, recorded in
``whitelist-kernel.json`` beside the state file) are left out: that component
owns them and takes them out again when they leave their file.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from .config import Config
from .events import EventSink
from .firewall import FirewallError

__all__ = ["WhitelistSets", "merge_kernel_whitelist", "owned_by_sources", "SOURCES_STATE"]

SOURCES_STATE = "whitelist-kernel.json"  # the whitelist-sources component's record (service/components.py)


class WhitelistSets(Protocol):
    """What :class:`inspector.firewall.IpsetFirewall` offers for the whitelist sets."""

    def whitelist(self) -> list[str]: ...
    def add_whitelist(self, network: str) -> bool: ...


def merge_kernel_whitelist(config: Config, firewall: WhitelistSets | Any, events: EventSink) -> Config:
    """``config`` with the kernel whitelist sets' networks added to ``whitelist``; the config's
    networks are put into the kernel sets.  A firewall error is an event (the config's whitelist
    still holds), never raised."""
    if not hasattr(firewall, "whitelist"):
        return config
    try:
        kernel = firewall.whitelist()
    except FirewallError as e:
        events.emit({"event": "error", "what": "whitelist", "error": str(e)})
        return config
    owned = owned_by_sources(config)
    kernel = [entry for entry in kernel if str(ipaddress.ip_network(entry, strict=False)) not in owned]
    nets = list(config.whitelist)
    for entry in kernel:
        net = ipaddress.ip_network(entry, strict=False)
        if net not in nets:
            nets.append(net)
    known = {ipaddress.ip_network(k, strict=False) for k in kernel}
    for net in config.whitelist:
        if net in known:
            continue
        try:
            firewall.add_whitelist(str(net))
        except FirewallError as e:
            events.emit({"event": "error", "what": "whitelist", "network": str(net), "error": str(e)})
    return replace(config, whitelist=tuple(nets))


def owned_by_sources(config: Config) -> set[str]:
    """The kernel whitelist entries the ``[whitelist] files``/``hosts`` component added (its state
    file; empty when there is none or it cannot be read)."""
    state = Path(config.service.state_file).with_name(SOURCES_STATE)
    try:
        return {str(ipaddress.ip_network(n, strict=False)) for n in json.loads(state.read_text())}
    except (OSError, ValueError, TypeError):
        return set()
