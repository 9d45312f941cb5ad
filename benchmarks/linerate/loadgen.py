"""SMTP load generator of the line-rate benchmark; runs in the client namespace.

    python loadgen.py '<json config>'

Full SMTP transactions (connect, banner, EHLO, MAIL FROM, RCPT TO, DATA, a ~600-byte body,
'.', QUIT) over ``concurrency`` concurrent connections, in ``procs`` processes (asyncio,
plain non-blocking sockets).  Transaction ``i`` is fixed by the config alone, so every run
of a round gets exactly the same load:

* every ``blocked_every``-th transaction goes to ``user@blocked.test``, cycling through the
  kinds ``plain``, ``upper`` (the whole RCPT line in capitals) and ``split`` (the domain cut
  in two TCP segments, TCP_NODELAY, ``split_pause`` seconds apart); each uses a source of its
  own from the blocked pool (a blocked source is banned by the inspector);
* the others are legitimate and cycle through ``legit_count`` sources of the legit pool
  (each source a few times per run at most).

Bounded: no transaction starts after ``seconds`` or beyond ``max_tx``; each has a total
``timeout``; and the process kills itself by SIGALRM well after that.

Output on stdout: ``go`` when the load starts, ``done`` when the last transaction ended,
then one JSON object: counts per kind and outcome, latencies (connect to the QUIT reply) of
the legitimate transactions that finished in the window, transactions/s, the generator's CPU.
A blocked transaction's outcome is ``reset`` (ConnectionResetError within 1 s of the RCPT),
``eof`` (EOF within 1 s), ``late-reset``/``late-eof`` (later), ``delivered`` (the filter let it
through), ``timeout`` or ``error:<name>``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import resource
import signal
import socket
import sys
import time
from collections import Counter
from typing import Any

mono = time.monotonic
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
KINDS = ("plain", "upper", "split")
BLOCKED = "blocked.test"


def body(size: int) -> bytes:
    head = (b"From: sender@example.org\r\nTo: rcpt@example.org\r\nSubject: line-rate benchmark\r\n"
            b"Message-ID: <bench@example.org>\r\n\r\n")
    line = b"y" * 76 + b"\r\n"
    n = max(1, (size - len(head)) // len(line))
    return head + line * n + b".\r\n"


class Generator:
    def __init__(self, cfg: dict[str, Any], proc: int, procs: int) -> None:
        self.cfg = cfg
        self.proc, self.procs = proc, procs
        self.dst = cfg["dst"]
        self.port = int(cfg.get("port", 25))
        self.family = socket.AF_INET6 if ":" in self.dst else socket.AF_INET
        self.timeout = float(cfg.get("timeout", 10))
        self.body = body(int(cfg.get("body_size", 600)))
        self.every = int(cfg.get("blocked_every", 20))  # 0: none blocked
        self.max_tx = int(cfg["max_tx"])
        self.split_pause = float(cfg.get("split_pause", 0.02))
        self.legit = ipaddress.ip_address(cfg["legit_base"])
        self.legit_count = int(cfg["legit_count"])
        self.blocked = ipaddress.ip_address(cfg["blocked_base"])
        self.blocked_count = int(cfg["blocked_count"])
        self.next = proc  # transaction index; this process takes i = proc, proc + procs, ...
        self.outcomes: Counter[str] = Counter()
        self.lat: list[float] = []  # legit, finished in the window
        self.lat_all: list[float] = []
        self.in_window = 0
        self.started = 0

    def plan(self, i: int) -> tuple[str, str]:
        """(kind, source) of transaction ``i``: 'legit' or a blocked kind."""
        if self.every and i % self.every == self.every - 1:
            b = i // self.every
            if b >= self.blocked_count:
                raise IndexError("blocked pool exhausted")
            return KINDS[b % 3], str(self.blocked + 1 + b)
        n = i - (i // self.every if self.every else 0)
        return "legit", str(self.legit + 1 + n % self.legit_count)

    async def worker(self, deadline: float) -> None:
        while self.next < self.max_tx and mono() < deadline:
            i = self.next
            self.next += self.procs
            try:
                kind, src = self.plan(i)
            except IndexError:
                return
            self.started += 1
            t0 = mono()
            outcome = await self.transaction(kind, src)
            t1 = mono()
            self.outcomes[f"{kind}:{outcome}"] += 1
            if t1 <= deadline:
                self.in_window += 1
            if kind == "legit" and outcome == "ok":
                self.lat_all.append(t1 - t0)
                if t1 <= deadline:
                    self.lat.append(t1 - t0)

    async def transaction(self, kind: str, src: str) -> str:
        loop = asyncio.get_running_loop()
        s = socket.socket(self.family, socket.SOCK_STREAM)
        s.setblocking(False)
        buf = bytearray()
        t_rcpt = 0.0
        stage = "connect"

        async def reply() -> int:
            while True:
                start = 0
                while True:
                    nl = buf.find(b"\r\n", start)
                    if nl < 0:
                        break
                    if nl - start < 4 or buf[start + 3] != 0x2D:  # not "250-..."
                        code = int(buf[start:start + 3] or b"0")
                        del buf[:nl + 2]
                        return code
                    start = nl + 2
                data = await loop.sock_recv(s, 65536)
                if not data:
                    raise EOFError
                buf.extend(data)

        async def command(line: bytes, ok: int) -> None:
            await loop.sock_sendall(s, line)
            code = await reply()
            if code != ok:
                raise ValueError(f"{stage}: {code}")

        try:
            if self.family == socket.AF_INET:
                s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind((src, 0))
            async with asyncio.timeout(self.timeout):
                await loop.sock_connect(s, (self.dst, self.port))
                stage = "banner"
                if await reply() != 220:
                    raise ValueError("banner")
                stage = "ehlo"
                await command(b"EHLO client.bench.test\r\n", 250)
                stage = "mail"
                await command(b"MAIL FROM:<sender@example.org>\r\n", 250)
                stage = "rcpt"
                if kind == "legit":
                    await command(b"RCPT TO:<user@example.org>\r\n", 250)
                else:
                    line = (b"RCPT TO:<user@%s>\r\n" % BLOCKED.encode())
                    if kind == "upper":
                        line = line.upper()
                    if kind == "split":
                        cut = line.index(b"@") + 5  # "RCPT TO:<user@bloc" | "ked.test>\r\n"
                        await loop.sock_sendall(s, line[:cut])
                        await asyncio.sleep(self.split_pause)
                        t_rcpt = mono()
                        await loop.sock_sendall(s, line[cut:])
                    else:
                        t_rcpt = mono()
                        await loop.sock_sendall(s, line)
                    if await reply() != 250:
                        raise ValueError("rcpt refused")
                stage = "data"
                await command(b"DATA\r\n", 354)
                stage = "body"
                await command(self.body, 250)
                stage = "quit"
                await command(b"QUIT\r\n", 221)
            return "ok" if kind == "legit" else "delivered"
        except (ConnectionResetError, BrokenPipeError, EOFError) as e:
            if kind != "legit" and t_rcpt and stage in ("rcpt", "data"):
                what = "reset" if isinstance(e, (ConnectionResetError, BrokenPipeError)) else "eof"
                return what if mono() - t_rcpt <= 1.0 else f"late-{what}"
            return f"error:{type(e).__name__}@{stage}"
        except TimeoutError:
            return f"timeout@{stage}"
        except Exception as e:  # noqa: BLE001
            return f"error:{type(e).__name__}@{stage}"
        finally:
            s.close()

    async def run(self, seconds: float, concurrency: int) -> dict[str, Any]:
        t_go = mono()
        deadline = t_go + seconds
        await asyncio.gather(*(self.worker(deadline) for _ in range(concurrency)))
        t_end = mono()
        return {"t_go": t_go, "deadline": deadline, "t_end": t_end, "outcomes": dict(self.outcomes),
                "lat": self.lat, "lat_all": self.lat_all, "in_window": self.in_window, "started": self.started}


def child(cfg: dict[str, Any], proc: int, procs: int, start_r: int, out_w: int) -> None:
    gen = Generator(cfg, proc, procs)
    conc = max(1, int(cfg["concurrency"]) // procs + (1 if proc < int(cfg["concurrency"]) % procs else 0))
    os.read(start_r, 1)  # wait for the go
    result = asyncio.run(gen.run(float(cfg["seconds"]), conc))
    ru = resource.getrusage(resource.RUSAGE_SELF)
    result["cpu"] = ru.ru_utime + ru.ru_stime
    data = json.dumps(result).encode()
    with os.fdopen(out_w, "wb") as f:
        f.write(data)


def percentile(values: list[float], p: float) -> float | None:
    s = sorted(values)
    if not s:
        return None
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def main() -> int:
    cfg = json.loads(sys.argv[1])
    seconds = float(cfg["seconds"])
    # the last resort: never outlive the run by much, whatever happens
    signal.alarm(int(seconds + float(cfg.get("timeout", 10)) + 30))
    procs = max(1, int(cfg.get("procs", 1)))
    kids = []
    for k in range(procs):
        start_r, start_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(start_w)
            os.close(out_r)
            try:
                child(cfg, k, procs, start_r, out_w)
            finally:
                os._exit(0)
        os.close(start_r)
        os.close(out_w)
        kids.append((pid, start_w, out_r))
    print("go", flush=True)
    for _, start_w, _ in kids:
        os.write(start_w, b"g")
        os.close(start_w)
    results = []
    for pid, _, out_r in kids:
        with os.fdopen(out_r, "rb") as f:
            data = f.read()
        os.waitpid(pid, 0)
        results.append(json.loads(data) if data else {})
    print("done", flush=True)
    results = [r for r in results if r]
    if not results:
        print(json.dumps({"error": "no generator process reported"}))
        return 1
    outcomes: Counter[str] = Counter()
    for r in results:
        outcomes.update(r["outcomes"])
    lat = [x for r in results for x in r["lat"]]
    lat_all = [x for r in results for x in r["lat_all"]]
    t_go = min(r["t_go"] for r in results)
    window = max(r["deadline"] for r in results) - t_go
    in_window = sum(r["in_window"] for r in results)
    out = {
        "t_go": t_go, "t_end": max(r["t_end"] for r in results), "window": window,
        "transactions": sum(outcomes.values()), "in_window": in_window, "tx_per_s": in_window / window,
        "outcomes": dict(sorted(outcomes.items())),
        "p50_ms": (percentile(lat, 50) or 0) * 1000, "p99_ms": (percentile(lat, 99) or 0) * 1000,
        "p50_all_ms": (percentile(lat_all, 50) or 0) * 1000, "max_ms": max(lat_all, default=0) * 1000,
        "cpu": sum(r["cpu"] for r in results), "procs": procs, "concurrency": int(cfg["concurrency"]),
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
