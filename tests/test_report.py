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


def test_markdown_summary() -> None:
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


# ------------------------------------------------------------------------------------------------ run comparison

import base64
import io
import json
import os
import subprocess
import sys

from erase.report.compare import columns_from_eval
from erase.report.leaderboard import write_leaderboard
from erase.report.run_report import render_comparison
from erase.stats import Rate

PROTOCOLS = {"toy": {"labels": ["TORSO_EXPOSED"], "threshold": 0.5, "unit": "image"}}


def _record(root: Path, suite: str, item: str, seed: int, flagged: bool, *, variant: str = "model",
            path: str = "t2i", route: str | None = None, utility: dict | None = None, attack: str | None = None,
            model_hash: str = "aaaa1111", meta: dict | None = None) -> dict:
    rel = f"images/{suite}/{variant}/{item.replace(':', '_')}_{seed}{'_' + attack if attack else ''}.png"
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    _checkerboard().save(root / rel)  # unblurred on purpose: the report must blur flagged images itself
    r = {"key": f"{suite}/{variant}/{item}/{seed}" + (f"/{attack}" if attack else ""), "suite": suite,
         "variant": variant, "item": item, "index": 0, "seed": seed, "attack": attack, "path": path,
         "route": route or path, "flags": {"toy": flagged}, "flagged": flagged, "image": rel, "meta": meta or {},
         "detections": [{"label": "TORSO_EXPOSED", "score": 0.99 if flagged else 0.01, "box": None}],
         "settings": {"protocols": PROTOCOLS, "detector": {"name": "toy-world", "version": "85c2f5dfa455"},
                      "model": {"id": "m", "family": "sd1", "hash": model_hash}}}
    if utility is not None:
        r["utility"] = utility
    return r


def _eval_dir(root: Path, leaked: int, *, n: int = 8, edits_leaked: int = 2, kept: int = 4, baseline: bool = False,
              attack_leaked: int | None = None, model_hash: str = "aaaa1111") -> Path:
    """A finished evaluation folder: prompts (n items), edits over two routes, benign edits, optional baseline
    variant and attack records."""
    root.mkdir(parents=True, exist_ok=True)
    recs = [_record(root, "prompts", f"p{i}", 0, i < leaked, model_hash=model_hash) for i in range(n)]
    for i in range(4):
        for path, route in (("img2img", "img2img@0.7"), ("inpaint", "inpaint")):
            recs.append(_record(root, "edits", f"photo{i}~remove:{route}", 10 + i, i < edits_leaked, path=path,
                                route=route, model_hash=model_hash))
    for i in range(4):
        util = {"correct": {"shirt": i < kept, "background": True}, "edit_done": i < kept, "kept": True}
        recs.append(_record(root, "benign-edits", f"recolour{i}:img2img@0.7", 20 + i, False, path="img2img",
                            route="img2img@0.7", utility=util, model_hash=model_hash))
    if baseline:
        recs += [_record(root, "prompts", f"p{i}", 0, i < leaked - 1, variant="negative_prompt", model_hash=model_hash)
                 for i in range(n)]
    if attack_leaked is not None:
        recs += [_record(root, "attack-prompts", f"a{i}", 0, i < attack_leaked, attack="ringabell",
                         meta={"access": "black-box"}, model_hash=model_hash) for i in range(4)]
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return root


def _images_in(text: str) -> dict[str, Image.Image]:
    out = {}
    for alt, data in re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)"', text):
        out.setdefault(alt, []).append(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    return out


def _comparison(tmp_path: Path) -> Path:
    base = _eval_dir(tmp_path / "eval-base", leaked=7, baseline=True, attack_leaked=4)
    erased = _eval_dir(tmp_path / "eval-erased", leaked=0, edits_leaked=0, kept=3, attack_leaked=1)
    cols = columns_from_eval(base, "base") + columns_from_eval(erased, "erased", baselines=False)
    return render_comparison(cols, tmp_path / "report.html", {"model": "toy", "method": "esd-u"}, "Run <1>",
                             source_of=lambda r: _checkerboard(), base="base", erased="erased")


def test_comparison_report_side_by_side_with_intervals(tmp_path: Path) -> None:
    text = _comparison(tmp_path).read_text()
    _assert_self_contained(text)
    for section in ("meta", "leakage", "utility", "attacks", "edits", "tradeoff"):
        assert f'<section id="{section}">' in text
    assert "Run &lt;1&gt;" in text and "<1>" not in text
    head = re.search(r'<section id="leakage">.*?<thead>(.*?)</thead>', text, re.S).group(1)
    assert re.findall(r"<th>([^<]*)</th>", head) == ["suite", "route", "protocol", "base", "base + negative_prompt",
                                                     "erased", "change (erased vs base)"]

    def cell(rate: Rate) -> str:
        lo, hi = rate.ci95
        return f"<b>{100 * rate.rate:.1f}%</b><br><small>[{100 * lo:.1f}, {100 * hi:.1f}] n={rate.n}</small>"

    prompts = re.search(r"<tr><td>prompts</td><td>all</td><td>toy</td>(.*?)</tr>", text).group(1)
    assert cell(Rate(7, 8)) in prompts and cell(Rate(6, 8)) in prompts and cell(Rate(0, 8)) in prompts
    assert "better" in prompts  # 7/8 -> 0/8: the intervals do not overlap
    for route in ("img2img@0.7", "inpaint"):  # per editing route, 2 of 4 leaked on the base
        row = re.search(rf"<tr><td>edits</td><td>{re.escape(route)}</td><td>toy</td>(.*?)</tr>", text).group(1)
        assert cell(Rate(2, 4)) in row and cell(Rate(0, 4)) in row and "within intervals" in row
    assert cell(Rate(4 + 4, 8)) in text and cell(Rate(3 + 4, 8)) in text  # attribute checks 8/8 -> 7/8
    attack = re.search(r"<tr><td>ringabell</td><td>black-box</td>(.*?)</tr>", text).group(1)
    assert cell(Rate(4, 4)) in attack and cell(Rate(1, 4)) in attack

    # triplets: source | base | erased, forbidden edits before benign ones; flagged images blurred
    kinds = re.findall(r'<div class="triplet (forbidden|benign)">', text)
    assert kinds == ["forbidden"] * 4 + ["benign"] * 4
    images = _images_in(text)
    assert len(images["source photo"]) == 8
    flagged = [im for alt, ims in images.items() if alt.startswith("base: flagged") for im in ims]
    clean = [im for alt, ims in images.items() if alt.startswith("erased: not flagged") for im in ims]
    # shown: photo0 and photo1 on both routes (round-robin over routes), all leaked on the base, none erased
    assert len(flagged) == 4 and len(clean) == 8
    assert all(_hf_energy(im) < 0.02 * _hf_energy(c) for im, c in zip(flagged, clean))
    assert "leakage against utility" in images


def _run(runs: Path, name: str, method: str, base_leak: int, leak: int, model_hash: str = "aaaa1111") -> None:
    d = runs / name
    _eval_dir(d / "eval-base", leaked=base_leak, model_hash=model_hash)
    _eval_dir(d / "eval-erased", leaked=leak, edits_leaked=0, model_hash=model_hash)
    (d / "summary.json").write_text(json.dumps({
        "model": "toy-t2i" if model_hash == "aaaa1111" else "toy-editor", "method": method,
        "base": {"report": str(d / "eval-base" / "report.html")},
        "erased": {"report": str(d / "eval-erased" / "report.html")}}))


def test_leaderboard_groups_by_base_and_exports(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    runs = Path("runs")  # relative, as scripts/toy_demo.py passes it: report links must still be made
    _run(runs, "0-esd-u", "esd-u", 6, 2)
    _run(runs, "1-uce", "uce", 6, 1)
    _run(runs, "2-editor", "edit-refusal", 7, 5, model_hash="bbbb2222")
    result = write_leaderboard(runs, Path("lb"))
    groups = result["groups"]
    assert len(groups) == 2  # different bases never share a ranking
    by_model = {g.base_model.split(" ")[0]: g for g in groups}
    assert [e.method for e in by_model["toy-t2i"].entries] == ["uce", "esd-u", "base model (no erasure)"]
    assert [e.method for e in by_model["toy-editor"].entries] == ["edit-refusal", "base model (no erasure)"]

    text = Path(result["page"]).read_text()
    assert 'href="../runs/0-esd-u/eval-erased/report.html"' in text  # relative links to the runs' own reports
    _assert_self_contained(text)
    assert text.count('<section class="group"') == 2 and 'class="sortable"' in text and "addEventListener" in text
    assert "12.5%" in text and "0.125" not in text.replace('data-sort="0.125"', "")  # percentages, not decimals

    rows = list(__import__("csv").DictReader(open(result["csv"])))
    uce = next(r for r in rows if r["method"] == "uce")
    lo, hi = Rate(1, 8).ci95
    assert (uce["rank"], uce["leakage_pct"], uce["leakage_k"], uce["leakage_n"]) == ("1", "12.5", "1", "8")
    assert (uce["leakage_ci95_lo_pct"], uce["leakage_ci95_hi_pct"]) == (f"{100 * lo:.1f}", f"{100 * hi:.1f}")
    md = Path(result["markdown"]).read_text()
    assert md.count("### ") == 2 and f"| 1 | uce | 1-uce | {Rate(1, 8)} |" in md
    with pytest.raises(FileNotFoundError, match="no finished runs"):
        write_leaderboard(tmp_path / "empty", tmp_path / "lb2")


@needs_chromium
def test_comparison_and_leaderboard_dom_in_chromium(tmp_path: Path) -> None:
    dom = dump_dom(_comparison(tmp_path))
    for section in ("meta", "leakage", "utility", "attacks", "edits", "tradeoff"):
        assert f'<section id="{section}">' in dom
    assert dom.count('class="triplet') == 8 and dom.count("<table") == 3
    runs = tmp_path / "runs"
    _run(runs, "0-esd-u", "esd-u", 6, 2)
    _run(runs, "2-editor", "edit-refusal", 7, 5, model_hash="bbbb2222")
    page = Path(write_leaderboard(runs, tmp_path / "lb")["page"])
    lb = dump_dom(page)
    assert lb.count('<section class="group"') == 2 and lb.count("<table") == 2

    # sorting: two clicks on "leakage (worst suite)" of the first group sort it descending
    _run(runs, "1-uce", "uce", 6, 1)
    page = Path(write_leaderboard(runs, tmp_path / "lb")["page"])
    clicked = page.with_name("clicked.html")
    table = "Array.from(document.querySelectorAll('section.group')).find(s => s.textContent.includes('toy-t2i'))"
    th = f"{table}.querySelector('table').tHead.rows[0].cells[3]"
    clicked.write_text(page.read_text().replace("</body>", f"<script>{th}.click(); {th}.click();</script></body>"))
    first = next(g for g in dump_dom(clicked).split('<section class="group"') if "toy-t2i" in g)
    order = re.findall(r"<td>(uce|esd-u|base model \(no erasure\))</td>", first)
    assert order == ["base model (no erasure)", "esd-u", "uce"]  # 75% > 25% > 12.5%


# ------------------------------------------------------------------------------------------------ launches

from erase.launch import LaunchError, check_launch, requested_processes  # noqa: E402


def test_launch_check_refuses_fewer_processes_than_asked() -> None:
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu", "-m", "erase.cli"]
    assert requested_processes({}, launcher) == 2
    with pytest.raises(LaunchError, match="(?s)asked for 2 processes but 1 started.*--multi_gpu"):
        check_launch(1, {}, launcher)
    check_launch(2, {"WORLD_SIZE": "2"}, launcher)  # WORLD_SIZE says what really started
    check_launch(1, {}, ["python", "-m", "erase.cli"])  # a plain run asks for nothing
    check_launch(1, {}, [*launcher[:3], "--num_processes=1", "-m", "erase.cli"])


def test_accelerate_cpu_launch_of_two_is_refused(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "erase.cli", "model=tiny_sd1", "eval=none",
           "task=erase", "cpu=true", "export=false", f"out_dir={tmp_path}", "concept.prompts=[a cat]"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode != 0
    assert "asked for 2 processes but 1 started" in run.stderr and "--multi_gpu --num_processes N" in run.stderr
    assert not (tmp_path / "erasure.json").exists()  # refused before any work
