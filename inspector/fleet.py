"""The fleet: bans shared between hosts through a Redis stream.

Every ban or unban this host makes is applied locally first (by the ban
pipeline), then handed to :meth:`FleetClient.on_local` (a pipeline listener),
which only puts it in a local *outbox* and wakes the publisher thread: a Redis
outage never delays or blocks a local ban.  The publisher appends each entry
with ``XADD <stream> MINID ~ <now - keep>`` (the stream is trimmed by age, Redis
>= 6.2) and keeps a *snapshot* of the active bans beside it: a sorted set
``<stream>:active`` scored by expiry with the details in the hash
``<stream>:detail``, both changed by the same server-side script as the
``XADD``, so the three never disagree.

The subscriber thread reads the stream with ``XREAD BLOCK`` from the last entry
id it has seen (kept in the fleet state file with the outbox), skips its own
entries, and applies each peer's ban with the time it has left through the
injected ``issue`` (the ban pipeline with ``path="fleet"``, ``origin=<host>``);
the pipeline refuses what the local whitelist or the host's own addresses
protect, and those are counted as refused.  Bans applied from the fleet are
never published again.  When its id is older than what the stream still holds
(``XINFO STREAM``: the oldest entry left is newer than its id, Redis >= 7.0), when it has no id
yet, or when Redis lost the stream (an id beyond ``last-generated-id``), it
resyncs from the snapshot: only bans whose expiry is still ahead come back.

The entry fields, the server-side scripts and the ``[fleet]`` settings are in
:mod:`inspector.fleet_format`.

Off by default (no ``[fleet] url``): nothing is imported, started or called.

Why this module stays above ~400 lines: it is one class, :class:`FleetClient`, whose publisher
and subscriber threads share the outbox, the stream position, the Redis connection and the
counters under one lock; split over modules, that lock's invariants would be too.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from .fleet_format import (
    MAX_BAN,
    PRUNE_SCRIPT,
    PUBLISH_SCRIPT,
    Entry,
    FleetBan,
    FleetError,
    FleetSettings,
    id_text,
    parse_fleet,
    parse_id,
)
from .fsutil import atomic_write
from .respond.bans import Ban

__all__ = ["FleetBan", "FleetClient", "FleetError", "FleetSettings", "attach_fleet", "parse_fleet"]

STATE_VERSION = 1  # of the fleet state file (last id, outbox)
_ID_ZERO = (0, 0)


class FleetClient:
    """Publisher and subscriber threads around one Redis connection pool.

    ``issue(FleetBan, now) -> bool`` applies a peer's ban (False: refused, e.g. whitelisted);
    ``lift(network, now) -> bool`` lifts one.  Both are called from the subscriber thread and
    must be thread-safe (the ban pipeline is).  Register :meth:`on_local` as a pipeline
    listener.  ``redis_factory`` (tests) replaces ``redis.Redis.from_url``.  ``peer_bans()``: the
    networks banned here on a peer's word (their origin is another host); a resync after entries
    were trimmed lifts those the snapshot no longer holds (their unban was trimmed away).
    """

    def __init__(self, settings: FleetSettings, state_path: Path | None,
                 issue: Callable[[FleetBan, float], bool], lift: Callable[[str, float], bool],
                 emit: Callable[[dict[str, Any]], None], clock: Callable[[], float] = time.time,
                 redis_factory: Callable[[], Any] | None = None,
                 peer_bans: Callable[[], Iterable[str]] | None = None) -> None:
        self.settings = settings
        self._peer_bans = peer_bans
        self.host = settings.host_id
        self.state_path = state_path
        self._issue = issue
        self._lift = lift
        self._emit = emit
        self.clock = clock
        self._factory = redis_factory or self._connect
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._applying = threading.local()
        self._outbox: OrderedDict[str, Entry] = OrderedDict()
        self._last_id: tuple[int, int] | None = None  # None: never synced: resync from the snapshot
        self._dirty = False
        self._threads: list[threading.Thread] = []
        self._redis: Any = None
        self._pub: Any = None
        self._prune: Any = None
        self.connected = False
        self.lag = 0.0
        self.counts: dict[str, int] = {"published": 0, "received": 0, "refused": 0, "lifted": 0, "expired": 0,
                                       "invalid": 0, "resyncs": 0, "errors": 0, "too-wide": 0, "outbox-dropped": 0}
        self.last_error = ""
        keys = settings.stream
        self._keys = (keys, f"{keys}:active", f"{keys}:detail")
        self._load_state()

    # -- the local side -------------------------------------------------------------

    def on_local(self, kind: str, item: Ban | str) -> None:
        """Pipeline listener: queue a local ban (``"ban"``, Ban) or unban (``"unban"``, network).

        Constant time, no I/O: the publisher thread sends it.  Bans that came from the fleet
        (``path == "fleet"`` or another origin) and anything done while applying a peer's entry
        are not published again.
        """
        if getattr(self._applying, "on", False):
            return
        now = self.clock()
        if kind == "ban" and not isinstance(item, str):
            if item.path == "fleet" or item.origin not in (None, self.host):
                return
            entry = Entry("ban", item.network, int(item.seconds), now + int(item.seconds), item.reason,
                           item.rule, now)
        elif kind == "unban" and isinstance(item, str):
            entry = Entry("unban", item, 0, now, "manual", None, now)
        else:
            return
        with self._lock:
            self._outbox.pop(entry.network, None)  # the newest word on a network replaces an unsent older one
            self._outbox[entry.network] = entry
            if len(self._outbox) > self.settings.outbox_max:
                self._outbox.popitem(last=False)  # still banned here; only the peers miss it
                self.counts["outbox-dropped"] += 1
            self._dirty = True
        self._wake.set()

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the publisher and subscriber threads (they connect, and reconnect, by themselves)."""
        for name, target in (("fleet-publish", self._publish_loop), ("fleet-subscribe", self._subscribe_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def close(self, timeout: float = 3.0) -> None:
        """Stop both threads (a last publish attempt first) and save the state."""
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout)
        self._threads = []
        self.save(force=True)
        if self._redis is not None:
            with contextlib.suppress(Exception):  # closing a broken connection
                self._redis.close()

    def status(self) -> dict[str, Any]:
        """The ``fleet`` section of ``inspector status``."""
        with self._lock:
            depth = len(self._outbox)
        return {"enabled": True, "host": self.host, "stream": self.settings.stream, "connected": self.connected,
                "last_id": id_text(self._last_id) if self._last_id is not None else None,
                "lag": round(self.lag, 3), "outbox": depth, **self.counts,
                **({"last_error": self.last_error} if self.last_error else {})}

    # -- state --------------------------------------------------------------------------

    def _load_state(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            data = json.loads(self.state_path.read_text(encoding="utf-8"))
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown version {data.get('version')!r}")
            last = data.get("last_id")
            self._last_id = parse_id(last) if isinstance(last, str) else None
            for e in data.get("outbox", []):
                entry = Entry(str(e["op"]), str(e["net"]), int(e["sec"]), float(e["exp"]), str(e["reason"]),
                               e.get("rule"), float(e["at"]))
                self._outbox[entry.network] = entry
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            self._emit({"event": "error", "what": "fleet-state", "error": f"{self.state_path}: {e}; starting afresh"})

    def save(self, force: bool = False) -> None:
        """Write the last id and the outbox (atomically) if they changed."""
        if self.state_path is None or not (self._dirty or force):
            return
        with self._lock:
            outbox = [{"op": e.op, "net": e.network, "sec": e.seconds, "exp": e.expires, "reason": e.reason,
                       "rule": e.rule, "at": e.at} for e in self._outbox.values()]
            last = id_text(self._last_id) if self._last_id is not None else None
            self._dirty = False
        try:
            atomic_write(self.state_path, json.dumps({"version": STATE_VERSION, "host": self.host, "last_id": last,
                                                      "outbox": outbox}, separators=(",", ":")))
        except OSError as e:
            self._dirty = True
            self._error(f"cannot save {self.state_path}: {e}")

    # -- Redis ----------------------------------------------------------------------------

    def _connect(self) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        s = self.settings
        # no client-side retries: the threads retry with their own backoff, and close() stays prompt
        kw: dict[str, Any] = {"socket_timeout": s.timeout + 2.0, "socket_connect_timeout": s.timeout,
                              "decode_responses": True, "health_check_interval": 30, "retry": Retry(NoBackoff(), 0)}
        if s.url.startswith("rediss://"):
            if s.ca_file:
                kw["ssl_ca_certs"] = s.ca_file
            if s.cert_file:
                kw["ssl_certfile"] = s.cert_file
            if s.key_file:
                kw["ssl_keyfile"] = s.key_file
        return redis.Redis.from_url(s.url, **kw)

    def _client(self) -> Any:
        with self._lock:
            if self._redis is None:
                self._redis = self._factory()
                self._pub = self._redis.register_script(PUBLISH_SCRIPT)
                self._prune = self._redis.register_script(PRUNE_SCRIPT)
            return self._redis

    def _set_connected(self, up: bool, error: str = "") -> None:
        if up != self.connected:
            self.connected = up
            self._emit({"event": "fleet", "time": round(self.clock(), 3), "connected": up,
                        **({"error": error} if error else {})})
        if error:
            self._error(error)

    def _error(self, text: str) -> None:
        self.counts["errors"] += 1
        self.last_error = text

    # -- publisher ------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        backoff = 0.2
        next_prune = 0.0
        next_save = 0.0
        while True:
            stopping = self._stop.is_set()
            self._wake.wait(1.0)
            self._wake.clear()
            if stopping and not self.connected:
                self.save()  # no last attempt against a Redis that is down: stopping stays prompt
                return
            try:
                self._publish_all()
                now = self.clock()
                if now >= next_prune:
                    next_prune = now + 60
                    self._client()
                    self._prune(keys=self._keys[1:], args=[now, 10_000])
                backoff = 0.2
            except Exception as e:  # noqa: BLE001 - redis raises many kinds; all mean "try again later"
                self._set_connected(False, f"publish: {type(e).__name__}: {e}")
                if not stopping:
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, 5.0)
            now = self.clock()
            if now >= next_save:
                # a long outage can leave a big outbox: write it less often then
                next_save = now + (1.0 if len(self._outbox) < 10_000 else 10.0)
                self.save()
            if stopping:
                return

    def _publish_all(self) -> None:
        while True:
            with self._lock:
                batch = list(self._outbox.values())[: self.settings.batch]
            if not batch:
                return
            redis = self._client()
            now = self.clock()
            minid = f"{max(0, int((now - self.settings.keep) * 1000))}-0"
            pipe = redis.pipeline(transaction=False)
            sent = []
            for e in batch:
                if e.op == "ban" and e.expires <= now:
                    continue  # expired while waiting: it never goes out
                self._pub(keys=self._keys, args=[minid, e.op, e.network, e.seconds, round(e.expires, 3), e.reason,
                                                 e.rule or "", self.host, round(e.at, 3)], client=pipe)
                sent.append(e)
            if sent:
                pipe.execute()
            self._set_connected(True)
            with self._lock:
                for e in batch:
                    if self._outbox.get(e.network) is e:
                        del self._outbox[e.network]
                self._dirty = True
            self.counts["published"] += len(sent)

    # -- subscriber -----------------------------------------------------------------------

    def _subscribe_loop(self) -> None:
        backoff = 0.2
        checked = False
        while not self._stop.is_set():
            try:
                redis = self._client()
                if not checked:
                    self._check_position(redis)
                    checked = True
                assert self._last_id is not None
                reply = redis.xread({self._keys[0]: id_text(self._last_id)}, count=self.settings.batch, block=1000)
                self._set_connected(True)
                backoff = 0.2
                if not reply:
                    self.lag = 0.0
                    continue
                entries = reply[0][1]
                for entry_id, fields in entries:
                    self._apply(fields)
                    with self._lock:
                        self._last_id = parse_id(entry_id)
                        self._dirty = True
                self.lag = max(0.0, self.clock() - parse_id(entries[-1][0])[0] / 1000.0)
                if len(entries) < self.settings.batch:
                    self.lag = 0.0
            except Exception as e:  # noqa: BLE001 - a lost connection: check the position again after it
                checked = False
                self._set_connected(False, f"subscribe: {type(e).__name__}: {e}")
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _check_position(self, redis: Any) -> None:
        """On (re)connect: resync from the snapshot if the stream no longer holds our place.

        A host that stayed connected keeps its id on the newest entry, which trimming never
        removes; so an oldest entry newer than our id means we were away while entries we
        had not read were trimmed.
        """
        import redis as redis_module

        try:
            info = redis.xinfo_stream(self._keys[0])
        except redis_module.ResponseError:
            info = None  # no stream yet (or Redis came back empty)
        if info is None:
            last = deleted = _ID_ZERO
            first = None
        else:
            last = parse_id(str(info.get("last-generated-id", "0-0")))
            deleted = parse_id(str(info.get("max-deleted-entry-id", "0-0")))
            head = info.get("recorded-first-entry-id") or (info.get("first-entry") or ("",))[0]
            first = parse_id(str(head)) if info.get("length") and head else None
        mine = self._last_id
        why = None
        if mine is None:
            why = "first start"
        elif mine > last:
            why = "the stream is behind this host's position (Redis lost its data)"
        elif deleted > mine or (first is None and last > mine) or (first is not None and first > mine):
            # trimming (MINID) does not move max-deleted-entry-id: the oldest entry left tells
            why = "entries this host has not read were trimmed"
        if why is None:
            return
        self._resync(redis, last, why, lift_missing=why.startswith("entries this host has not read"))

    def _resync(self, redis: Any, position: tuple[int, int], why: str, lift_missing: bool = False) -> None:
        """Apply the snapshot's active bans; with ``lift_missing`` also lift the peers' bans held
        here that it no longer holds (lifted, or expired, while their entries were trimmed).
        Never after Redis lost its data: an empty snapshot then says nothing about them."""
        now = self.clock()
        applied = 0
        start = 0
        page = 1000
        held: set[str] = set()
        while True:
            nets = redis.zrangebyscore(self._keys[1], f"({now}", "+inf", start=start, num=page, withscores=True)
            if not nets:
                break
            held.update(n for n, _ in nets)
            details = redis.hmget(self._keys[2], [n for n, _ in nets])
            for (net, expires), raw in zip(nets, details, strict=True):
                if raw is None:
                    continue
                try:
                    sec, reason, rule, origin, at = json.loads(raw)
                except (ValueError, TypeError):
                    self.counts["invalid"] += 1
                    continue
                applied += self._apply({"op": "ban", "net": net, "sec": sec, "exp": expires, "reason": reason,
                                        "rule": rule, "origin": origin, "at": at})
            start += len(nets)
            if len(nets) < page:
                break
        lifted = 0
        if lift_missing and self._peer_bans is not None:
            for network in list(self._peer_bans()):
                if network not in held:
                    lifted += self._apply({"op": "unban", "net": network, "origin": "(resync)"})
        with self._lock:
            self._last_id = position
            self._dirty = True
        self.counts["resyncs"] += 1
        self._emit({"event": "fleet-resync", "time": round(now, 3), "why": why, "applied": applied,
                    "lifted": lifted, "position": id_text(position)})

    def _apply(self, fields: Mapping[str, Any]) -> int:
        """Apply one peer entry; 1 if a ban or unban took effect."""
        origin = str(fields.get("origin", ""))
        if origin == self.host:
            return 0
        try:
            op = str(fields["op"])
            net = ipaddress.ip_network(str(fields["net"]), strict=False)
            network = str(net) if net.prefixlen < net.max_prefixlen else str(net.network_address)
            now = self.clock()
            if op == "unban":
                with _Flag(self._applying):
                    try:
                        self._lift(network, now)
                    except Exception as e:  # noqa: BLE001 - a kernel error must not stall the stream on this entry
                        self._error(f"unban {network} from {origin}: {type(e).__name__}: {e}")
                        return 0
                self.counts["lifted"] += 1
                return 1
            if op != "ban":
                raise ValueError(f"unknown op {op!r}")
            sec, exp = float(fields["sec"]), float(fields["exp"])
            if not (math.isfinite(sec) and math.isfinite(exp)):
                raise ValueError("sec and exp must be finite numbers")
            left = math.ceil(min(sec, exp - now, MAX_BAN))
            rule = str(fields.get("rule") or "")[:200] or None
            reason = str(fields.get("reason") or "fleet")[:64]
        except (KeyError, ValueError, TypeError, OverflowError) as e:
            self.counts["invalid"] += 1
            self.last_error = f"invalid entry from {origin or '?'}: {e}"
            return 0
        if left <= 0:
            self.counts["expired"] += 1
            return 0
        if net.prefixlen < (self.settings.min_prefix_v4 if net.version == 4 else self.settings.min_prefix_v6):
            self.counts["too-wide"] += 1
            self.counts["refused"] += 1
            self._emit({"event": "ban-refused", "time": round(now, 3), "network": network, "path": "fleet",
                        "origin": origin, "why": "wider than [fleet] min_prefix"})
            return 0
        with _Flag(self._applying):
            try:
                ok = self._issue(FleetBan(network, int(left), reason, rule, origin[:64]), now)
            except Exception as e:  # noqa: BLE001 - as above: count it and read on
                self._error(f"ban {network} from {origin}: {type(e).__name__}: {e}")
                return 0
        self.counts["received" if ok else "refused"] += 1
        return 1 if ok else 0


def attach_fleet(host: Any) -> FleetClient | None:
    """Wire the fleet into a service host (:class:`inspector.service.host.Host`) if ``[fleet] url``
    is set: peers' bans through its ban pipeline (``path="fleet"``), the client as a listener of
    that pipeline and as the ``fleet`` component (started with the host, ``status`` section).
    Returns None, having done nothing, when the fleet is off."""
    settings = host.config.fleet
    if not settings.enabled:
        return None
    pipeline = host.bans
    store = pipeline.store
    state = Path(settings.state_file or f"{host.config.service.state_file}.fleet")

    def issue(ban: FleetBan, now: float) -> bool:
        current = store.records.get(ban.network) if store is not None else None
        if current is not None and current.expires >= now + ban.seconds:
            return True  # already banned here for as long or longer: a shorter kernel timeout would undo that
        return bool(pipeline.issue(Ban(ban.network, ban.seconds, ban.reason, ban.rule, "fleet", ban.origin), now))

    def lift(network: str, now: float) -> bool:
        return bool(pipeline.lift(network, now, "fleet"))

    def peer_bans() -> list[str]:
        now = host.clock()
        return [r.network for r in pipeline.active(now) if r.origin and r.origin != settings.host_id]

    client = FleetClient(settings, state, issue, lift, host.events.emit, host.clock, peer_bans=peer_bans)
    pipeline.add_listener(client.on_local)
    host.add_component("fleet", client)
    return client


class _Flag:
    """Marks the current thread as applying a peer's entry (its listeners must not publish)."""

    def __init__(self, local: threading.local) -> None:
        self.local = local

    def __enter__(self) -> None:
        self.local.on = True

    def __exit__(self, *exc: object) -> None:
        self.local.on = False
