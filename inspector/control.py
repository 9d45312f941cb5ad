"""The control socket: a UNIX stream socket, one JSON request line in, JSON lines out.

:class:`ControlServer` listens (mode 0600, or 0660 for the ``[files]`` group; a stale socket
file is replaced, a live one is an error) and dispatches ``{"cmd": NAME, ...}`` to the handler
registered for ``NAME`` with :meth:`ControlServer.register`; ``status`` is assembled from
sections that components add with :meth:`ControlServer.add_status`.  :func:`control_request`
and :func:`control_stream` are the client (``inspector status``, ``bans``, ``unban``).  A bad
request gets ``{"ok": false, "error": ...}``, never an exception in the service.

It never blocks the packet path: it serves from its own thread (:meth:`ControlServer.start`),
with non-blocking sockets multiplexed by :mod:`selectors`, and bounds what a local client can
hold: a request line of at most ``LINE_LIMIT`` bytes, ``REQUEST_DEADLINE`` seconds to send it,
``IDLE_DEADLINE`` seconds without progress while a reply is read, at most ``MAX_CLIENTS``
connections at once (one more is told "busy" and closed).  Handlers run in that thread, so
they must be thread-safe (the ban pipeline is).

Replies of any size: a handler registered with :meth:`ControlServer.register_stream` returns a
header and an iterable of items; they go out as the header line (``"stream": NAME``), one line
per item, and a last line ``{"end": true, "count": N}`` -- produced lazily, as the client
reads, so a million bans never sit in memory as one text.

Over 400 lines, on purpose: the server, the client and the wire format (request line, reply
lines, the stream framing and its limits) stay in one module, so the two ends cannot drift apart,
and ``status``/``admin`` import only this module, never the service.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from .perms import FilePolicy, NeedsRoot, needs_root_message

__all__ = ["ControlError", "ControlServer", "Handler", "StreamHandler", "clear_stale_socket", "control_request",
           "control_stream", "REPLY_LIMIT", "SERVE_SECONDS",
           "read_line", "LINE_LIMIT", "MAX_CLIENTS", "REQUEST_DEADLINE", "IDLE_DEADLINE"]

Handler = Callable[[dict[str, Any]], dict[str, Any]]
StreamHandler = Callable[[dict[str, Any]], tuple[dict[str, Any], Iterable[dict[str, Any]]]]
LINE_LIMIT = 65536  # bytes of a request line
REPLY_LINE_LIMIT = 1 << 28  # bytes of one reply line the client accepts (a status with many workers)
MAX_CLIENTS = 16  # connections served at once; one more is refused ("busy")
REQUEST_DEADLINE = 5.0  # seconds a client has to send its request line
IDLE_DEADLINE = 10.0  # seconds a reply may wait for the client to read on
CHUNK = 1 << 16  # bytes produced ahead of the client while streaming
REPLY_LIMIT = REPLY_LINE_LIMIT
SERVE_SECONDS = 1.0  # serve_one(): the longest one client may hold the caller (read and reply together)


class ControlError(Exception):
    """The control socket cannot be created; the message says why."""


def read_line(conn: socket.socket, limit: int = LINE_LIMIT, deadline: float | None = None) -> bytes:
    """Read up to the first newline (at most ``limit`` bytes, or until EOF); the line without it.

    ``deadline`` (a ``time.monotonic()`` value): give up then, raising TimeoutError, however the
    peer trickles its bytes (the socket's own timeout bounds each ``recv`` only).
    """
    buf = bytearray()
    while b"\n" not in buf and len(buf) < limit:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the other end is too slow")
            conn.settimeout(left)
        chunk = conn.recv(1 << 16)
        if not chunk:
            break
        buf += chunk
    return bytes(buf.split(b"\n", 1)[0])


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class _Client:
    """One connection: reading its request, then writing its reply."""

    def __init__(self, conn: socket.socket, now: float) -> None:
        self.conn = conn
        self.inbox = bytearray()
        self.out = bytearray()
        self.items: Iterator[bytes] | None = None  # the rest of a streamed reply
        self.deadline = now + REQUEST_DEADLINE
        self.replying = False

    def fill(self) -> None:
        """Produce streamed lines until ``CHUNK`` bytes wait (or the stream ends)."""
        while self.items is not None and len(self.out) < CHUNK:
            try:
                self.out += next(self.items)
            except StopIteration:
                self.items = None


def clear_stale_socket(path: Path, who: str = "process") -> None:
    """Remove a UNIX socket file at ``path`` that nobody answers on (left by a previous run), so
    that it can be bound again.  Raises OSError if a live ``who`` answers on it."""
    if not path.is_socket():
        return  # nothing there, or not a socket: bind() says what is wrong
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        raise OSError(f"another {who} answers on {path}")
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    finally:
        probe.close()


class ControlServer:
    """Request dispatch, and (after :meth:`listen` and :meth:`start`) the socket serving it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.handlers: dict[str, Handler] = {}
        self.streams: dict[str, StreamHandler] = {}
        self.sections: dict[str, Callable[[], Any]] = {}
        self.sock: socket.socket | None = None
        self.path = ""
        self.clock = clock
        self.counts: dict[str, int] = {"requests": 0, "busy": 0, "too-long": 0, "timeouts": 0, "errors": 0}
        self._selector: selectors.BaseSelector | None = None
        self._clients: dict[int, _Client] = {}
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._stopping = False
        self.register("status", self._status)

    # -- dispatch -------------------------------------------------------------------

    def register(self, cmd: str, handler: Handler) -> None:
        """Answer requests ``{"cmd": cmd, ...}`` with ``handler(request)`` (a JSON-ready dict)."""
        self.handlers[cmd] = handler

    def register_stream(self, cmd: str, handler: StreamHandler) -> None:
        """Answer ``{"cmd": cmd, ...}`` with a header and items (see the module docstring)."""
        self.streams[cmd] = handler

    def add_status(self, name: str, section: Callable[[], Any]) -> None:
        """Add ``name: section()`` to every ``status`` reply (``name`` "" merges a dict into the top level)."""
        self.sections[name] = section

    def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        for attempt in range(3):  # the packet thread may change a dict a section reads: try again
            try:
                reply: dict[str, Any] = {"ok": True}
                for name, section in self.sections.items():
                    if name:
                        reply[name] = section()
                    else:
                        reply.update(section())
                reply["control"] = dict(self.counts)
                return reply
            except RuntimeError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to one request (an unknown command is an error reply); a streamed reply is
        collected into one dict (under the command's name) -- for callers in the service, not for huge lists."""
        cmd = request.get("cmd") if isinstance(request, dict) else None
        if isinstance(cmd, str) and cmd in self.streams:
            header, items = self.streams[cmd](request)
            return {**header, cmd: list(items)}
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        return handler(request)

    def _reply(self, raw: bytes) -> tuple[bytes, Iterator[bytes] | None]:
        """The first bytes of the reply to the request line ``raw``, and the streamed rest."""
        try:
            request = json.loads(raw)
            cmd = request.get("cmd") if isinstance(request, dict) else None
            if isinstance(cmd, str) and cmd in self.streams:
                header, items = self.streams[cmd](request)
                return _line({**header, "stream": cmd}), self._stream_lines(items)
            return _line(self.handle(request)), None
        except Exception as e:  # noqa: BLE001 - a bad request gets an error reply, never stops the service
            self.counts["errors"] += 1
            return _line({"ok": False, "error": f"{type(e).__name__}: {e}"}), None

    @staticmethod
    def _stream_lines(items: Iterable[dict[str, Any]]) -> Iterator[bytes]:
        count = 0
        for item in items:
            count += 1
            yield _line(item)
        yield _line({"end": True, "count": count})

    # -- the socket ---------------------------------------------------------------------

    def listen(self, path: str, policy: FilePolicy | None = None) -> None:
        """Listen on the UNIX socket ``path`` (nothing when empty), with the mode and group of
        ``policy`` (:mod:`inspector.perms`; default 0600).  Raises ControlError."""
        if not path:
            return
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            clear_stale_socket(p, "inspector")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(p))
            policy = policy or FilePolicy()
            policy.enforce_path(p, policy.socket_mode)
            sock.listen(64)
            sock.setblocking(False)
        except OSError as e:
            raise ControlError(f"cannot create the control socket {p}: {e}") from None
        self.sock, self.path = sock, path

    def fileno(self) -> int:
        """The listening socket's descriptor; -1 when not listening."""
        return self.sock.fileno() if self.sock is not None else -1

    def start(self) -> None:
        """Serve from a thread of its own (nothing when not listening)."""
        if self.sock is None or self._thread is not None:
            return
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._serve, name="inspector-control", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        selector = self._selector
        assert selector is not None and self.sock is not None
        while not self._stopping:
            for key, mask in selector.select(timeout=0.5):
                if key.fileobj is self.sock:
                    self._accept()
                elif key.fileobj == self._wake_r:
                    with contextlib.suppress(OSError):
                        os.read(self._wake_r, 512)
                else:
                    client = self._clients.get(key.fd)
                    if client is not None:
                        self._service(client, mask)
            now = self.clock()
            for client in [c for c in self._clients.values() if now > c.deadline]:
                self.counts["timeouts"] += 1
                self._drop(client)

    def _accept(self) -> None:
        assert self.sock is not None and self._selector is not None
        for _ in range(MAX_CLIENTS):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(self._clients) >= MAX_CLIENTS:
                self.counts["busy"] += 1
                with contextlib.suppress(OSError):
                    conn.setblocking(False)
                    conn.send(_line({"ok": False, "error": f"busy: {MAX_CLIENTS} clients are being served"}))
                conn.close()
                continue
            conn.setblocking(False)
            client = _Client(conn, self.clock())
            self._clients[conn.fileno()] = client
            self._selector.register(conn, selectors.EVENT_READ, None)

    def _service(self, client: _Client, mask: int) -> None:
        if not client.replying and mask & selectors.EVENT_READ:
            try:
                chunk = client.conn.recv(LINE_LIMIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._drop(client)
                return
            client.inbox += chunk
            if b"\n" in client.inbox or not chunk:
                raw = bytes(client.inbox.split(b"\n", 1)[0])
                self._answer(client, raw)
            elif len(client.inbox) > LINE_LIMIT:
                self.counts["too-long"] += 1
                client.replying = True
                client.out += _line({"ok": False, "error": f"request longer than {LINE_LIMIT} bytes"})
                self._want_write(client)
            return
        if client.replying and mask & selectors.EVENT_WRITE:
            self._write(client)

    def _answer(self, client: _Client, raw: bytes) -> None:
        self.counts["requests"] += 1
        client.replying = True
        first, rest = self._reply(raw)
        client.out += first
        client.items = rest
        client.fill()
        self._want_write(client)
        self._write(client)

    def _want_write(self, client: _Client) -> None:
        assert self._selector is not None
        client.deadline = self.clock() + IDLE_DEADLINE
        with contextlib.suppress(KeyError, ValueError):
            self._selector.modify(client.conn, selectors.EVENT_WRITE, None)

    def _write(self, client: _Client) -> None:
        while True:
            if not client.out:
                client.fill()
                if not client.out:
                    self._drop(client)  # the whole reply is out
                    return
            try:
                sent = client.conn.send(client.out)
            except (BlockingIOError, InterruptedError):
                return  # the client reads slowly: wait for it to be writable again
            except OSError:
                self._drop(client)
                return
            del client.out[:sent]
            client.deadline = self.clock() + IDLE_DEADLINE

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client.conn.fileno(), None)
        if self._selector is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(client.conn)
        client.conn.close()

    def serve_one(self) -> None:
        """Accept one waiting client and answer it in the caller's thread, within ``SERVE_SECONDS``
        (for a caller with a loop of its own; the service uses :meth:`start`).  Nothing if none waits."""
        if self.sock is None:
            return
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        with conn:
            deadline = time.monotonic() + SERVE_SECONDS
            conn.setblocking(True)
            try:
                first, rest = self._reply(read_line(conn, LINE_LIMIT, deadline))
            except OSError as e:
                first, rest = _line({"ok": False, "error": f"{type(e).__name__}: {e}"}), None
            with contextlib.suppress(OSError):
                conn.settimeout(max(0.05, deadline - time.monotonic()))
                conn.sendall(first)
                for line in rest or ():
                    conn.sendall(line)

    def close(self) -> None:
        """Stop serving, close every connection, remove the socket file."""
        self._stopping = True
        if self._thread is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")
            self._thread.join(5)
            self._thread = None
        for client in list(self._clients.values()):
            self._drop(client)
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def _connect(path: str, timeout: float) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        return None
    except PermissionError:
        sock.close()
        raise NeedsRoot(needs_root_message("cannot ask the running service on", path)) from None
    except OSError:
        sock.close()
        raise
    return sock


def control_stream(path: str, request: dict[str, Any],
                   timeout: float = 10.0) -> tuple[dict[str, Any], Iterator[dict[str, Any]]] | None:
    """Ask the service on ``path``: the reply's first line and an iterator over the items of a
    streamed reply (empty for a plain one), read as they are consumed; None if none answers.
    Raises :class:`~inspector.perms.NeedsRoot` without permission, OSError on other socket
    errors (a timeout: ``timeout`` seconds without data), ValueError on a reply that is not JSON
    or a stream that ends early."""
    sock = _connect(path, timeout)
    if sock is None:
        return None
    reader = sock.makefile("rb", buffering=1 << 16)
    try:
        sock.sendall(json.dumps(request).encode() + b"\n")
        first = reader.readline(REPLY_LINE_LIMIT)
    except BaseException:
        reader.close()
        sock.close()
        raise
    if not first:
        reader.close()
        sock.close()
        return None
    try:
        header = json.loads(first)
        if not isinstance(header, dict):
            raise ValueError("the control socket's reply is not a JSON object")
    except ValueError:
        reader.close()
        sock.close()
        raise
    if not header.get("stream"):
        reader.close()
        sock.close()
        return header, iter(())

    def items() -> Iterator[dict[str, Any]]:
        try:
            for raw in iter(lambda: reader.readline(REPLY_LINE_LIMIT), b""):
                item = json.loads(raw)
                if isinstance(item, dict) and item.get("end") is True and "count" in item:
                    return
                yield item
            raise ValueError("the service's reply ended early (no end line)")
        finally:
            reader.close()
            sock.close()
    return header, items()


def control_request(path: str, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any] | None:
    """Ask the service listening on ``path``: the reply, or None if none answers (a streamed
    reply's items are collected into a list under the key the header's ``stream`` names, e.g.
    ``bans``).  Raises :class:`~inspector.perms.NeedsRoot`
    without permission, OSError on other socket errors, ValueError on a reply that is not JSON."""
    answer = control_stream(path, request, timeout)
    if answer is None:
        return None
    header, items = answer
    if header.get("stream"):
        return {**header, str(header["stream"]): list(items)}
    return header
