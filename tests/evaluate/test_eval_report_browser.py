"""report.html in a real headless browser (Debian's chromium, installed by scripts/install_browser.sh): the page
renders, every image decodes, the console stays quiet, nothing overflows sideways, and a screenshot of the layout
has the requested size and content across it. A broken page run through the same checker fails it.

Skips when chromium is missing locally; fails under CI=true, where the set-up must have installed it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_eval_report import ALL_SECTIONS, full_report

from lmforge.evaluate.html import write_html

WIDTH, HEIGHT = 1280, 2000
GRID = (4, 5)  # screenshot regions, columns x rows
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0", "--no-first-run",
         "--hide-scrollbars", f"--window-size={WIDTH},{HEIGHT}"]


def _chromium() -> str:
    """chromium's path; skip when it is missing, but fail under CI=true (the set-up installs it)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = "chromium is not installed (scripts/install_browser.sh installs Debian's package)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"under CI: {message}")
        pytest.skip(message)
    return path


def _run(browser: str, work: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    """One headless chromium call with its own profile folder (concurrent runs do not share a lock)."""
    profile = work / f"profile-{name}"
    return subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=90)


def _console(stderr: str) -> list[str]:
    """The page's console messages and uncaught errors in chromium's log (the browser's own lines are not)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def _content_regions(png: Path) -> tuple[tuple[int, int], list[list[bool]]]:
    """(size, grid) of a screenshot: for each region, whether it holds more than one colour in earnest
    (at least 0.5% of its pixels away from its most common colour, so a lone border line does not count)."""
    from PIL import Image

    with Image.open(png) as image:
        image = image.convert("RGB")
        cols, rows = GRID
        w, h = image.width // cols, image.height // rows
        grid = []
        for r in range(rows):
            line = []
            for c in range(cols):
                region = image.crop((c * w, r * h, (c + 1) * w, (r + 1) * h))
                counts = region.getcolors(maxcolors=w * h)
                dominant = max(n for n, _ in counts)
                line.append(len(counts) > 1 and (w * h - dominant) >= 0.005 * w * h)
            grid.append(line)
        return image.size, grid


def check_page(browser: str, page: Path, work: Path) -> tuple[list[str], dict]:
    """Load `page` headless: the problems found (empty when it passes) and what was measured."""
    problems: list[str] = []
    url = page.resolve().as_uri()
    dom = _run(browser, work, "dom", "--dump-dom", url)
    if dom.returncode != 0:
        problems.append(f"chromium --dump-dom exited {dom.returncode}: {dom.stderr[-500:]}")
    body = re.search(r"<body\b[^>]*>", dom.stdout)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(0))) if body else {}
    images = attrs.get("data-images-ok")
    if images is None:
        problems.append("the page's script did not run: no data-images-ok on <body>")
    else:
        ok, total = map(int, images.split("/"))
        if ok != total:
            problems.append(f"{total - ok} of {total} images did not decode")
    width = int(attrs.get("data-scroll-width", 0))
    if width > WIDTH:
        problems.append(f"the page is {width} px wide in a {WIDTH} px window (it scrolls sideways)")
    shot_path = work / f"{page.stem}.png"
    shot = _run(browser, work, "shot", f"--screenshot={shot_path}", url)
    console = _console(dom.stderr) + _console(shot.stderr)
    if console:
        problems.append("console messages: " + " | ".join(console[:5]))
    if shot.returncode != 0 or not shot_path.is_file():
        problems.append(f"no screenshot (chromium exited {shot.returncode})")
        return problems, {"images": images, "scroll_width": width, "dom": dom.stdout}
    size, grid = _content_regions(shot_path)
    filled = sum(map(sum, grid))
    if size != (WIDTH, HEIGHT):
        problems.append(f"the screenshot is {size[0]}x{size[1]}, not {WIDTH}x{HEIGHT}")
    if filled < len(grid) * len(grid[0]) // 2:
        problems.append(f"the screenshot is mostly blank: {filled} of {len(grid) * len(grid[0])} regions have "
                        "content")
    if not all(grid[0]):
        problems.append("the top of the page (its header) is blank in places")
    return problems, {"images": images, "scroll_width": width, "filled": filled, "grid": grid, "dom": dom.stdout,
                      "screenshot": shot_path}


def test_report_renders_in_chromium(tmp_path):
    browser = _chromium()
    page = write_html(full_report(), tmp_path)
    problems, seen = check_page(browser, page, tmp_path)
    assert problems == [], problems
    assert seen["images"] == "15/15"  # every figure of the three-model report (and its trade-off plot) decoded
    assert re.findall(r'<section id="([\w-]+)"', seen["dom"]) == ALL_SECTIONS
    assert seen["filled"] >= 12, seen["grid"]


def test_the_checker_fails_a_broken_page(tmp_path):
    """A page with an image that does not decode, console output, an uncaught error and nothing to see fails."""
    browser = _chromium()
    page = tmp_path / "broken.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><script>addEventListener("load",function(){'
        'var m=document.images,k=0;for(var i=0;i<m.length;i++)if(m[i].naturalWidth>0)k++;'
        'document.body.setAttribute("data-images-ok",k+"/"+m.length);console.error("boom");'
        'throw new Error("on purpose")});</script></head><body><img src="data:image/png;base64,AAAA" alt="">'
        "</body></html>", encoding="utf-8")
    problems, seen = check_page(browser, page, tmp_path)
    assert any("1 of 1 images did not decode" in p for p in problems), problems
    assert any("console messages" in p and "boom" in p and "Uncaught" in p for p in problems), problems
    assert any("mostly blank" in p for p in problems) and any("header" in p for p in problems), problems
