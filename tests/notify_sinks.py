"""A local SMTP sink and HTTP receiver for the notification tests, run inside a test namespace.

``python notify_sinks.py OUT.jsonl SECONDS``: SMTP (aiosmtpd) on 127.0.0.1:2525 and HTTP on
127.0.0.1:8080; every message and every POST is appended to OUT.jsonl; prints ``ready``; exits
after SECONDS (bounded, so it is never left behind).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from aiosmtpd.controller import Controller

out = open(sys.argv[1], "a")  # noqa: SIM115 - open for the process's life


def rec(**e: object) -> None:
    out.write(json.dumps(e) + "\n")
    out.flush()


class H:
    async def handle_DATA(self, server, session, envelope):
        rec(kind="mail", mail_from=envelope.mail_from, rcpt_tos=envelope.rcpt_tos,
            data=envelope.content.decode("utf-8", "replace"))
        return "250 OK"


c = Controller(H(), hostname="127.0.0.1", port=2525)
c.start()


class W(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(min(n, 1 << 20))
        rec(kind="http", path=self.path, body=body.decode("utf-8", "replace"))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a: object) -> None:
        pass


srv = HTTPServer(("127.0.0.1", 8080), W)
threading.Thread(target=srv.serve_forever, daemon=True).start()
print("ready", flush=True)
time.sleep(min(float(sys.argv[2]) if len(sys.argv) > 2 else 30, 120))
