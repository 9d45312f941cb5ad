"""Log timestamps: :class:`TimeParser` reads the time at the start of a log line.

The formats syslog (``Nov 21 19:32:28``, no year), rsyslog and journald (RFC 3339), Exim
(``2026-11-21 16:00:03 +0100``), Apache (``[Sat Nov 21 19:32:28.123456 2026]``), Roundcube
(``[21-Nov-2026 19:32:28 +0100]``) and ProFTPD write.  Pure: the year and the reference
time are passed in.
"""

from __future__ import annotations

import calendar
import re
import time

__all__ = ["TimeParser"]


_MONTHS = {m: i for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
# Exim's log_timezone writes "2026-11-21 16:00:03 +0100": a space, then four digits
_ISO = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d):(\d\d)(?:[.,](\d{1,9}))?"
                  r"(Z|[+-]\d\d(?::?\d\d)?| [+-]\d{4}\b)?")
_SYSLOG = re.compile(r"([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?")
_APACHE_TIME = re.compile(r"\[\w{3} (\w{3}) +(\d{1,2}) (\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))? (\d{4})\]")
_RC_TIME = re.compile(r"\[(\d{1,2})-(\w{3})-(\d{4}) (\d\d):(\d\d):(\d\d)(?: ([+-]\d{4}|UTC|GMT))?\]")


class TimeParser:
    """Reads a line's leading timestamp.

    Syslog's ``Nov 21 19:32:28`` has no year: with ``year`` given, it is used
    and advanced when the months run over from December to January; without,
    the year is the reference time's, one year back for a date more than two
    days ahead of it.  Times without a zone are local, or UTC with ``utc``.
    """

    def __init__(self, year: int | None = None, utc: bool = False) -> None:
        self.year = year
        self.utc = utc
        self._last_month = 0
        self._minutes: dict[tuple[int, int, int, int, int, int], float] = {}

    def parse(self, text: str, reference: float = 0.0) -> float | None:
        """The epoch time at the start of ``text`` (``reference`` resolves a missing year), or None."""
        if not text:
            return None
        c = text[0]
        try:
            if c == "[":
                if text[1:2].isdigit():
                    m = _RC_TIME.match(text)
                    if m:
                        d, mon, y, hh, mm, ss, zone = m.groups()
                        return self._epoch(int(y), _MONTHS[mon], int(d), int(hh), int(mm), int(ss), None,
                                           _offset(zone))
                    return None
                m = _APACHE_TIME.match(text)
                if m:
                    mon, d, hh, mm, ss, frac, y = m.groups()
                    return self._epoch(int(y), _MONTHS[mon], int(d), int(hh), int(mm), int(ss), frac, None)
                return None
            if c.isdigit():
                m = _ISO.match(text)
                if m:
                    y, mo, d, hh, mm, ss, frac, zone = m.groups()
                    return self._epoch(int(y), int(mo), int(d), int(hh), int(mm), int(ss), frac, _offset(zone))
                return None
            m = _SYSLOG.match(text)
            if m:
                mon, d, hh, mm, ss, frac = m.groups()
                month = _MONTHS[mon]
                return self._syslog(month, int(d), int(hh), int(mm), int(ss), frac, reference)
        except (KeyError, ValueError, OverflowError):
            return None
        return None

    def _syslog(self, month: int, day: int, hh: int, mm: int, ss: int, frac: str | None, reference: float) -> float:
        if self.year is not None:
            if self._last_month == 12 and month == 1:
                self.year += 1  # the log ran over New Year
            self._last_month = month
            return self._epoch(self.year, month, day, hh, mm, ss, frac, None)
        ref = time.gmtime(reference) if self.utc else time.localtime(reference)
        t = self._epoch(ref.tm_year, month, day, hh, mm, ss, frac, None)
        if t > reference + 2 * 86400:
            t = self._epoch(ref.tm_year - 1, month, day, hh, mm, ss, frac, None)
        return t

    def _epoch(self, y: int, mo: int, d: int, hh: int, mm: int, ss: int, frac: str | None,
               offset: int | None) -> float:
        key = (y, mo, d, hh, mm, -1 if offset is None else offset)
        base = self._minutes.get(key)
        if base is None:
            if not (1 <= mo <= 12 and 1 <= d <= 31 and hh < 24 and mm < 60):
                raise ValueError("not a date")
            if offset is not None:
                base = calendar.timegm((y, mo, d, hh, mm, 0, 0, 0, 0)) - offset
            elif self.utc:
                base = calendar.timegm((y, mo, d, hh, mm, 0, 0, 0, 0))
            else:
                base = time.mktime((y, mo, d, hh, mm, 0, 0, 0, -1))
            if len(self._minutes) > 4096:
                self._minutes.clear()
            self._minutes[key] = base
        t = base + ss
        if frac:
            t += int(frac) / 10 ** len(frac)
        return float(t)


def _offset(zone: str | None) -> int | None:
    if zone is None:
        return None
    if zone in ("Z", "UTC", "GMT"):
        return 0
    zone = zone.lstrip()
    sign = -1 if zone[0] == "-" else 1
    digits = zone[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:4] or 0)
    return sign * (hours * 3600 + minutes * 60)
