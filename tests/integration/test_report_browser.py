"""report.html in a real browser: Debian's headless Chromium at 5 and 20 sites.

Each case builds a report from a synthetic run (no training), copies report.html alone into an
empty folder (as if mailed), adds a small probe script that records after the load event
whether every image decoded and where the summary sits, and loads it once: a 1280×800
screenshot of the first viewport (kept under the test's tmp folder) and the DOM with the
probe's findings. The 5-site report is also printed to PDF. Skipped without Chromium, except
under ``CI``, where Chromium is part of the set-up (``.ci/run``) and its absence fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest

from fedlora.report.build import write_report
from fedlora.report.pdf import headless_args, print_pdf
from tests.report_runs import Plan, write_run

WIDTH, HEIGHT = 1280, 800
PROBE = """<script>
window.addEventListener("load", () => {
  const rect = (el) => { const r = el.getBoundingClientRect();
    return {top: r.top + window.scrollY, bottom: r.bottom + window.scrollY}; };
  const summary = document.getElementById("summary");
  const probe = {
    width: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    images: [...document.images].map((img) => ({
      file: img.dataset.file, complete: img.complete, width: img.naturalWidth })),
    heading: rect(summary.querySelector("h2")),
    guarantee: rect(summary.querySelector(".guarantee")),
    meters: [...summary.querySelectorAll(".meter")].map(rect),
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.hidden = true;  // in the DOM dump, not on the screenshot
  out.textContent = JSON.stringify(probe);
  document.body.appendChild(out);
});
</script>"""


def _chromium(which: Any = shutil.which, fallback: Path = Path("/usr/bin/chromium")) -> str:
    found = which("chromium") or (str(fallback) if fallback.is_file() else None)
    if found:
        return str(found)
    reason = "needs Debian's chromium (apt-get install chromium); .ci/run installs it in CI"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI is set but chromium is missing: {reason}")
    pytest.skip(reason)


@pytest.mark.parametrize(("ci", "outcome"), [("true", "Failed"), ("", "Skipped")])
def test_without_chromium_ci_fails_and_a_laptop_skips(
    ci: str, outcome: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(BaseException) as raised:
        _chromium(lambda _name: None, tmp_path / "no-chromium")
    assert type(raised.value).__name__ == outcome


def _run(chromium: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [chromium, *headless_args(profile), f"--window-size={WIDTH},{HEIGHT}", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def _load(chromium: str, page: Path, screenshot: Path, profile: Path) -> dict[str, Any]:
    """Load ``page`` with the probe once: a screenshot of its first viewport, and the probe."""
    probed = page.with_name("probe.html")
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"))
    done = _run(chromium, profile, f"--screenshot={screenshot}", "--dump-dom", probed.as_uri())
    match = re.search(r'<pre id="probe"[^>]*>(.*?)</pre>', done.stdout, re.DOTALL)
    assert match, f"no probe in the DOM (exit {done.returncode}): {done.stderr[-1500:]}"
    assert screenshot.is_file(), done.stderr[-1500:]
    return dict(json.loads(match.group(1)))


@pytest.mark.parametrize("sites", [5, 20])
def test_report_in_headless_chromium(sites: int, tmp_path: Path):
    chromium = _chromium()
    run_dir = write_run(tmp_path / "run", Plan(sites=sites, rounds=3, refuse_last=True))
    page = write_report(run_dir) / "report.html"
    alone = tmp_path / "mailed" / "report.html"  # sent alone: no PNG beside it
    alone.parent.mkdir()
    shutil.copy(page, alone)
    screenshot = tmp_path / f"report-{sites}-sites.png"

    probe = _load(chromium, alone, screenshot, tmp_path / "profile")

    assert _png_size(screenshot) == (WIDTH, HEIGHT)
    assert probe["width"] == WIDTH
    assert [image["file"] for image in probe["images"]] == ["epsilon.png", "utility.png"]
    for image in probe["images"]:
        assert image["complete"] and image["width"] > 0, image
    assert probe["scrollWidth"] <= WIDTH  # nothing wider than the window
    assert 0 <= probe["heading"]["top"] < probe["guarantee"]["bottom"] <= HEIGHT
    assert len(probe["meters"]) == sites
    assert max(meter["bottom"] for meter in probe["meters"]) <= HEIGHT  # every site's line
    if sites == 5:  # and it prints to a PDF a person can file
        data = print_pdf(page, chromium).read_bytes()
        assert data.startswith(b"%PDF-")
        assert len(re.findall(rb"/Type\s*/Page[^s]", data)) >= 2
