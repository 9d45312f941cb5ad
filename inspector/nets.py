"""Addresses and networks: ban networks, the one whitelist, and what must never be banned.

Every path that bans (packets, logs, the MTA policy hook, the fleet, manual
bans) writes a ban as the same text: the bare address for a full prefix
(``203.0.113.7``), else CIDR (``2001:db8:1:2::/64``), so a packet ban and a log
ban of one source are one entry in the ban store and the kernel set.

:class:`Whitelist` is the one whitelist (engine, log policy, ban pipeline).
:func:`protects` says why an address must never be banned (whitelist, this
host's own addresses and, for IPv6, their /64, loopback).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
import subprocess
from collections.abc import Iterable

from .packet import format_addr

__all__ = ["Network", "Address", "LOOPBACK", "Whitelist", "mask_address", "network_text", "ban_network",
           "parse_networks", "own_addresses", "local_addresses", "protects"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
_CACHE_MAX = 65536


def mask_address(addr: bytes, prefix: int) -> bytes:
    """``addr`` (4 or 16 raw bytes) with the host bits of ``prefix`` zeroed; the length tells the family."""
    n, bits = divmod(prefix, 8)
    if n >= len(addr):
        return addr
    head = addr[:n] + (bytes([addr[n] & (0xFF00 >> bits) & 0xFF]) if bits else b"")
    return head + bytes(len(addr) - len(head))


def network_text(key: bytes, prefix: int) -> str:
    """A masked raw address as a ban network: the bare address for a full prefix, else CIDR."""
    return format_addr(key) if prefix == len(key) * 8 else f"{format_addr(key)}/{prefix}"


def ban_network(address: str, ipv6_prefix: int = 64, ipv4_prefix: int = 32) -> str:
    """The ban network covering ``address`` (an address, or a network whose first address counts):
    ``"203.0.113.7"`` for IPv4 (``/ipv4_prefix`` when shorter than 32), an IPv6 address folded to
    its ``/ipv6_prefix`` (``"2001:db8:1:2::/64"``).  Raises ValueError for anything else."""
    raw = ipaddress.ip_network(address, strict=False).network_address.packed
    prefix = ipv4_prefix if len(raw) == 4 else ipv6_prefix
    return network_text(mask_address(raw, prefix), prefix)


def parse_networks(entries: Iterable[object]) -> tuple[Network, ...]:
    """Networks (or addresses, as /32 or /128) from config values; host bits are dropped
    (``"192.0.2.7/24"`` is 192.0.2.0/24).  Raises ValueError naming the first bad entry."""
    nets = []
    for entry in entries:
        try:
            nets.append(ipaddress.ip_network(str(entry), strict=False))
        except ValueError:
            raise ValueError(f"invalid network {entry!r}") from None
    return tuple(nets)


def _as_network(n: Network | Address | str) -> Network:
    if isinstance(n, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return n
    return ipaddress.ip_network(str(n), strict=False)


class Whitelist:
    """Networks never blocked nor banned: loopback (unless ``loopback=False``) plus ``networks``.

    ``address in whitelist`` takes an address or a network in text form (a network is in it when
    its first address is); :meth:`contains_raw` takes the raw 4/16 bytes of the packet path.
    Both are cached (the cache is emptied when it holds 65,536 entries).  Raises ValueError on
    an entry that is not a network.
    """

    def __init__(self, networks: Iterable[Network | Address | str] = (), loopback: bool = True) -> None:
        nets: list[Network] = list(LOOPBACK) if loopback else []
        for n in networks:
            net = _as_network(n)
            if net not in nets:
                nets.append(net)
        self.networks = tuple(nets)
        self._v4 = tuple(n for n in nets if n.version == 4)
        self._v6 = tuple(n for n in nets if n.version == 6)
        self._known: dict[str, bool] = {}
        self._known_raw: dict[bytes, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __len__(self) -> int:
        return len(self.networks)

    def overlaps(self, network: str) -> bool:
        """Does ``network`` (text) overlap any whitelisted network?"""
        net = ipaddress.ip_network(network, strict=False)
        if net.version == 4:
            return any(net.overlaps(n) for n in self._v4)
        return any(net.overlaps(n) for n in self._v6)

    def _holds(self, addr: Address) -> bool:
        return any(addr in n for n in (self._v4 if addr.version == 4 else self._v6))

    def __contains__(self, address: object) -> bool:
        host = str(address)
        known = self._known.get(host)
        if known is None:
            if "/" in host:
                known = self._holds(ipaddress.ip_network(host, strict=False).network_address)
            else:
                known = self._holds(ipaddress.ip_address(host))
            if len(self._known) >= _CACHE_MAX:
                self._known.clear()
            self._known[host] = known
        return known

    def contains_raw(self, raw: bytes) -> bool:
        """``raw`` (4 or 16 bytes, a packet's source address) is whitelisted."""
        known = self._known_raw.get(raw)
        if known is None:
            known = bool(self.networks) and self._holds(ipaddress.ip_address(raw))
            if len(self._known_raw) >= _CACHE_MAX:
                self._known_raw.clear()
            self._known_raw[raw] = known
        return known


# -- the server's own addresses -------------------------------------------------------

def local_addresses() -> list[str]:
    """The addresses of this host's interfaces as text, in order found (best effort, never raises).

    ``ip -j addr`` when iproute2 is there; else IPv4 per interface with
    SIOCGIFADDR and IPv6 from /proc/net/if_inet6; plus, in any case, the
    source address the kernel would use towards the Internet (a UDP
    ``connect()``, which sends nothing).  Per network namespace.
    """
    found: list[str] = []
    try:
        out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=5, check=True)
        for link in json.loads(out.stdout):
            for info in link.get("addr_info", []):
                if info.get("local"):
                    found.append(info["local"])
    except (OSError, ValueError, subprocess.SubprocessError):
        found.extend(_ioctl_v4())
        found.extend(_proc_v6())
    for family, probe in ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1")):
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                found.append(s.getsockname()[0])
        except OSError:
            pass
    out_list: list[str] = []
    for a in found:
        try:
            text = str(ipaddress.ip_address(a.split("%", 1)[0]))
        except ValueError:
            continue
        if text not in out_list:
            out_list.append(text)
    return out_list


def own_addresses() -> set[Address]:
    """This host's addresses (see :func:`local_addresses`), as address objects."""
    return {ipaddress.ip_address(a) for a in local_addresses()}


def _ioctl_v4() -> list[str]:
    import fcntl

    out = []
    try:
        names = socket.if_nameindex()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for _, name in names:
                try:
                    req = struct.pack("256s", name.encode()[:15])
                    res = fcntl.ioctl(s.fileno(), 0x8915, req)  # SIOCGIFADDR
                    out.append(socket.inet_ntoa(res[20:24]))
                except OSError:
                    continue
    except OSError:
        pass
    return out


def _proc_v6() -> list[str]:
    out = []
    try:
        with open("/proc/net/if_inet6") as f:
            for row in f:
                h = row.split()[0]
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(h))))
    except (OSError, ValueError, IndexError):
        pass
    return out


def protects(address: str, whitelist: Whitelist | None = None,
             own: Iterable[Address] | None = None) -> str | None:
    """Why ``address`` (an address or a network, text) must never be banned, or None.

    ``"loopback"``, ``"whitelist"`` (it overlaps ``whitelist``), ``"own address"`` (it holds one of
    ``own``, this host's addresses; default: :func:`own_addresses`, which runs ``ip``: pass them
    in on any repeated path) or ``"own /64"`` (an IPv6 network covering the /64 of an own
    address).  Raises ValueError if ``address`` is not an address or network.
    """
    net = ipaddress.ip_network(address, strict=False)
    if any(net.version == n.version and net.overlaps(n) for n in LOOPBACK):
        return "loopback"
    if whitelist is not None and whitelist.overlaps(str(net)):
        return "whitelist"
    for addr in own_addresses() if own is None else own:
        if addr.version != net.version or addr.is_loopback:
            continue
        if addr in net:
            return "own address" if net.prefixlen == net.max_prefixlen or addr.version == 4 else "own /64"
        if addr.version == 6 and net.prefixlen < 128:
            own64 = ipaddress.ip_network(f"{addr}/64", strict=False)
            if net.overlaps(own64):
                return "own /64"
    return None
