"""The policy server: many MTA connections, many requests each, one thread.

An asyncio loop in its own thread accepts connections on a TCP address or a
UNIX socket and answers every request read by
:class:`~inspector.policy.protocol.RequestReader` with the action ``decide``
returns.  When a decision needs acting on (a ban, an event), ``act`` runs in
a worker thread *before* the reply is written, so the client is in the ipset
before the MTA ends its session; if ``act`` overruns the request deadline the
reply goes out anyway (the action still completes).

Bounds, each counted in :meth:`PolicyServer.status`:

* ``max_connections`` open connections; more are closed at once (Postfix then
  retries and falls back to ``smtpd_policy_service_default_action``);
* ``request_timeout``: from the first byte of a request to its reply, else the
  connection is closed; ``idle_timeout`` between requests;
* request size and line length (:mod:`~inspector.policy.protocol`);
* at most ``MAX_PENDING_ACTS`` decisions waiting for ``act`` (a stuck ban pipeline never grows
  memory: the answers still go out, and the drops are counted);
* only local peers running as one of ``uids`` (SO_PEERCRED on a UNIX socket,
  sock_diag or the socket table for loopback TCP), since a request can ban an
  address; they are checked before they count as open connections, so other
  local users cannot take the MTA's places.

Exim's ``${readsocket}`` half-closes after its request and reads until end of
file: the request is answered, then the connection is closed.  Any failure
inside answers ``DUNNO``: the policy service never becomes the reason mail
stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..control import clear_stale_socket
from .decide import DUNNO, Decision
from .protocol import Request, RequestReader, encode_reply
from .settings import Limits, Listen, parse_listen

__all__ = ["Limits", "Listen", "PolicyServer", "parse_listen", "peer_uid"]

LATENCY_SAMPLES = 4096
MAX_PENDING_ACTS = 1024  # decisions waiting for ``act`` (bans, events) before more are dropped, counted


def peer_uid(sock: socket.socket) -> int | None:
    """The user id of the process at the other end of a local connection (None: unknown).

    UNIX sockets: ``SO_PEERCRED`` (unix(7)).  Loopback TCP: the owner of the
    peer's socket, the one whose local end is our peer's address and whose
    remote end is ours: asked of the kernel by its address pair (sock_diag(7),
    one lookup, about 30 us), else found in ``/proc/net/tcp`` / ``tcp6``
    (proc(5), a scan of every socket of the namespace).
    """
    if sock.family == socket.AF_UNIX:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[1])
    try:
        return _diag_uid(sock)
    except _NoDiag:
        return _proc_uid(sock)


_NETLINK_SOCK_DIAG = 4  # linux/netlink.h
_SOCK_DIAG_BY_FAMILY = 20  # linux/sock_diag.h
_NLM_F_REQUEST = 1
_NLMSG_ERROR = 2
_INET_DIAG_NOCOOKIE = 0xFFFFFFFF  # linux/inet_diag.h


class _NoDiag(Exception):
    """sock_diag cannot be asked here (no NETLINK_SOCK_DIAG): scan the socket table instead."""


def _diag_uid(sock: socket.socket) -> int | None:
    """The owner of the peer's TCP socket, by one exact sock_diag lookup (no NLM_F_DUMP: the kernel
    finds the socket by its address pair, inet_diag_find_one_icsk); None if there is no such socket
    (the peer is gone).  Raises :class:`_NoDiag` if sock_diag is not available."""
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    except OSError as e:
        raise _NoDiag(str(e)) from None
    try:
        peer = sock.getpeername()
        own = sock.getsockname()
        family = sock.family

        def raw(host: str) -> bytes:
            packed = socket.inet_pton(family, host.split("%", 1)[0])
            return packed + bytes(16 - len(packed))
        # struct inet_diag_req_v2 {family, protocol, ext, pad, states; struct inet_diag_sockid id}
        sockid = (struct.pack("!HH", peer[1], own[1]) + raw(peer[0]) + raw(own[0])
                  + struct.pack("=III", 0, _INET_DIAG_NOCOOKIE, _INET_DIAG_NOCOOKIE))
        request = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF) + sockid
        message = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + request
        nl.settimeout(1.0)
        nl.sendto(message, (0, 0))
        reply = nl.recv(65536)
        length, kind = struct.unpack_from("=IH", reply)
        if kind == _NLMSG_ERROR or length < 16 + 4 + 48 + 16 or len(reply) < length:
            return None
        # struct inet_diag_msg {family, state, timer, retrans; id (48 bytes); expires, rqueue, wqueue, uid, inode}
        got = reply[16 + 4:16 + 4 + 48]
        if got[:4] != sockid[:4] or got[4:36] != sockid[4:36]:
            return None  # not the socket asked about
        return int(struct.unpack_from("=I", reply, 16 + 4 + 48 + 12)[0])
    except (OSError, ValueError, struct.error):
        return None
    finally:
        nl.close()


def _proc_uid(sock: socket.socket) -> int | None:
    """The owner of the peer's TCP socket from the socket table (a scan: the slow fallback)."""
    try:
        peer = sock.getpeername()
        own = sock.getsockname()
    except OSError:
        return None
    table = "/proc/net/tcp" if sock.family == socket.AF_INET else "/proc/net/tcp6"
    want_local = _proc_endpoint(sock.family, peer[0], peer[1])
    want_remote = _proc_endpoint(sock.family, own[0], own[1])
    try:
        with open(table, encoding="ascii") as f:
            next(f, None)
            for line in f:
                fields = line.split()
                if len(fields) > 7 and fields[1] == want_local and fields[2] == want_remote:
                    return int(fields[7])
    except (OSError, ValueError):
        return None
    return None


def _proc_endpoint(family: int, host: str, port: int) -> str:
    """An address and port as /proc/net/tcp writes them: 32-bit words in host byte order, in hex."""
    packed = socket.inet_pton(family, host.split("%", 1)[0])
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


@dataclass(eq=False)
class PolicyServer:
    """Serves policy requests; ``start()`` binds and starts the thread, ``close()`` stops it.

    ``decide(request) -> Decision`` runs on the loop and must be quick;
    ``act(decision)`` runs in a worker thread for every decision whose
    outcome is not ``dunno`` (bans, events).  ``uids``: the user ids allowed
    to ask (None: anyone who can connect).
    """

    listen: Listen
    decide: Callable[[Request], Decision]
    act: Callable[[Decision], None]
    limits: Limits = Limits()
    uids: frozenset[int] | None = None
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)  # seconds, request read -> reply written
        self.open_connections = 0
        self.address: Any = None  # what we are bound to (port 0 gives a free port)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inspector-policy-act")
        self._lookup = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inspector-policy-peer")
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._bound = False
        self._acting = 0  # decisions handed to ``act`` and not yet done
        self._checking = 0  # connections whose peer is being checked

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in a thread; raises OSError if the address cannot be bound."""
        sock = self._bind()
        self._thread = threading.Thread(target=self._run, args=(sock,), name="inspector-policy", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise OSError(f"cannot serve policy requests on {self.listen}: {self._error}")

    def _bind(self) -> socket.socket:
        sock = self._socket()
        try:
            if self.listen.kind == "unix":
                sock.bind(self.listen.path)
                os.chmod(self.listen.path, 0o666)  # who may ask is decided by the peer's uid, not the file mode
                self.address = self.listen.path
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.listen.host, self.listen.port))
                self.address = sock.getsockname()[:2]
            sock.listen(512)
            sock.setblocking(False)
            self._bound = True
        except OSError:
            sock.close()
            raise
        return sock

    def _socket(self) -> socket.socket:
        if self.listen.kind == "unix":
            path = Path(self.listen.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            clear_stale_socket(path)  # one left by a previous run; OSError if a live process answers
            return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        return socket.socket(socket.AF_INET6 if ":" in self.listen.host else socket.AF_INET, socket.SOCK_STREAM)

    def _run(self, sock: socket.socket) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            if sock.family == socket.AF_UNIX:
                server = loop.run_until_complete(asyncio.start_unix_server(self._serve, sock=sock))
            else:
                server = loop.run_until_complete(asyncio.start_server(self._serve, sock=sock))
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._server = server
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            server.close()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.close()

    def close(self) -> None:
        """Stop accepting and close every connection (MTAs then use their default action)."""
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
        self._pool.shutdown(wait=False)
        self._lookup.shutdown(wait=False)
        if self.listen.kind == "unix" and self._bound:  # never another process's socket
            with contextlib.suppress(OSError):
                os.unlink(self.listen.path)

    def status(self) -> dict[str, Any]:
        """Counts, open connections and the latency of recent requests (for ``inspector status``)."""
        for _ in range(5):  # the loop thread may change them while we copy
            try:
                samples, counts = sorted(self.latencies), dict(self.counts)
                break
            except RuntimeError:
                continue
        else:
            samples, counts = [], {}
        out: dict[str, Any] = {"listen": str(self.listen), "connections": self.open_connections, "counts": counts}
        if samples:
            out["latency_ms"] = {"p50": round(1000 * samples[len(samples) // 2], 3),
                                 "p99": round(1000 * samples[min(len(samples) - 1, len(samples) * 99 // 100)], 3),
                                 "samples": len(samples)}
        return out

    # -- one connection -------------------------------------------------------------------

    def _refuse(self, writer: asyncio.StreamWriter, why: str) -> None:
        """Close a connection the server will not serve, counted as ``refused:<why>``."""
        self.counts["refused:" + why] += 1
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts = self.counts
        counts["connections"] += 1
        # who asks first, so that connections of users who may not ask never take the MTA's places
        # (any local user can connect to a loopback port); checks waiting for the slow socket-table
        # scan are bounded too
        if self._checking >= self.limits.max_connections:
            self._refuse(writer, "checks")
            return
        self._checking += 1
        try:
            allowed = await self._allowed(writer)
        except Exception:  # noqa: BLE001 - a failed check refuses; the server goes on
            allowed = False
        finally:
            self._checking -= 1
        if not allowed:
            self._refuse(writer, "peer")
            return
        if self.open_connections >= self.limits.max_connections:
            self._refuse(writer, "capacity")
            return
        self.open_connections += 1
        try:
            await self._requests(reader, writer)
        except (ConnectionError, OSError):
            counts["connection-errors"] += 1
        except Exception:  # noqa: BLE001 - one broken connection never stops the server
            counts["errors"] += 1
        finally:
            self.open_connections -= 1
            writer.close()

    async def _allowed(self, writer: asyncio.StreamWriter) -> bool:
        if self.uids is None:
            return True
        sock = writer.get_extra_info("socket")
        if sock is None:
            return False
        if sock.family == socket.AF_UNIX:
            uid = peer_uid(sock)
        else:
            try:
                uid = _diag_uid(sock)  # one kernel lookup, on the loop; None: the peer is gone
            except _NoDiag:  # scan the socket table in a thread
                loop = asyncio.get_running_loop()
                uid = await loop.run_in_executor(self._lookup, _proc_uid, sock)
        return uid is not None and uid in self.uids

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits, counts, clock = self.limits, self.counts, self.clock
        parser = RequestReader(limits.max_line, limits.max_request, limits.max_attributes)
        started: float | None = None  # when the request being read began
        while True:
            if parser.pending:
                if started is None:
                    started = clock()
                wait = started + limits.request_timeout - clock()
                if wait <= 0:
                    counts["timeouts:request"] += 1
                    return
            else:
                started = None
                wait = limits.idle_timeout
            try:
                async with asyncio.timeout(wait):  # cheaper than wait_for: no task per read
                    data = await reader.read(65536)
            except TimeoutError:
                counts["timeouts:request" if parser.pending else "timeouts:idle"] += 1
                return
            if not data:
                last = parser.eof()
                if last is not None:
                    await self._answer(last, writer, clock() if started is None else started)
                return
            requests = parser.feed(data)
            for request in requests:
                await self._answer(request, writer, clock() if started is None else started)
                started = None
            if requests and parser.pending:
                started = clock()

    async def _answer(self, request: Request, writer: asyncio.StreamWriter, started: float) -> None:
        counts = self.counts
        begun = time.perf_counter()
        counts["requests"] += 1
        try:
            decision = self.decide(request)
        except Exception:  # noqa: BLE001 - fail open
            counts["errors:decide"] += 1
            decision = Decision(DUNNO, "error")
        counts[decision.outcome] += 1
        if decision.outcome != "dunno" and self._acting >= MAX_PENDING_ACTS:
            counts["act-dropped"] += 1  # the ban pipeline is stuck: answer, and hold no more work for it
        elif decision.outcome != "dunno":
            loop = asyncio.get_running_loop()
            self._acting += 1
            job = loop.run_in_executor(self._pool, self.act, decision)
            job.add_done_callback(self._acted)  # runs on the loop, so only the loop thread counts
            left = max(0.05, started + self.limits.request_timeout - self.clock() - 0.05)
            try:
                await asyncio.wait_for(asyncio.shield(job), left)
            except TimeoutError:
                counts["act-late"] += 1
        writer.write(encode_reply(decision.action))
        if writer.transport.get_write_buffer_size() > 65536:  # the MTA does not read its answers
            async with asyncio.timeout(self.limits.request_timeout):
                await writer.drain()
        self.latencies.append(time.perf_counter() - begun)

    def _acted(self, job: asyncio.Future[None]) -> None:
        self._acting -= 1
        if not job.cancelled() and job.exception() is not None:
            self.counts["errors:act"] += 1  # the answer went out regardless
