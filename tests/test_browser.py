"""The report's index.html in a real browser (Debian's headless Chromium): every image loads, every table is there.

Chromium loads a copy of index.html, in the report folder so its relative paths resolve, with one script added
that writes each image's ``naturalWidth`` into the DOM after the load event; ``--dump-dom`` hands that DOM back
(``--virtual-time-budget`` lets the page finish loading first). A screenshot of each report is kept as a test
artefact in ``$WCONV_TEST_ARTIFACTS`` (default: the test's temporary folder; its path is printed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from sweep_db import CLASSIFICATION, DENOISING, smoke_db, with_confirmation  # noqa: F401  (fixture)

from launch.cli import main

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-natural-width", img.naturalWidth);
  document.body.setAttribute("data-probed", "yes");
});
</script>
"""


def _chromium(*args: str, profile: Path) -> str:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is not installed: `apt-get install chromium` (make test installs it)")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class _Page(HTMLParser):
    """The images (src, naturalWidth) and tables (id, caption) of a dumped DOM."""

    def __init__(self):
        super().__init__()
        self.images: list[tuple[str, int]] = []
        self.tables: list[str] = []
        self.captions: list[str] = []
        self.probed = False
        self._in_caption = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append((attrs.get("src", ""), int(attrs.get("data-natural-width", "0"))))
        elif tag == "table":
            self.tables.append(attrs.get("id") or attrs.get("class") or "")
        elif tag == "caption":
            self._in_caption = True
            self.captions.append("")
        elif tag == "body":
            self.probed = attrs.get("data-probed") == "yes"

    def handle_endtag(self, tag):
        if tag == "caption":
            self._in_caption = False

    def handle_data(self, data):
        if self._in_caption:
            self.captions[-1] += data


def open_in_browser(index: Path, profile: Path) -> _Page:
    probe = index.with_name("browser-probe.html")
    probe.write_text(index.read_text().replace("</body>", PROBE + "</body>"))
    try:
        dom = _chromium("--dump-dom", "--virtual-time-budget=10000", probe.as_uri(), profile=profile)
    finally:
        probe.unlink()
    page = _Page()
    page.feed(dom)
    assert page.probed, "the page's load event never ran"
    return page


@pytest.fixture(scope="module")
def reports(smoke_db, tmp_path_factory) -> dict[str, Path]:  # noqa: F811
    """Both smoke sweeps' reports, the classification one with a confirmation (so every kind of figure is there)."""
    base = tmp_path_factory.mktemp("browser")
    db = with_confirmation(smoke_db, base / "results.db")
    out = {}
    for sweep in (CLASSIFICATION, DENOISING):
        out[sweep] = base / sweep
        assert main(["report", sweep, "--storage", f"sqlite:///{db}", "--out", str(out[sweep])]) == 0
    return out


@pytest.mark.parametrize("sweep, tables", [
    (CLASSIFICATION, ["Table 3 — classification", "Table 4 — training time", "Confirmation —"]),
    (DENOISING, ["Table 5 — denoising", "Table 6 — training time"]),
])  # fmt: skip
def test_every_image_loads_and_every_table_is_there(reports, sweep, tables, tmp_path):
    report = reports[sweep]
    page = open_in_browser(report / "index.html", tmp_path / "profile")
    pngs = sorted(p.relative_to(report).as_posix() for p in (report / "figures").glob("*.png"))
    assert sorted(src for src, _ in page.images) == pngs and pngs
    assert [src for src, width in page.images if width <= 0] == []
    for start in tables:
        assert any(caption.strip().startswith(start) for caption in page.captions), (start, page.captions)
    assert len(page.tables) == len(tables) + 1  # and the best-α table

    artefacts = Path(os.environ.get("WCONV_TEST_ARTIFACTS") or tmp_path)
    artefacts.mkdir(parents=True, exist_ok=True)
    shot = artefacts / f"report-{sweep}.png"
    _chromium(f"--screenshot={shot}", "--window-size=1280,5000", "--hide-scrollbars", (report / "index.html").as_uri(),
              profile=tmp_path / "profile")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot of the {sweep} report: {shot}")


def test_the_browser_check_sees_a_missing_image(reports, tmp_path):
    report = tmp_path / "report"
    shutil.copytree(reports[CLASSIFICATION], report)
    (report / "figures" / "curves_tiny_cnn_k3.png").unlink()
    page = open_in_browser(report / "index.html", tmp_path / "profile")
    assert [src for src, width in page.images if width <= 0] == ["figures/curves_tiny_cnn_k3.png"]
