"""Client actions, run inside the client namespace: ``python client.py '<json list of actions>'``.

Standard library only.  Every socket has a timeout and every action a bounded
number of steps.  Prints one JSON list of results (one object per action).
Times are CLOCK_MONOTONIC, which all network namespaces share, so they compare
with the server's and the watcher's.

Actions (``op``):

* ``smtp``: one SMTP session from ``src``: EHLO, MAIL FROM, each RCPT TO,
  DATA with a body of ``body_size`` bytes (``end_apart``: the end-of-data line sent in a
  segment of its own), a second MAIL/RCPT transaction when ``second_rcpts`` is given,
  QUIT.  ``split`` = [rcpt index, byte
  offset] sends that RCPT line in two segments (TCP_NODELAY) with
  ``split_pause`` seconds between them.  The *offending* time is taken just
  before the last segment of the last RCPT is sent.
* ``connect``: a TCP connection from ``src``; reads a banner if ``banner`` and
  optionally sends ``send`` and reads the echo.
* ``sleep``: pause ``seconds`` (bounded to 5).
"""

from __future__ import annotations

import json
import socket
import sys
import time

mono = time.monotonic


class Closed(Exception):
    """The peer closed the connection (EOF)."""


def _family(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def _connect(src: str, dst: str, port: int, timeout: float) -> socket.socket:
    s = socket.socket(_family(dst), socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if src:
            s.bind((src, 0))
        s.connect((dst, port))
    except BaseException:
        s.close()
        raise
    return s


def _error_name(e: BaseException) -> str:
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, Closed):
        return "closed"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, BrokenPipeError):
        return "broken-pipe"
    return f"{type(e).__name__}: {e}"


class Lines:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def reply(self) -> tuple[int, str]:
        """One (possibly multi-line) SMTP reply."""
        lines = []
        for _ in range(100):
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    raise Closed()
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode("utf-8", "replace"))
            if len(line) < 4 or line[3:4] != b"-":
                return int(line[:3] or b"0"), "\n".join(lines)
        raise ValueError("reply too long")


def _body(size: int) -> bytes:
    head = (b"From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: e2e test\r\n"
            b"Message-ID: <e2e@example.org>\r\n\r\n")
    line = b"x" * 76 + b"\r\n"
    n = max(1, (size - len(head)) // len(line))
    return head + line * n


def smtp(a: dict) -> dict:
    out: dict = {"op": "smtp", "src": a.get("src"), "delivered": False, "stage": "connect", "error": None,
                 "replies": []}
    timeout = float(a.get("timeout", 3.0))
    t_start = mono()
    try:
        s = _connect(a.get("src", ""), a["dst"], int(a.get("port", 25)), timeout)
    except BaseException as e:  # noqa: BLE001
        out["error"] = _error_name(e)
        out["t_error"] = mono()
        out["connect_time"] = out["t_error"] - t_start
        return out
    out["sport"] = s.getsockname()[1]
    out["connected"] = True
    lines = Lines(s)

    def expect(stage: str, ok: tuple[int, ...]) -> None:
        out["stage"] = stage
        code, text = lines.reply()
        out["replies"].append(code)
        if code not in ok:
            raise ValueError(f"{stage}: unexpected reply {text!r}")

    try:
        expect("banner", (220,))
        s.sendall(b"EHLO client.example.org\r\n")
        expect("ehlo", (250,))
        mail = f"MAIL FROM:<{a.get('mail_from', 'sender@example.org')}>\r\n".encode()
        pad = int(a.get("pad", 0))
        rcpts = a.get("rcpts", ["rcpt@example.org"])
        if pad:  # pipelined: pad NOOPs, MAIL and the first RCPT in one write (one segment on a jumbo link)
            out["t_offending"] = mono()
            s.sendall(b"NOOP\r\n" * pad + mail + f"RCPT TO:<{rcpts[0]}>\r\n".encode())
            for _ in range(pad):
                expect("noop", (250,))
            expect("mail", (250,))
            expect("rcpt0", (250, 251))
            rcpts = rcpts[1:]
        else:
            s.sendall(mail)
            expect("mail", (250,))
        split = a.get("split")
        for i, rcpt in enumerate(rcpts):
            line = f"RCPT TO:<{rcpt}>\r\n".encode()
            if split and split[0] == i:
                s.sendall(line[: split[1]])
                time.sleep(float(a.get("split_pause", 0.2)))
                out["t_offending"] = mono()
                s.sendall(line[split[1]:])
            else:
                out["t_offending"] = mono()
                s.sendall(line)
            expect(f"rcpt{i}", (250, 251))
        s.sendall(b"DATA\r\n")
        expect("data", (354,))
        out["t_data"] = mono()
        if a.get("end_apart"):  # the end-of-data line in a segment of its own, after a pause
            s.sendall(_body(int(a.get("body_size", 200))))
            time.sleep(0.2)
            s.sendall(b".\r\n")
        else:
            s.sendall(_body(int(a.get("body_size", 200))) + b".\r\n")
        expect("data-end", (250,))
        out["delivered"] = True
        out["t_delivered"] = mono()
        if a.get("second_rcpts"):  # a second transaction in the same session
            s.sendall(mail)
            expect("mail2", (250,))
            for i, rcpt in enumerate(a["second_rcpts"]):
                out["t_offending"] = mono()
                s.sendall(f"RCPT TO:<{rcpt}>\r\n".encode())
                expect(f"rcpt2-{i}", (250, 251))
        s.sendall(b"QUIT\r\n")
        expect("quit", (221,))
    except BaseException as e:  # noqa: BLE001
        out["t_error"] = mono()
        out["error"] = _error_name(e)
        if "t_offending" in out:
            out["error_after"] = out["t_error"] - out["t_offending"]
    finally:
        s.close()
    return out


def connect(a: dict) -> dict:
    out: dict = {"op": "connect", "src": a.get("src"), "ok": False, "error": None}
    t0 = mono()
    try:
        s = _connect(a.get("src", ""), a["dst"], int(a["port"]), float(a.get("timeout", 1.5)))
    except BaseException as e:  # noqa: BLE001
        out["error"] = _error_name(e)
        out["time"] = mono() - t0
        return out
    try:
        out["sport"] = s.getsockname()[1]
        out["connected"] = True
        if a.get("banner"):
            data = b""
            for _ in range(20):
                chunk = s.recv(4096)
                if not chunk:
                    raise Closed()
                data += chunk
                if b"\n" in data:
                    break
            out["banner"] = data.decode("utf-8", "replace").strip()
        if a.get("send"):
            msg = a["send"].encode()
            s.sendall(msg)
            got = b""
            for _ in range(20):
                chunk = s.recv(4096)
                if not chunk:
                    raise Closed()
                got += chunk
                if len(got) >= len(msg):
                    break
            out["echo"] = got.decode("utf-8", "replace")
        out["ok"] = True
    except BaseException as e:  # noqa: BLE001
        out["error"] = _error_name(e)
    finally:
        s.close()
    out["time"] = mono() - t0
    return out


def main() -> None:
    actions = json.loads(sys.argv[1])
    results = []
    deadline = mono() + float(sys.argv[2]) if len(sys.argv) > 2 else None
    for a in actions[:200]:
        if deadline is not None and mono() > deadline:
            results.append({"op": a.get("op"), "error": "skipped: client deadline"})
            continue
        op = a.get("op")
        if op == "smtp":
            results.append(smtp(a))
        elif op == "connect":
            results.append(connect(a))
        elif op == "sleep":
            time.sleep(min(float(a.get("seconds", 0)), 5.0))
            results.append({"op": "sleep"})
        else:
            results.append({"op": op, "error": "unknown op"})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
