"""``report.pdf``: the HTML report printed by a headless Chromium, when one is installed.

Optional: ``report.html`` is already print-ready (A4 print CSS), so any browser's "Print → Save
as PDF" gives the same document. ``fedlora report RUN_DIR --pdf`` uses the Chromium or Chrome
found on ``PATH`` (nothing is downloaded) with the flags below: no network, no first-run,
no sync, and a throw-away profile.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from fedlora.errors import RunDirError

logger = logging.getLogger(__name__)

PDF_FILE = "report.pdf"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
"""Executable names tried in order on ``PATH``."""
PDF_TIMEOUT_S = 120.0


def find_browser() -> str | None:
    """The first headless-capable Chromium or Chrome on ``PATH``, or ``None``."""
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def headless_args(user_data_dir: Path) -> list[str]:
    """Flags for a quiet, offline headless Chromium with a throw-away profile.

    Parameters
    ----------
    user_data_dir
        An empty folder for the browser's profile (removed by the caller).

    Returns
    -------
    list of str
        The flags, to follow the executable and precede the action and the page.
    """
    return [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={user_data_dir}",
    ]


def print_pdf(html_file: Path, browser: str | None = None) -> Path:
    """Print ``html_file`` to ``report.pdf`` beside it with a headless Chromium.

    Parameters
    ----------
    html_file
        The report's ``report.html``.
    browser
        The browser executable; the first of :data:`BROWSERS` on ``PATH`` when ``None``.

    Returns
    -------
    Path
        The PDF file.

    Raises
    ------
    RunDirError
        When no browser is found, or it fails or writes no PDF (with what it said).
    """
    browser = browser or find_browser()
    if browser is None:
        raise RunDirError(
            "--pdf needs Chromium or Chrome on PATH (Debian: apt-get install chromium); "
            f"or open {html_file} in a browser and print it to PDF"
        )
    pdf = html_file.with_name(PDF_FILE)
    partial = pdf.with_name(f".{PDF_FILE}.partial")
    with tempfile.TemporaryDirectory(prefix="fedlora-pdf-") as profile:
        command = [
            browser,
            *headless_args(Path(profile)),
            "--no-pdf-header-footer",
            f"--print-to-pdf={partial}",
            html_file.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=PDF_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RunDirError(f"could not print {html_file} to PDF with {browser}: {exc}") from exc
    if done.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
        partial.unlink(missing_ok=True)
        said = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RunDirError(
            f"{browser} did not print {html_file} to PDF (exit {done.returncode}): {said}"
        )
    partial.replace(pdf)
    logger.info("wrote %s", pdf)
    return pdf
