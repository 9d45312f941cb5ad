"""Wire text reaches the operator's screen escaped (issue 11, item 9)."""

from __future__ import annotations

import pytest

from inspector.report import build_report, render_html, render_text
from inspector.safetext import printable
from inspector.status import render

ISSUE = "<x\x1b[1;31m\rinspector report: nothing blocked\x1b[8m@blocked.test>"

# every kind a terminal or a bidi renderer acts on
VARIANTS = [
    ISSUE,
    "a\x1b]0;owned\x07b",  # OSC: retitle the window
    "a\x9b2Jb",  # the C1 CSI as one character
    "a\x00b\x7fc\x08d",  # NUL, DEL, backspace
    "line\nnext",  # LF
    "x\u202egnp.exe",  # RIGHT-TO-LEFT OVERRIDE
    "x\u2066y\u2069\u2067z\u2068\u061c",  # isolates, Arabic letter mark
    "a\u200eb\u200fc\u200bd\ufeffe",  # LRM, RLM, zero width space, BOM
    "a\u2028b\u2029c\u00a0d\u3000e",  # line/paragraph separators, odd spaces
    "a\udcffb",  # a lone surrogate (surrogateescape)
    "\ue000private",
]


def _raw_controls(text: str) -> list[str]:
    import unicodedata

    return [ch for ch in text if ch not in "\n" and (unicodedata.category(ch) in
                                                     {"Cc", "Cf", "Zl", "Zp", "Co", "Cs", "Cn"} or
                                                     (unicodedata.category(ch) == "Zs" and ch != " "))]


@pytest.mark.parametrize("text", VARIANTS)
def test_printable_leaves_no_control_or_format_character(text: str) -> None:
    out = printable(text)
    assert not _raw_controls(out) and "\n" not in out
    assert out.isprintable()


def test_the_issue_example_reads_as_escapes() -> None:
    assert printable(ISSUE) == "<x\\x1b[1;31m\\rinspector report: nothing blocked\\x1b[8m@blocked.test>"


def test_plain_text_and_unicode_letters_are_unchanged() -> None:
    for text in ("198.51.100.7", "2001:db8::/64", "user@blocked.test", "münchen.example", "例え.テスト"):
        assert printable(text) == text


def test_a_backslash_is_doubled_so_escapes_are_never_ambiguous() -> None:
    assert printable("a\\x1bb") == "a\\\\x1bb"
    assert printable("a\x1bb") != printable("a\\x1bb")


def test_report_text_and_html_escape_recipients() -> None:
    import json

    lines = [json.dumps({"event": "verdict", "time": 100.0, "reason": "domain", "src": "198.51.100.7",
                         "rule": "blocked.test", "match": v}) for v in VARIANTS]
    report = build_report(lines, 0, 200)
    text = render_text(report)
    assert not _raw_controls(text)
    assert "\\x1b[1;31m\\rinspector report: nothing blocked" in text
    page = render_html(report)
    assert not _raw_controls(page.replace("\n", ""))
    assert "\\u202e" in page and "\x1b" not in page


def test_status_escapes_sources_domains_and_ban_rules() -> None:
    evil = "evil\x1b[2J\u202e"
    st = {"ok": True, "pid": 1, "mode": "enforce", "queue": 0, "workers": 1, "uptime": 5, "packets": 1,
          "queues": [{"queue": 0, "portid": 1, "queue_dropped": 0, "user_dropped": 0, "id_sequence": 1}],
          "bans_active": 1, "bans_by_reason": {"log:" + evil: 1},
          "recent_bans": [{"network": "198.51.100.7", "reason": "log:" + evil, "rule": evil, "seconds_left": 60}],
          "live": {"reasons": {evil: 1}, "top_sources": [[evil, 1]], "top_domains": [[evil, 1]]},
          "rules": {"domains": 1, "payload": 0, "loaded_at": "now"}}
    screen = render("/run/x.sock", st)
    assert not _raw_controls(screen)
    assert screen.count("evil\\x1b[2J\\u202e") == 6
