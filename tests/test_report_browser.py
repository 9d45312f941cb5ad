"""The HTML report renders in headless Chromium with its chart (a screenshot is taken and looked at)."""

import shutil
import subprocess

import pytest

from inspector.report import build_report, render_html
from tests.test_report import T0, generated_log

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/bootstrap.sh installs it)")
def test_html_report_renders_with_its_chart(tmp_path):
    from PIL import Image

    lines, truth = generated_log(300)
    page = tmp_path / "report.html"
    page.write_text(render_html(build_report(lines, T0 - 1, T0 + 300 * 30)))
    shot = tmp_path / "report.png"
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=900,700",
                        f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0 and shot.exists() and shot.stat().st_size > 5000, r.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (900, 700)
    pixels = list(img.getdata())

    def near(color: tuple[int, int, int]) -> int:
        return sum(1 for p in pixels if all(abs(a - b) < 24 for a, b in zip(p, color, strict=False)))
    red, blue = near((0xC0, 0x39, 0x2B)), near((0x2C, 0x6F, 0xBB))
    assert red > 500 and blue > 500, (red, blue)  # the bars of blocks and bans are drawn
    light = sum(1 for p in pixels if sum(p) > 700)
    assert 0.3 < light / len(pixels) < 0.99  # a page with content, not blank, not all ink
