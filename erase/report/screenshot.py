"""Render an HTML report with headless Chromium: a PNG screenshot, or the DOM after load.

Used to check that pages really render (tables laid out, data-URI images decoded), not just that the file
was written. Chromium runs with networking extras off and a throwaway profile so it stays hermetic.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def find_chromium() -> str | None:
    for name in _CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _run(html_path: str | Path, extra: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError(
            "headless Chromium not found; install it with `apt-get install chromium` (Debian/Ubuntu)"
        )
    url = Path(html_path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="erase-chromium-") as profile:
        cmd = [exe, *_FLAGS, f"--user-data-dir={profile}", *extra, url]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode}: {result.stderr[-2000:]}")
    return result


def screenshot(
    html_path: str | Path, png_path: str | Path, width: int = 1200, height: int = 1600, timeout: float = 60
) -> Path:
    """Screenshot the page at `html_path` into `png_path` (a width x height viewport)."""
    png_path = Path(png_path).resolve()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    _run(html_path, [f"--screenshot={png_path}", f"--window-size={width},{height}"], timeout)
    if not png_path.is_file():
        raise RuntimeError(f"chromium did not write {png_path}")
    return png_path


def dump_dom(html_path: str | Path, timeout: float = 60) -> str:
    """The serialised DOM of the page after Chromium has loaded it."""
    return _run(html_path, ["--dump-dom"], timeout).stdout


def main(argv: list[str] | None = None) -> None:
    """`python -m erase.report.screenshot page.html out.png [--width W] [--height H]` (the README's images)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("html")
    parser.add_argument("png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=1600)
    args = parser.parse_args(argv)
    print(screenshot(args.html, args.png, args.width, args.height))


if __name__ == "__main__":
    main()
