"""The control socket: a UNIX stream socket, one JSON request line in, one JSON reply line out.

:class:`ControlServer` listens (mode 0600, a stale socket file is replaced, a live one is an
error) and dispatches ``{"cmd": NAME, ...}`` to the handler registered for ``NAME`` with
:meth:`ControlServer.register`; ``status`` is assembled from sections that components add with
:meth:`ControlServer.add_status`.  :func:`control_request` is the client (``inspector status``,
``bans``, ``unban``).  A bad request gets ``{"ok": false, "error": ...}``, never an exception in
the service.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["ControlError", "ControlServer", "Handler", "control_request", "read_line"]

Handler = Callable[[dict[str, Any]], dict[str, Any]]
LINE_LIMIT = 65536  # bytes of a request line
REPLY_LIMIT = 1 << 30  # bytes of a reply line (a million bans is about 150 MB)
SERVE_SECONDS = 1.0  # the longest one client may hold the loop (read and reply together)


class ControlError(Exception):
    """The control socket cannot be created; the message says why."""


def read_line(conn: socket.socket, limit: int = LINE_LIMIT, deadline: float | None = None) -> bytes:
    """Read up to the first newline (at most ``limit`` bytes, or until EOF); the line without it.

    ``deadline`` (a ``time.monotonic()`` value): give up then, raising TimeoutError, however the
    peer trickles its bytes (the socket's own timeout bounds each ``recv`` only).
    """
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the other end is too slow")
            conn.settimeout(left)
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
        if b"\n" in chunk:
            break
    return b"".join(chunks).split(b"\n", 1)[0]


def clear_stale_socket(path: Path, who: str = "process") -> None:
    """Remove a UNIX socket file at ``path`` that nobody answers on (left by a previous run), so
    that it can be bound again.  Raises OSError if a live ``who`` answers on it."""
    if not path.is_socket():
        return  # nothing there, or not a socket: bind() says what is wrong
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        raise OSError(f"another {who} answers on {path}")
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    finally:
        probe.close()


class ControlServer:
    """Request dispatch, and (after :meth:`listen`) the socket that serves it."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.sections: dict[str, Callable[[], Any]] = {}
        self.sock: socket.socket | None = None
        self.path = ""
        self.register("status", self._status)

    def register(self, cmd: str, handler: Handler) -> None:
        """Answer requests ``{"cmd": cmd, ...}`` with ``handler(request)`` (a JSON-ready dict)."""
        self.handlers[cmd] = handler

    def add_status(self, name: str, section: Callable[[], Any]) -> None:
        """Add ``name: section()`` to every ``status`` reply (``name`` "" merges a dict into the top level)."""
        self.sections[name] = section

    def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        reply: dict[str, Any] = {"ok": True}
        for name, section in self.sections.items():
            if name:
                reply[name] = section()
            else:
                reply.update(section())
        return reply

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        """The reply to one request (an unknown command is an error reply)."""
        cmd = request.get("cmd") if isinstance(request, dict) else None
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        return handler(request)

    def listen(self, path: str) -> None:
        """Listen on the UNIX socket ``path`` (nothing when empty).  Raises ControlError."""
        if not path:
            return
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            clear_stale_socket(p, "inspector")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(str(p))
            os.chmod(p, 0o600)
            sock.listen(8)
            sock.setblocking(False)
        except OSError as e:
            raise ControlError(f"cannot create the control socket {p}: {e}") from None
        self.sock, self.path = sock, path

    def fileno(self) -> int:
        """The listening socket's descriptor (for select); -1 when not listening."""
        return self.sock.fileno() if self.sock is not None else -1

    def serve_one(self) -> None:
        """Accept one waiting client and answer its request (nothing if none waits)."""
        if self.sock is None:
            return
        try:
            conn, _ = self.sock.accept()
        except BlockingIOError:
            return
        with conn:
            deadline = time.monotonic() + SERVE_SECONDS
            try:
                reply = self.handle(json.loads(read_line(conn, deadline=deadline)))
            except Exception as e:  # noqa: BLE001 - a bad request gets an error reply, never stops the loop
                reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            with contextlib.suppress(OSError):
                conn.settimeout(max(0.05, deadline - time.monotonic()))
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def close(self) -> None:
        """Stop listening and remove the socket file."""
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)


def control_request(path: str, request: dict[str, Any], timeout: float = 3.0) -> dict[str, Any] | None:
    """Ask the service listening on ``path``: the reply, or None if none answers.  The whole
    exchange takes at most ``timeout`` seconds; a reply may be of any size (``REPLY_LIMIT``).
    Raises OSError on other socket errors (TimeoutError: too slow), ValueError on a reply that is
    not JSON (or was cut off)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        line = read_line(sock, REPLY_LIMIT, deadline)
    except (FileNotFoundError, ConnectionRefusedError):
        return None
    finally:
        sock.close()
    reply = json.loads(line) if line else None
    return reply if isinstance(reply, dict) else None
