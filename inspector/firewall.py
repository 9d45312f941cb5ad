"""The kernel side of bans: ipset blacklists, over netlink (pyroute2), no forking.

A narrow interface, :class:`Firewall`, with the real :class:`IpsetFirewall`
here and a recording fake in :mod:`inspector.testing`.  Bans go into two
``hash:net`` sets, one per family, so that an address, an IPv6 /64 or a manual
range's networks are each one entry.  Both sets have ``timeout`` support: the
kernel expires bans by itself.  An IPv4 ``hash:ip`` set made by an older
``setup-nfqueue.sh`` is still used, for single addresses only, until that
script's ``install`` upgrades it.
"""

from __future__ import annotations

import ipaddress
import socket
import subprocess
from dataclasses import dataclass
from typing import Any, Protocol

from .ipset_netlink import IpsetError, IpsetNetlink

__all__ = ["Firewall", "FirewallError", "IpsetFirewall", "SetNames", "MAX_TIMEOUT", "detect_queues", "parse_queues"]

MAX_TIMEOUT = 2_147_483  # ipset's largest timeout; netlink silently clamps larger ones
WHITE_SETS = ("inspector-white4", "inspector-white6")  # setup-nfqueue.sh's whitelist sets (IPv4, IPv6)
_ERR_HASH_FULL = 4352  # IPSET_ERR_HASH_FULL (include/uapi/linux/netfilter/ipset/ip_set_hash.h)


class FirewallError(RuntimeError):
    """A firewall operation failed; the message says what and why."""


class Firewall(Protocol):
    """The kernel side of bans (ipset sets): the real :class:`IpsetFirewall`, or
    :class:`inspector.testing.FakeFirewall`. Methods raise FirewallError.
    """

    def ensure_sets(self) -> None:
        """Create the ban sets if they are missing (an unusable existing set is an error)."""
    def ban(self, network: str, seconds: int) -> None:
        """Add ``network`` (an address or CIDR) for ``seconds`` (the kernel expires it)."""
    def unban(self, network: str) -> bool:
        """Remove ``network``; True if it was there."""
    def bans(self) -> list[tuple[str, int]]:
        """Every entry of the ban sets as ``(network, seconds left)``."""


@dataclass(frozen=True)
class SetNames:
    """The names of the IPv4 and IPv6 ban sets (``setup-nfqueue.sh`` creates the same names)."""
    v4: str = "inspector-ban4"
    v6: str = "inspector-ban6"


class IpsetFirewall:
    """ipset sets managed through pyroute2's netlink client, in the current network namespace."""

    def __init__(self, names: SetNames = SetNames(), maxelem: int = 1_000_000,
                 ipv4_prefix: int = 32, ipv6_prefix: int = 64) -> None:
        for n in (names.v4, names.v6):
            if not 0 < len(n) <= 31:
                raise FirewallError(f"ipset name {n!r} must be 1 to 31 characters")
        self.names = names
        self.maxelem = maxelem
        self.v4_net = True  # False: an existing hash:ip set (single addresses only)
        self.ipv6_prefix = ipv6_prefix
        try:
            from pyroute2 import IPSet
            self._ipset: Any = IPSet()
            self._fast = IpsetNetlink()  # ban/unban: the hot operations, without pyroute2's per-call event loop
        except ImportError:
            raise FirewallError("pyroute2 is not installed (pip install 'inspector[live]')") from None
        except Exception as e:  # noqa: BLE001 - pyroute2 raises its own error types
            raise FirewallError(_explain_open(e)) from None

    def close(self) -> None:
        """Close the netlink sockets."""
        self._ipset.close()
        self._fast.close()

    def ensure_sets(self) -> None:
        """Create both sets if missing.  An existing set (e.g. made by setup-nfqueue.sh) is
        used when its type and family fit and it supports timeouts; otherwise it is an error."""
        from pyroute2.ipset import AlreadyExists

        specs = ((self.names.v4, "hash:net", socket.AF_INET), (self.names.v6, "hash:net", socket.AF_INET6))
        for name, stype, family in specs:
            try:
                self._ipset.create(name, stype=stype, family=family, timeout=3600,
                                   maxelem=self.maxelem, exclusive=True)
                continue
            except AlreadyExists:
                pass
            except Exception as e:  # noqa: BLE001
                raise FirewallError(f"cannot create ipset {name}: {e}") from None
            kind, fam, timeout = self._header(name)
            if kind == "hash:ip" and fam == socket.AF_INET == family and timeout is not None:
                self.v4_net = False  # legacy: until setup-nfqueue.sh install upgrades it
                continue
            want = f"{stype} {'inet' if family == socket.AF_INET else 'inet6'} with timeout support"
            if kind != stype or fam != family or timeout is None:
                have = f"{kind} {'inet' if fam == socket.AF_INET else 'inet6'}" + \
                    ("" if timeout is not None else " without timeout support")
                raise FirewallError(f"ipset {name} exists as {have}, but bans need {want}; "
                                    f"remove it (ipset destroy {name}) or choose another name")

    def _header(self, name: str) -> tuple[str | None, int | None, int | None]:
        for msg in self._ipset.list(name):
            data = msg.get_attr("IPSET_ATTR_DATA")
            return (msg.get_attr("IPSET_ATTR_TYPENAME"), msg.get_attr("IPSET_ATTR_FAMILY"),
                    data.get_attr("IPSET_ATTR_TIMEOUT") if data is not None else None)
        return None, None, None

    def _exists(self, name: str) -> bool:
        try:
            return self._header(name)[0] is not None
        except Exception:  # noqa: BLE001 - pyroute2 raises its own error for a missing set
            return False

    def _target(self, network: str) -> tuple[str, str, dict[str, Any]]:
        net = ipaddress.ip_network(network, strict=False)
        if net.version == 4:
            if self.v4_net:
                entry = str(net) if net.prefixlen < 32 else str(net.network_address)
                return self.names.v4, entry, {"family": socket.AF_INET, "etype": "net"}
            if net.prefixlen < 32:
                raise FirewallError(f"ipset {self.names.v4} is hash:ip (made by an older setup-nfqueue.sh) and holds "
                                    f"single addresses only: {net} not banned; run setup-nfqueue.sh install to "
                                    "upgrade it to hash:net")
            return self.names.v4, str(net.network_address), {"family": socket.AF_INET}
        return self.names.v6, str(net), {"family": socket.AF_INET6, "etype": "net"}

    def ban(self, network: str, seconds: int) -> None:
        """Add (or refresh) a ban that the kernel expires after ``seconds``."""
        name, entry, kw = self._target(network)
        try:
            self._fast.add(name, entry, max(1, min(int(seconds), MAX_TIMEOUT)), net=kw.get("etype") == "net")
        except IpsetError as e:
            if e.code == _ERR_HASH_FULL:
                raise FirewallError(f"ipset {name} is full (maxelem {self.maxelem}): {entry} not banned") from None
            raise FirewallError(f"cannot ban {entry} in ipset {name}: {e}") from None
        except OSError as e:
            raise FirewallError(f"cannot ban {entry} in ipset {name}: {e}") from None

    def unban(self, network: str) -> bool:
        """Remove ``network`` from its set; True if it was there, False if not. Raises FirewallError on any other
        netlink error.
        """
        name, entry, kw = self._target(network)
        try:
            return self._fast.delete(name, entry, net=kw.get("etype") == "net")
        except OSError as e:
            raise FirewallError(f"cannot unban {entry} in ipset {name}: {e}") from None

    def bans(self) -> list[tuple[str, int]]:
        """Current entries of both sets with their seconds left."""
        out: list[tuple[str, int]] = []
        for name in (self.names.v4, self.names.v6):
            out.extend(self.members(name))
        return out

    def whitelist(self, names: tuple[str, str] = WHITE_SETS) -> list[str]:
        """The networks in the kernel's whitelist sets (``setup-nfqueue.sh --whitelist`` and the SSH
        client it ran under); a missing set holds nothing."""
        out: list[str] = []
        for name in names:
            if not self._exists(name):
                continue
            out.extend(network for network, _ in self.members(name))
        return out

    def add_whitelist(self, network: str, names: tuple[str, str] = WHITE_SETS) -> bool:
        """Put ``network`` into the kernel's whitelist set of its family; False if that set does
        not exist (no ``setup-nfqueue.sh install``)."""
        net = ipaddress.ip_network(network, strict=False)
        name = names[0] if net.version == 4 else names[1]
        try:
            if not self._exists(name):
                return False
            self._ipset.add(name, str(net), family=socket.AF_INET if net.version == 4 else socket.AF_INET6,
                            etype="net", exclusive=False)
        except Exception as e:  # noqa: BLE001 - pyroute2 raises its own error types
            raise FirewallError(f"cannot whitelist {net} in ipset {name}: {e}") from None
        return True

    def members(self, name: str) -> list[tuple[str, int]]:
        """Entries of ipset ``name`` with their seconds left (0: no timeout)."""
        out: list[tuple[str, int]] = []
        try:
            messages = list(self._ipset.list(name))
        except Exception as e:  # noqa: BLE001
            raise FirewallError(f"cannot list ipset {name}: {e}") from None
        for msg in messages:
            adt = msg.get_attr("IPSET_ATTR_ADT")
            if adt is None:
                continue
            for entry in adt.get_attrs("IPSET_ATTR_DATA"):
                ip = entry.get_attr("IPSET_ATTR_IP_FROM")
                addr = ip.get_attr("IPSET_ATTR_IPADDR_IPV4") or ip.get_attr("IPSET_ATTR_IPADDR_IPV6")
                cidr = entry.get_attr("IPSET_ATTR_CIDR")
                full = 32 if ":" not in addr else 128
                network = addr if cidr is None or cidr == full else f"{addr}/{cidr}"
                out.append((network, int(entry.get_attr("IPSET_ATTR_TIMEOUT") or 0)))
        return out


def _explain_open(e: Exception) -> str:
    code = getattr(e, "code", None) or (e.args[0] if e.args and isinstance(e.args[0], int) else None)
    if code == 1:
        return "cannot open the ipset netlink socket: permission denied (run as root or with CAP_NET_ADMIN)"
    if code == 22:
        return "the kernel has no ipset support (ip_set module not loaded or not built)"
    return f"cannot open the ipset netlink socket: {e}"


def detect_queues(iptables: str = "iptables", chain: str = "INSPECTOR") -> tuple[int, int] | None:
    """The queue range the installed rules use (``iptables -S chain``): ``(first, count)``, or
    None if none is installed or iptables cannot be run."""
    try:
        out = subprocess.run([iptables, "-w", "-S", chain], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_queues(out)


def parse_queues(rules: str) -> tuple[int, int] | None:
    """The first NFQUEUE target's queue range in ``iptables -S`` output (see :func:`detect_queues`)."""
    for line in rules.splitlines():
        words = line.split()
        if "--queue-balance" in words:
            first, last = words[words.index("--queue-balance") + 1].split(":")
            return int(first), int(last) - int(first) + 1
        if "--queue-num" in words:
            return int(words[words.index("--queue-num") + 1]), 1
    return None
