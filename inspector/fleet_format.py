"""The fleet's wire format and settings: what every host of a fleet must agree on.

Entries are flat stream fields: ``op`` (``ban``/``unban``), ``net``, ``sec``
(the duration issued), ``exp`` (absolute expiry, Unix seconds), ``reason``,
``rule``, ``origin`` (the issuing host id) and ``at`` (issue time).  A receiver
bans for ``min(sec, exp - now)``: expired entries are skipped, and a peer whose
clock runs ahead cannot stretch a ban.  Hosts need synchronised clocks (NTP).

The publisher's server-side script (:data:`PUBLISH_SCRIPT`) appends an entry and updates the
snapshot of active bans (a sorted set ``<stream>:active`` scored by expiry, details in the hash
``<stream>:detail``) in one step; :data:`PRUNE_SCRIPT` drops expired snapshot entries.  The
client threads that use them are in :mod:`inspector.fleet`.  No I/O here, so that the config
can import the settings without the client.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_BAN", "PRUNE_SCRIPT", "PUBLISH_SCRIPT", "Entry", "FleetBan", "FleetError", "FleetSettings",
           "id_text", "parse_fleet", "parse_id"]

MAX_BAN = 366 * 86400  # the longest ban a peer can ask for (seconds)

# KEYS: stream, active (zset), detail (hash); ARGV: minid, op, net, sec, exp, reason, rule, origin, at
PUBLISH_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MINID', '~', ARGV[1], '*', 'op', ARGV[2], 'net', ARGV[3],
  'sec', ARGV[4], 'exp', ARGV[5], 'reason', ARGV[6], 'rule', ARGV[7], 'origin', ARGV[8], 'at', ARGV[9])
if ARGV[2] == 'ban' then
  local cur = redis.call('ZSCORE', KEYS[2], ARGV[3])
  if (not cur) or tonumber(cur) < tonumber(ARGV[5]) then
    redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
    redis.call('HSET', KEYS[3], ARGV[3], cjson.encode({ARGV[4], ARGV[6], ARGV[7], ARGV[8], ARGV[9]}))
  end
else
  redis.call('ZREM', KEYS[2], ARGV[3])
  redis.call('HDEL', KEYS[3], ARGV[3])
end
return id
"""
# KEYS: active, detail; ARGV: now, limit -> how many expired snapshot entries were dropped
PRUNE_SCRIPT = """
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, net in ipairs(gone) do
  redis.call('ZREM', KEYS[1], net)
  redis.call('HDEL', KEYS[2], net)
end
return #gone
"""


class FleetError(ValueError):
    """A ``[fleet]`` setting that cannot be used; the message names the key."""


@dataclass(frozen=True)
class FleetSettings:
    """The ``[fleet]`` section.  ``url`` empty: the fleet is off (the default).

    ``url``: ``redis://[user:password@]host:port/db`` or ``rediss://`` (TLS; ``ca_file``,
    ``cert_file``/``key_file`` for a client certificate).  ``keep``: seconds the stream keeps
    entries (a host away longer resyncs from the snapshot).  ``min_prefix_v4``/``_v6``: a peer's
    ban wider than this is refused (a compromised peer cannot ban the Internet).
    """

    url: str = ""
    stream: str = "inspector:bans"
    host: str = ""  # this host's id; default: the host name
    keep: int = 86400
    state_file: str = ""  # default: the ban state file + ".fleet"
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    batch: int = 500  # entries per XREAD / per publish round trip
    outbox_max: int = 100_000  # bans waiting for Redis; beyond, the oldest are dropped (counted)
    min_prefix_v4: int = 8
    min_prefix_v6: int = 32
    timeout: float = 5.0  # socket timeout for Redis calls (seconds)

    @property
    def enabled(self) -> bool:
        """True when ``url`` is set."""
        return bool(self.url)

    @property
    def host_id(self) -> str:
        """This host's id in the stream: ``host``, else the host name."""
        return self.host or socket.gethostname()

    def describe(self) -> str:
        """One line for ``inspector check``: where Redis is (never the password), this host's id."""
        from urllib.parse import urlsplit

        u = urlsplit(self.url)
        where = u.path if u.scheme == "unix" else f"{u.hostname}:{u.port or 6379}{u.path or ''}"
        user = f"user {u.username}, " if u.username else ""
        return (f"{u.scheme}://{where} ({user}{'a password' if u.password else 'no password'}), host {self.host_id}, "
                f"stream {self.stream}, keep {self.keep}s, peers' bans at most /{self.min_prefix_v4} "
                f"and /{self.min_prefix_v6}")


_KEYS: dict[str, type | tuple[type, ...]] = {
    "url": str, "stream": str, "host": str, "keep": int, "state_file": str, "ca_file": str, "cert_file": str,
    "key_file": str, "batch": int, "min_prefix_v4": int, "min_prefix_v6": int, "timeout": (int, float),
    "outbox_max": int}


def parse_fleet(section: Mapping[str, Any], fail: Callable[[str | None, str], Exception]) -> FleetSettings:
    """Parse ``[fleet]``; ``fail(key, message)`` builds the error naming ``file:line``."""
    values: dict[str, Any] = {}
    for key, value in section.items():
        kind = _KEYS.get(key)
        if kind is None:
            raise fail(key, f"unknown setting (known here: {', '.join(sorted(_KEYS))})")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise fail(key, f"must be {getattr(kind, '__name__', 'a number')}, not {type(value).__name__}")
        values[key] = value
    url = values.get("url", "")
    if url and not url.startswith(("redis://", "rediss://", "unix://")):
        raise fail("url", "must start with redis://, rediss:// (TLS) or unix://")
    if url:
        why = _url_problem(url)
        if why:
            raise fail("url", why)
    for key, low, high in (("keep", 10, 366 * 86400), ("batch", 1, 10_000), ("outbox_max", 100, 10_000_000),
                           ("min_prefix_v4", 0, 32),
                           ("min_prefix_v6", 0, 128), ("timeout", 0.1, 60)):
        if key in values and not low <= values[key] <= high:
            raise fail(key, f"must be between {low} and {high}")
    if "host" in values and not values["host"].strip():
        raise fail("host", "must not be empty (leave it out for the host name)")
    return FleetSettings(**values)


def _url_problem(url: str) -> str | None:
    """Why Redis could not use ``url`` (None: it can): a host, a port 1-65535, a database number."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        return f"{url.split('@')[-1]!r}: {e}"
    if u.scheme == "unix":
        return None if u.path.startswith("/") else "unix:// needs an absolute socket path (unix:///run/redis.sock)"
    if not u.hostname:
        return "needs a host (redis://host:6379/0)"
    if port == 0:
        return "port 0 cannot be connected to"
    db = u.path.lstrip("/")
    if db and not db.isdigit():
        return f"the database after the host must be a number (redis://host:6379/0), not {db!r}"
    return None


@dataclass(frozen=True)
class FleetBan:
    """A peer's ban as it arrives: apply it for ``seconds`` (the time it has left)."""

    network: str
    seconds: int
    reason: str
    rule: str | None
    origin: str


@dataclass
class Entry:
    """One stream entry as this host publishes it (and keeps it in its outbox until sent)."""

    op: str  # "ban" | "unban"
    network: str
    seconds: int
    expires: float
    reason: str
    rule: str | None
    at: float

    def fields(self) -> dict[str, Any]:
        """The flat stream fields (see the module docstring)."""
        return {"op": self.op, "net": self.network, "sec": self.seconds, "exp": round(self.expires, 3),
                "reason": self.reason, "rule": self.rule, "at": round(self.at, 3)}


def parse_id(text: str) -> tuple[int, int]:
    """A stream entry id ``"<ms>-<seq>"`` (or ``"<ms>"``) as a comparable pair; ValueError if malformed."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def id_text(value: tuple[int, int]) -> str:
    """The pair :func:`parse_id` returns, as Redis writes it."""
    return f"{value[0]}-{value[1]}"
