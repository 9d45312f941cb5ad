"""The ``[policy]`` section: where the policy service listens and how it answers.

::

    [policy]
    listen = "127.0.0.1:10040"     # or "unix:/run/inspector/policy.sock"; "" (default): off
    reply = "421 4.7.1 Service not available, closing transmission channel"
    request_timeout = 5            # seconds from a request's first byte to its answer
    idle_timeout = 600             # seconds a connection may wait between requests
    max_connections = 256
    users = ["root", "postfix", "Debian-exim"]   # who may ask ([]: anyone who can connect)

:class:`Listen`, :func:`parse_listen` and :class:`Limits` live here rather than in
:mod:`.server` (which uses them), so that reading the config imports neither asyncio nor ssl.
"""

from __future__ import annotations

import ipaddress
import pwd
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .protocol import MAX_ATTRIBUTES, MAX_LINE, MAX_REQUEST

__all__ = ["KEYS", "Limits", "Listen", "PolicySettings", "parse_listen", "parse_policy"]

DEFAULT_REPLY = "421 4.7.1 Service not available, closing transmission channel"
KEYS: dict[str, type | tuple[type, ...]] = {
    "listen": str, "reply": str, "request_timeout": (int, float), "idle_timeout": (int, float),
    "max_connections": int, "users": list,
}


@dataclass(frozen=True)
class Listen:
    """Where to listen: ``inet`` (host, port) or ``unix`` (path)."""

    kind: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """``127.0.0.1:10040``, ``[::1]:10040`` or ``unix:/run/inspector/policy.sock``; ValueError otherwise.

    A TCP address must be a loopback address: the MTA asking is on this host
    (the bans go into this host's ipset), and a request can ban any address.
    """
    text = text.strip()
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise ValueError(f"a UNIX socket path must be absolute: {text!r}")
        if len(path.encode()) > 107:
            raise ValueError(f"a UNIX socket path is at most 107 bytes: {text!r}")
        return Listen("unix", path=path)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, [V6]:PORT or unix:/PATH, not {text!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"expected an IP address before the port, not {host!r}") from None
    if not address.is_loopback:
        raise ValueError(f"listen on a loopback address (127.0.0.1, ::1) or a UNIX socket, not {host!r}: "
                         "the MTA asking must be on this host")
    return Listen("inet", host=host, port=int(port))


@dataclass(frozen=True)
class Limits:
    """The server's bounds (see the module docstring); seconds and bytes."""

    max_connections: int = 256
    request_timeout: float = 5.0
    idle_timeout: float = 600.0  # above Postfix's smtpd_policy_service_max_idle (300 s)
    max_line: int = MAX_LINE
    max_request: int = MAX_REQUEST
    max_attributes: int = MAX_ATTRIBUTES


@dataclass(frozen=True)
class PolicySettings:
    """The parsed ``[policy]`` section (``listen`` None: the policy service is off)."""

    listen: Listen | None = None
    reply: str = DEFAULT_REPLY
    limits: Limits = Limits()
    users: tuple[str, ...] = ("root", "postfix", "Debian-exim")

    def uids(self) -> frozenset[int] | None:
        """The user ids ``users`` names on this host (names unknown here are skipped); None: anyone."""
        if not self.users:
            return None
        out = set()
        for user in self.users:
            if user.isdigit():
                out.add(int(user))
                continue
            try:
                out.add(pwd.getpwnam(user).pw_uid)
            except KeyError:
                continue
        return frozenset(out)


    def unknown_users(self) -> list[str]:
        """The names in ``users`` that are no user on this host (their requests would be refused)."""
        out = []
        for user in self.users:
            if user.isdigit():
                continue
            try:
                pwd.getpwnam(user)
            except KeyError:
                out.append(user)
        return out


def parse_policy(section: dict[str, Any], fail: Callable[[str, str | None, str], Exception]) -> PolicySettings:
    """Build :class:`PolicySettings` from the ``[policy]`` table (types already checked against
    :data:`KEYS`); ``fail(table, key, message)`` makes the error that names ``file:line``."""
    out: dict[str, Any] = {}
    listen = section.get("listen", "")
    if listen:
        try:
            out["listen"] = parse_listen(listen)
        except ValueError as e:
            raise fail("policy", "listen", str(e)) from None
    if "reply" in section:
        reply = section["reply"]
        if reply[:3] not in ("421", "521") or (len(reply) > 3 and reply[3] != " ") or "\n" in reply:
            raise fail("policy", "reply", f"must be a one-line 421 or 521 reply such as {DEFAULT_REPLY!r} "
                                          "(Postfix ends the session on those only)")
        out["reply"] = reply
    limits: dict[str, Any] = {}
    for key, low, high in (("request_timeout", 0.1, 600), ("idle_timeout", 1, 86400), ("max_connections", 1, 65536)):
        if key in section:
            value = section[key]
            if isinstance(value, bool) or not low <= value <= high:
                raise fail("policy", key, f"must be between {low} and {high}, not {value!r}")
            limits[key] = value
    if limits:
        out["limits"] = Limits(**limits)
    if "users" in section:
        users = section["users"]
        if not all(isinstance(u, str) and u for u in users):
            raise fail("policy", "users", "expected a list of user names or numeric ids, such as [\"postfix\"]")
        out["users"] = tuple(users)
    return PolicySettings(**out)
