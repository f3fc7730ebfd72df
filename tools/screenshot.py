"""Screenshot a local HTML page with headless Chromium, to see what a browser shows of reports/index.html.

python tools/screenshot.py reports/index.html shot.png [--size 1400x4000]

Chromium comes from Debian (`apt-get install chromium`); `$IER_CHROMIUM` names another binary. The page is
opened as a file:// URL, as a researcher would open it, so no server is involved.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "chromium-headless-shell", "google-chrome", "google-chrome-stable")
WINDOW = "1400x4000"
TIMEOUT_S = 120


def find_chromium() -> str | None:
    """The path of a Chromium binary: `$IER_CHROMIUM`, else the first of BROWSERS on PATH, else None."""
    override = os.environ.get("IER_CHROMIUM")
    if override:
        return shutil.which(override)
    return next((path for path in map(shutil.which, BROWSERS) if path), None)


def screenshot(page: Path, shot: Path, window: str = WINDOW) -> None:
    """Render `page` in a `window` ("WIDTHxHEIGHT") viewport and write it to `shot` as PNG."""
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no Chromium found: `apt-get install chromium` (Debian), or set IER_CHROMIUM")
    width, height = window.split("x")
    shot = shot.resolve()
    shot.unlink(missing_ok=True)  # so that a stale file cannot pass for this run's screenshot
    with tempfile.TemporaryDirectory() as profile:
        # --no-sandbox: Chromium's sandbox refuses to start as root, which CI and containers run as.
        # A throwaway profile: no first-run state or lock shared with a browser the user has open.
        command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                   f"--user-data-dir={profile}", f"--window-size={width},{height}", f"--screenshot={shot}",
                   page.resolve().as_uri()]
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    if result.returncode != 0 or not shot.exists():
        # Chromium logs harmless D-Bus complaints on every run; only a failure is worth showing.
        raise RuntimeError(f"{chromium} exited {result.returncode} without writing {shot}:\n{result.stderr[-2000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python tools/screenshot.py", description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the HTML file")
    parser.add_argument("shot", type=Path, help="the PNG to write")
    parser.add_argument("--size", default=WINDOW, help=f"viewport WIDTHxHEIGHT (default {WINDOW})")
    args = parser.parse_args()
    if not args.page.is_file():
        sys.exit(f"screenshot: {args.page}: no such file")
    try:
        screenshot(args.page, args.shot, args.size)
    except (RuntimeError, subprocess.TimeoutExpired) as err:
        sys.exit(f"screenshot: {err}")
    print(f"screenshot: wrote {args.shot}")


if __name__ == "__main__":
    main()
