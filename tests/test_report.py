import json
import random

import pytest

from inspector.report import build_report, parse_since, render_html, render_text

T0 = 1_800_000_000.0


def generated_log(n_blocks: int = 500, seed: int = 3):
    """An event log with counts known by construction."""
    rng = random.Random(seed)
    truth = {"domain": 0, "rate": 0, "tcp-flags": 0, "bans": 0, "sources": {}, "domains": {}}
    lines = [json.dumps({"event": "started", "time": T0})]
    for i in range(n_blocks):
        t = T0 + i * 30
        reason = rng.choice(["domain", "domain", "rate", "tcp-flags"])
        src = f"198.51.100.{rng.randrange(1, 20)}" if i % 5 else f"2001:db8:{rng.randrange(1, 3)}::{i % 7 + 1}"
        ev = {"event": "verdict", "time": t, "verdict": "reset", "reason": reason, "src": src, "dport": 25}
        if reason == "domain":
            dom = rng.choice(["blocked.test", "spam.example"])
            ev.update(rule=dom, match=f"<User@{dom.upper()}>")
            truth["domains"][dom] = truth["domains"].get(dom, 0) + 1
        truth[reason] += 1
        truth["sources"][src] = truth["sources"].get(src, 0) + 1
        lines.append(json.dumps(ev))
        lines.append(json.dumps({"event": "verdict", "time": t + 1, "reason": "banned", "src": src}))
        if reason != "tcp-flags":
            lines.append(json.dumps({"event": "ban", "time": t, "network": src, "seconds": 86400, "reason": reason}))
            truth["bans"] += 1
    lines.append("{not json")
    lines.append(json.dumps({"event": "ban", "time": T0 + 10, "network": "203.0.113.9", "seconds": 600,
                             "reason": "log:sshd", "rule": "sshd"}))
    return lines, truth


def test_counts_match_the_generated_truth():
    lines, truth = generated_log()
    r = build_report(lines, T0 - 1, T0 + 10**6)
    assert r.skipped == 1
    assert r.blocks == {k: truth[k] for k in ("domain", "rate", "tcp-flags") if truth[k]}
    assert sum(r.bans.values()) == truth["bans"] + 1 and r.bans["log:sshd"] == 1
    top_src, top_n = r.sources.most_common(1)[0]
    assert top_n == max(truth["sources"].values())
    assert dict(r.domains) == truth["domains"]
    assert r.recipients["user@blocked.test"] == truth["domains"]["blocked.test"]
    v6 = sum(n for s, n in truth["sources"].items() if s.startswith("2001:db8:1:"))
    assert r.networks["2001:db8:1::/64"] == v6
    assert r.networks["198.51.100.0/24"] == sum(n for s, n in truth["sources"].items() if "." in s) + 0


def test_window_excludes_old_events():
    lines, _ = generated_log(100)
    r = build_report(lines, T0 + 50 * 30, T0 + 10**6)
    assert sum(r.blocks.values()) == 50


def test_parse_since():
    assert parse_since("24h", 100000.0) == 100000.0 - 86400
    assert parse_since("90m", 10000.0) == 10000.0 - 5400
    assert parse_since("2026-11-01T00:00:00+00:00", 0) == 1793491200.0
    with pytest.raises(ValueError, match="expected a duration"):
        parse_since("yesterday", 0)


def test_renderings():
    lines, _ = generated_log(200)
    r = build_report(lines, T0 - 1, T0 + 200 * 30)
    text = render_text(r)
    assert "blocks by reason" in text and "blocked.test" in text
    page = render_html(r)
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and page.count('class="bar"') > 10
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")


def test_cli_report(tmp_path):
    import subprocess
    import sys

    lines, truth = generated_log(50)
    log = tmp_path / "events.jsonl"
    # shift the log to now so that --since 1d covers it
    import time
    shift = time.time() - (T0 + 50 * 30)
    log.write_text("\n".join(json.dumps({**json.loads(x), "time": json.loads(x)["time"] + shift})
                             if x.startswith("{\"") else x for x in lines) + "\n")
    html = tmp_path / "r.html"
    r = subprocess.run([sys.executable, "-m", "inspector", "report", "--events", str(log), "--since", "1d",
                        "--html", str(html), "--json"], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["blocks"].get("domain", 0) == truth["domain"] and html.read_text().startswith("<!DOCTYPE html>")
