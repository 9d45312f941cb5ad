"""Notifications (``[notify]``): a daily report and optional per-ban notices.

Channels:

* ``urls``: Apprise URLs (``mailto://`` SMTP, ``json://`` webhooks, Slack, Matrix,
  ntfy, ...), through the ``apprise`` library (the optional ``notify`` extra);
* ``sendmail``: the local MTA's ``sendmail`` program (``-oi -f FROM -- TO...``,
  an argument list, never a shell), for hosts where ``root`` mail is read.

The :class:`Notifier` is a side component of the service: :meth:`Notifier.on_ban`
is a ban-pipeline listener that only queues (it runs on the thread that issued
the ban); the component's own thread sends, so a slow or dead mail server never
delays a verdict or a ban.  Per-ban notices are rate limited (at most
``ban_limit`` within ``ban_window`` seconds); the bans beyond the limit are
counted and told in one summary once the window lets a message through again.
A failing channel is counted and reported (``status()``, an event), never raised.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any, Protocol

from .choices import one_of
from .periodic import Periodic

if TYPE_CHECKING:  # not at run time: the config imports this module and must stay light
    from .respond.bans import Ban

__all__ = ["NotifySettings", "NotifyError", "Channel", "AppriseChannel", "SendmailChannel", "Notifier",
           "parse_notify", "channels_for", "events_report", "send_report_now", "next_report_time", "NOTIFY_KEYS"]

log = logging.getLogger(__name__)

NOTIFY_KEYS: dict[str, type | tuple[type, ...]] = {
    "urls": list, "sendmail": str, "mail_to": list, "mail_from": str, "report": str, "report_at": str,
    "bans": bool, "ban_limit": int, "ban_window": int,
}
PENDING_MAX = 10_000  # queued ban notices; beyond this they are only counted


class NotifyError(Exception):
    """A channel could not deliver (the message names the channel and why)."""


@dataclass(frozen=True)
class NotifySettings:
    """The ``[notify]`` section.

    ``report``: ``"daily"`` (at ``report_at``, local time ``HH:MM``) or ``"off"``;
    ``bans``: one notice per ban, at most ``ban_limit`` per ``ban_window`` seconds.
    """

    urls: tuple[str, ...] = ()
    sendmail: str | None = None
    mail_to: tuple[str, ...] = ("root",)
    mail_from: str = "inspector"
    report: str = "daily"
    report_at: str = "07:00"
    bans: bool = False
    ban_limit: int = 10
    ban_window: int = 3600

    @property
    def enabled(self) -> bool:
        return bool(self.urls or self.sendmail)


def parse_notify(table: dict[str, Any], fail: Callable[[str, str | None, str], Exception]) -> NotifySettings:
    """Build :class:`NotifySettings` from the ``[notify]`` table (key types already checked).

    ``fail(table, key, message)`` makes the ``file:line`` error.  Apprise URLs are
    checked with Apprise itself when it is installed; without it, ``urls`` is an error.
    """
    out: dict[str, Any] = {}
    urls = table.get("urls", [])
    if not all(isinstance(u, str) and "://" in u for u in urls):
        raise fail("notify", "urls", "expected Apprise URLs such as \"mailto://mail.example.org?to=admin@example.org\"")
    if urls:
        try:
            import apprise
        except ImportError:
            raise fail("notify", "urls", "needs the apprise library: pip install 'inspector[notify]'") from None
        for u in urls:
            if not apprise.Apprise().add(u):
                raise fail("notify", "urls", f"Apprise cannot use {_redact(u)!r}")
    out["urls"] = tuple(urls)
    if "sendmail" in table:
        if not table["sendmail"].startswith("/"):
            raise fail("notify", "sendmail", "must be an absolute path such as \"/usr/sbin/sendmail\"")
        out["sendmail"] = table["sendmail"]
    if "mail_to" in table:
        to = table["mail_to"]
        if not to or not all(isinstance(a, str) and a and not a.startswith("-") and " " not in a for a in to):
            raise fail("notify", "mail_to", "expected a non-empty list of addresses such as [\"root\"]")
        out["mail_to"] = tuple(to)
    if "mail_from" in table:
        if not table["mail_from"] or table["mail_from"].startswith("-") or " " in table["mail_from"]:
            raise fail("notify", "mail_from", f"invalid sender {table['mail_from']!r}")
        out["mail_from"] = table["mail_from"]
    one_of(table, "report", ("daily", "off"), out, lambda m: fail("notify", "report", m))
    if "report_at" in table:
        try:
            _hhmm(table["report_at"])
        except ValueError as e:
            raise fail("notify", "report_at", str(e)) from None
        out["report_at"] = table["report_at"]
    if "bans" in table:
        out["bans"] = table["bans"]
    for key, low, high in (("ban_limit", 1, 100_000), ("ban_window", 1, 86400 * 7)):
        if key in table:
            if not low <= table[key] <= high:
                raise fail("notify", key, f"must be between {low} and {high}, not {table[key]}")
            out[key] = table[key]
    if not (out["urls"] or out.get("sendmail")):
        raise fail("notify", None, "no channel: set urls = [...] (Apprise) or sendmail = \"/usr/sbin/sendmail\"")
    return NotifySettings(**out)


def _redact(url: str) -> str:
    """The URL without a password (``user:secret@`` becomes ``user:***@``)."""
    scheme, _, rest = url.partition("://")
    auth, at, host = rest.partition("@")
    if at and ":" in auth:
        return f"{scheme}://{auth.split(':', 1)[0]}:***@{host}"
    return url


def _hhmm(text: str) -> tuple[int, int]:
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"expected a time of day HH:MM, not {text!r}")
    h, m = int(parts[0]), int(parts[1])
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(f"expected a time of day HH:MM, not {text!r}")
    return h, m


def next_report_time(now: float, at: str) -> float:
    """The first local time ``at`` (``HH:MM``) strictly after ``now`` (epoch seconds)."""
    h, m = _hhmm(at)
    t = time.localtime(now)
    due = time.mktime((t.tm_year, t.tm_mon, t.tm_mday, h, m, 0, 0, 0, -1))
    if due <= now:
        t = time.localtime(now + 86400)
        due = time.mktime((t.tm_year, t.tm_mon, t.tm_mday, h, m, 0, 0, 0, -1))
    return due


class Channel(Protocol):
    """Where a notification goes; ``send`` raises :class:`NotifyError` when it cannot deliver."""

    name: str

    def send(self, title: str, body: str) -> None: ...


class AppriseChannel:
    """Every configured Apprise URL, as one channel."""

    def __init__(self, urls: Sequence[str]) -> None:
        import apprise

        self.name = "apprise"
        self._apprise = apprise.Apprise()
        for u in urls:
            if not self._apprise.add(u):
                raise NotifyError(f"apprise: cannot use {_redact(u)!r}")

    def send(self, title: str, body: str) -> None:
        import apprise

        if not self._apprise.notify(title=title, body=body, body_format=apprise.NotifyFormat.TEXT):
            raise NotifyError("apprise: at least one URL did not take the notification (see the log)")


class SendmailChannel:
    """The local MTA's ``sendmail`` (``sendmail -oi -f FROM -- TO...``), message on stdin."""

    def __init__(self, path: str, to: Sequence[str], sender: str, timeout: float = 60.0) -> None:
        self.name = "sendmail"
        self.path, self.to, self.sender, self.timeout = path, tuple(to), sender, timeout

    def message(self, title: str, body: str) -> bytes:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg["Subject"] = title
        msg["Date"] = formatdate(localtime=True)
        msg["Message-ID"] = make_msgid("inspector")
        msg.set_content(body)
        return msg.as_bytes()

    def send(self, title: str, body: str) -> None:
        argv = [self.path, "-oi", "-f", self.sender, "--", *self.to]
        try:
            r = subprocess.run(argv, input=self.message(title, body), capture_output=True, timeout=self.timeout,
                               check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NotifyError(f"sendmail: {e}") from None
        if r.returncode:
            raise NotifyError(f"sendmail exited {r.returncode}: {r.stderr.decode(errors='replace').strip()[:200]}")


def channels_for(settings: NotifySettings) -> list[Channel]:
    """The channels ``settings`` names (raises :class:`NotifyError` if one cannot be built)."""
    out: list[Channel] = []
    if settings.urls:
        try:
            out.append(AppriseChannel(settings.urls))
        except ImportError:
            raise NotifyError("[notify] urls need the apprise library: pip install 'inspector[notify]'") from None
    if settings.sendmail:
        out.append(SendmailChannel(settings.sendmail, settings.mail_to, settings.mail_from))
    return out


class Notifier:
    """Side component: the daily report and rate-limited ban notices (see the module docstring).

    ``report_text(since, until)`` renders the report of that window (epoch
    seconds); ``emit`` receives ``notify_failed`` events.  Thread-safe:
    :meth:`on_ban` may be called from any thread.
    """

    def __init__(self, settings: NotifySettings, channels: Sequence[Channel],
                 report_text: Callable[[float, float], str], clock: Callable[[], float], host: str,
                 emit: Callable[[dict[str, Any]], None] | None = None, interval: float = 1.0) -> None:
        self.settings = settings
        self.channels = list(channels)
        self.report_text = report_text
        self.clock = clock
        self.host = host
        self.emit = emit
        self.interval = interval
        self._lock = threading.Lock()
        self._pending: deque[Ban] = deque()
        self._sent_times: deque[float] = deque()
        self._suppressed = 0
        self._suppressed_since: float | None = None
        self.sent = 0
        self.failed = 0
        self.last_error: str | None = None
        now = clock()
        self._last_report = now
        self.next_report = next_report_time(now, settings.report_at) if settings.report == "daily" else None
        self._thread = Periodic("notifier", interval, lambda: self.tick(self.clock()))

    # ---- the ban-pipeline listener (any thread): queue only --------------------------------------------
    def on_ban(self, kind: str, item: Ban | str) -> None:
        """``BanPipeline`` listener: queues a notice for each ``("ban", Ban)``; ignores lifts."""
        if kind != "ban" or not self.settings.bans or isinstance(item, str):
            return
        with self._lock:
            if len(self._pending) < PENDING_MAX:
                self._pending.append(item)
            else:
                self._suppress(self.clock())

    def _suppress(self, now: float) -> None:
        if not self._suppressed:
            self._suppressed_since = now
        self._suppressed += 1

    # ---- the component's thread ------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        """Send what is due at ``now``: the daily report, queued ban notices within the rate limit."""
        if self.next_report is not None and now >= self.next_report:
            self.send_report(self._last_report, now)
            self._last_report = now
            self.next_report = next_report_time(now, self.settings.report_at)
        with self._lock:
            pending = list(self._pending)
            self._pending.clear()
        window = self.settings.ban_window
        while self._sent_times and self._sent_times[0] <= now - window:
            self._sent_times.popleft()
        for ban in pending:
            if len(self._sent_times) >= self.settings.ban_limit:
                with self._lock:
                    self._suppress(now)
                continue
            self._sent_times.append(now)
            self._deliver(f"inspector on {self.host}: banned {ban.network}", _ban_text(ban))
        with self._lock:
            suppressed, since = self._suppressed, self._suppressed_since
        if suppressed and len(self._sent_times) < self.settings.ban_limit:
            with self._lock:
                self._suppressed, self._suppressed_since = 0, None
            self._sent_times.append(now)
            self._deliver(f"inspector on {self.host}: {suppressed} more bans",
                          f"{suppressed} further bans since {_when(since or now)} were not sent one by one "
                          f"(at most {self.settings.ban_limit} notices per {window} s); "
                          f"see 'inspector bans' and 'inspector report'.\n")

    def send_report(self, since: float, until: float) -> bool:
        """Render and send the report of ``[since, until]`` now; False if a channel failed."""
        try:
            body = self.report_text(since, until)
        except (OSError, ValueError) as e:
            body = f"(the report could not be built: {e})\n"
        return self._deliver(f"inspector report for {self.host}, {_when(since)} to {_when(until)}", body)

    def _deliver(self, title: str, body: str) -> bool:
        ok = True
        for ch in self.channels:
            try:
                ch.send(title, body)
                self.sent += 1
            except NotifyError as e:
                ok = False
                self._failed(ch.name, str(e))
            except Exception as e:  # noqa: BLE001 - a library's bug must not end the component's thread
                ok = False
                self._failed(ch.name, f"{type(e).__name__}: {e}")
        return ok

    def _failed(self, channel: str, error: str) -> None:
        self.failed += 1
        self.last_error = f"{channel}: {error}"
        log.warning("notification through %s failed: %s", channel, error)
        if self.emit is not None:
            self.emit({"event": "notify_failed", "channel": channel, "error": error})

    def start(self) -> None:
        """Start the component's thread (daemon)."""
        self._thread.start()

    def close(self) -> None:
        """Stop the thread; queued ban notices still go out once (bounded by the rate limit)."""
        self._thread.stop(timeout=30)
        self.tick(self.clock())

    def status(self) -> dict[str, Any]:
        """The ``notify`` section of ``inspector status``."""
        with self._lock:
            pending, suppressed = len(self._pending), self._suppressed
        return {"channels": [c.name for c in self.channels], "sent": self.sent, "failed": self.failed,
                "last_error": self.last_error, "pending": pending, "suppressed": suppressed,
                "next_report": _when(self.next_report) if self.next_report is not None else None}


def events_report(path: str) -> Callable[[float, float], str]:
    """``report_text`` for :class:`Notifier`: ``inspector report``'s text over the event log at ``path``."""
    from .report import build_report, render_text

    def render(since: float, until: float) -> str:
        with open(path, encoding="utf-8", errors="replace") as f:
            return render_text(build_report(f, since, until))

    return render


def send_report_now(settings: NotifySettings | None, events: str, since: str) -> int:
    """``inspector report --notify``: send the report of the last ``since`` now; the exit code."""
    import socket
    import sys

    from .report import parse_since

    if settings is None:
        print("inspector: error: no [notify] section in the config", file=sys.stderr)
        return 1
    now = time.time()
    try:
        start = parse_since(since, now)
        channels = channels_for(settings)
    except (ValueError, NotifyError) as e:
        print(f"inspector: error: {e}", file=sys.stderr)
        return 1
    notifier = Notifier(settings, channels, events_report(events), time.time, socket.gethostname())
    ok = notifier.send_report(start, now)
    if not ok:
        print(f"inspector: error: {notifier.last_error}", file=sys.stderr)
        return 1
    print(f"report sent through {', '.join(c.name for c in channels)}")
    return 0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def _ban_text(ban: Ban) -> str:
    lines = [f"{ban.network} is banned for {ban.seconds} s.", f"reason: {ban.reason}"]
    if ban.rule:
        lines.append(f"rule: {ban.rule}")
    if ban.dport:
        lines.append(f"port: {ban.dport}")
    lines.append(f"lift it with: inspector unban {ban.network}")
    return "\n".join(lines) + "\n"
