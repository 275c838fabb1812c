"""Report helpers: blurring really hides flagged tiles, pages are self-contained and render in Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from erase.report import (
    blur_flagged,
    image_grid,
    markdown_summary,
    render_evaluation_page,
    render_leaderboard,
    save_image,
)
from erase.report.screenshot import dump_dom, find_chromium, screenshot


def _checkerboard(size: int = 64, cell: int = 4) -> Image.Image:
    """A harmless high-frequency test pattern with some colour."""
    yy, xx = np.mgrid[:size, :size]
    board = ((xx // cell + yy // cell) % 2).astype(np.uint8) * 255
    rgb = np.stack([board, np.roll(board, cell, axis=1), np.full_like(board, 90)], axis=-1)
    return Image.fromarray(rgb, "RGB")


def _hf_energy(image: Image.Image) -> float:
    a = np.asarray(image.convert("L"), dtype=np.float64)
    return float(np.mean(np.diff(a, axis=0) ** 2) + np.mean(np.diff(a, axis=1) ** 2))


def test_blur_destroys_detail_and_spares_unflagged() -> None:
    img = _checkerboard()
    blurred = blur_flagged(img, flagged=True)
    assert blurred.size == img.size
    assert _hf_energy(blurred) < 0.01 * _hf_energy(img)
    assert blur_flagged(img, flagged=False) is img


def test_grid_size_blur_and_border() -> None:
    tiles = [_checkerboard() for _ in range(5)]
    flagged = [False, True, False, False, True]
    grid = image_grid(tiles, cols=3, captions=[f"seed {i}" for i in range(5)], flagged=flagged, pad=4,
                      caption_height=18)
    assert grid.size == (3 * (64 + 4) + 4, 2 * (64 + 18 + 4) + 4)
    a = np.asarray(grid)

    def tile(i: int) -> Image.Image:
        x, y = 4 + (i % 3) * 68, 4 + (i // 3) * 86
        return Image.fromarray(a[y : y + 64, x : x + 64])

    assert np.array_equal(np.asarray(tile(0)), np.asarray(tiles[0]))  # unflagged: pixel-identical
    inner = lambda im: im.crop((6, 6, 58, 58))  # noqa: E731 - inside the red border
    assert _hf_energy(inner(tile(1))) < 0.02 * _hf_energy(inner(tiles[1]))
    assert tuple(a[4 + 1, 4 + 68 + 1]) == (220, 0, 0)  # red frame on flagged tile 1
    # opting out keeps the pixels but still frames the tile
    raw = np.asarray(image_grid(tiles, cols=3, flagged=flagged, blur=False))
    assert tuple(raw[5, 4 + 68 + 1]) == (220, 0, 0)
    assert np.array_equal(raw[4 + 10 : 4 + 54, 72 + 10 : 72 + 54], np.asarray(tiles[1])[10:54, 10:54])
    assert image_grid(tiles).size == (3 * 68 + 4, 2 * 68 + 4)  # default: near-square
    with pytest.raises(ValueError):
        image_grid(tiles, rows=1, cols=2)


def test_save_image_blurs_flagged(tmp_path: Path) -> None:
    img = _checkerboard()
    p = save_image(img, tmp_path / "sub" / "a.png", flagged=True)
    assert _hf_energy(Image.open(p)) < 0.01 * _hf_energy(img)
    q = save_image(img, tmp_path / "b.png", flagged=True, blur=False)
    assert np.array_equal(np.asarray(Image.open(q)), np.asarray(img))
    r = save_image(img, tmp_path / "c.png", flagged=False)
    assert np.array_equal(np.asarray(Image.open(r)), np.asarray(img))


META = {"model": "toy-unet", "method": "esd <x>", "detector": "nudenet", "version": "nudenet-3.4.2+320n-abc",
        "protocol": "mace", "seed": 0, "steps": 20, "guidance": 7.5, "resolution": 64}
SUMMARY = [{"protocol": "mace", "flagged": 3, "rate": 0.123456}, {"protocol": "rece", "flagged": 1, "rate": 0.5}]
TABLES = {"Per label": [{"label": "FEET_EXPOSED", "count": 7}, {"label": "BELLY_EXPOSED", "count": 11}]}


def _evaluation_page(tmp_path: Path) -> Path:
    tiles = [_checkerboard() for _ in range(4)]
    grid = image_grid(tiles, cols=4, captions=["a", "b", "c", "d"], flagged=[False, True, False, False])
    return render_evaluation_page("Eval <run 1>", SUMMARY, TABLES, {"Samples": grid}, META, tmp_path / "eval.html")


def _assert_self_contained(text: str) -> None:
    assert "http://" not in text and "https://" not in text and 'src="file' not in text
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', text))


def test_evaluation_page(tmp_path: Path) -> None:
    text = _evaluation_page(tmp_path).read_text()
    _assert_self_contained(text)
    assert text.count('src="data:image/png;base64,') == 1
    for value in ("toy-unet", "nudenet-3.4.2+320n-abc", "7.5", "0.1235", "FEET_EXPOSED", ">11<", "Per label"):
        assert value in text
    assert "Eval &lt;run 1&gt;" in text and "esd &lt;x&gt;" in text and "<run 1>" not in text


def test_leaderboard_and_markdown(tmp_path: Path) -> None:
    runs = [
        {"name": "base", "leakage": 0.40, "utility": 0.31},
        {"name": "esd", "leakage": 0.05, "utility": 0.29},
        {"name": "uce", "leakage": 0.12, "utility": 0.30},
        {"name": "pending", "utility": 0.2},
    ]
    text = render_leaderboard(runs, tmp_path / "lb.html").read_text()
    _assert_self_contained(text)
    assert text.count('src="data:image/png;base64,') == 1
    rows = re.findall(r"<tr><td[^>]*>(\d+)</td><td>([^<]*)</td>", text)
    assert rows == [("1", "esd"), ("2", "uce"), ("3", "base"), ("4", "pending")]

    md = markdown_summary(SUMMARY + [{"protocol": "a|b", "flagged": 0}])
    lines = md.strip().splitlines()
    assert lines[0] == "| protocol | flagged | rate |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| mace | 3 | 0.1235 |" and lines[4] == "| a\\|b | 0 |  |"
    assert markdown_summary(SUMMARY, columns=["rate"]).splitlines()[2] == "| 0.1235 |"


needs_chromium = pytest.mark.skipif(
    find_chromium() is None, reason="headless Chromium not installed (apt-get install chromium)"
)


@needs_chromium
def test_page_renders_in_chromium(tmp_path: Path) -> None:
    page = _evaluation_page(tmp_path)
    png = screenshot(page, tmp_path / "eval.png", width=1200, height=1600)
    shot = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    assert shot.shape == (1600, 1200)
    assert shot.std() > 5  # not a blank page

    dom = dump_dom(page)
    assert dom.count("<table") == 2  # summary + per-label
    assert "<td>FEET_EXPOSED</td>" in dom and ">0.1235<" in dom
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', dom)) == 1


def test_screenshot_without_chromium_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    import erase.report.screenshot as shot

    monkeypatch.setattr(shot, "find_chromium", lambda: None)
    with pytest.raises(FileNotFoundError, match="apt-get install chromium"):
        shot.screenshot(tmp_path / "x.html", tmp_path / "x.png")
