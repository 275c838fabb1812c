"""The toy editor's training triplets: exposed source photos under benign edits (a content-preserving editor),
the shirt edits on clothed photos only, evaluation draws unchanged; and building the editor alone."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from erase.toyworld import world

REPO = Path(__file__).resolve().parents[1]


def test_exposed_sources_under_benign_edits_stay_exposed() -> None:
    rng = np.random.default_rng(0)
    for kind in world.EXPOSED_SOURCE_EDIT_KINDS:
        for _ in range(30):
            photo, text, result = world.edit_triplet(rng, kind, p_exposed_source=1.0)
            assert photo.exposed and result.exposed, (kind, photo, result)
            assert photo != result and (photo.trousers, photo.skin, photo.dx) == (result.trousers, result.skin,
                                                                                  result.dx)
            assert text in {t.format(v=v) for t in world.edit_phrasings(kind)
                            for v in (*world.BACKGROUND_NAMES, *world.OBJECT_NAMES)}


def test_shirt_edits_always_get_a_clothed_photo() -> None:
    rng = np.random.default_rng(1)
    assert "recolour_shirt" not in world.EXPOSED_SOURCE_EDIT_KINDS
    for kind in ("recolour_shirt", "remove_shirt"):
        for _ in range(30):
            photo, _, result = world.edit_triplet(rng, kind, p_exposed_source=1.0)
            assert not photo.exposed
            assert result.exposed == (kind == "remove_shirt")


def test_a_share_of_exposed_sources_mixes_both() -> None:
    rng = np.random.default_rng(2)
    exposed = Counter(world.edit_triplet(rng, "change_background", p_exposed_source=0.5)[0].exposed
                      for _ in range(200))
    assert 60 < exposed[True] < 140, exposed  # Binomial(200, 0.5): far inside


def test_evaluation_draws_are_unchanged() -> None:
    """edit_prompts (evaluation material) still draws clothed photos, the very scenes it always drew."""
    photo, text, result = world.edit_prompts(1, "change_background")[0]
    assert photo == world.Scene(shirt="yellow", trousers="white", background="night", obj="ball", skin="medium",
                                dx=-1.789993929150591, dy=0.9852876423846391, scale=0.980103601651133,
                                obj_left=True)
    assert text == "set the background to beach" and result.background == "beach"
    for kind in world.EDIT_KINDS:
        assert not any(p.exposed for p, _, _ in world.edit_prompts(20, kind))
        rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
        assert world.edit_triplet(rng_a, kind) == world.edit_triplet(rng_b, kind, p_exposed_source=0.0)


def test_bad_share_is_refused() -> None:
    with pytest.raises(ValueError, match="p_exposed_source"):
        world.edit_triplet(np.random.default_rng(0), "add_object", p_exposed_source=1.5)


def test_editor_dataset_holds_exposed_sources_only_under_benign_edits() -> None:
    import torch

    from erase.toyworld.tokenizer import build_tokenizer
    from erase.toyworld.training.editor import EDIT_MIX, P_EXPOSED_SOURCE, editor_dataset

    assert P_EXPOSED_SOURCE > 0  # the build's default is the content-preserving editor
    tok = build_tokenizer()
    kinds = [k for k, share in EDIT_MIX.items() for _ in range(round(share * 20))]
    photos, results, _ = editor_dataset(200, 0, tok, p_exposed_source=1.0)
    clothed, _, _ = editor_dataset(200, 0, tok, p_exposed_source=0.0)
    for i in range(200):
        kind = kinds[i % len(kinds)]
        same = bool(torch.equal(photos[i], clothed[i]))
        # the exposed photos differ from the clothed ones only where the share reached them
        assert same == (kind not in world.EXPOSED_SOURCE_EDIT_KINDS), (i, kind)


def test_build_script_trains_the_editor_alone_from_given_t2i(tmp_path: Path) -> None:
    t2i = REPO / "erase" / "toyworld" / "weights" / "t2i"
    if not (t2i / "model_index.json").is_file():
        pytest.skip("the shipped toy weights are not here")
    script = str(REPO / "scripts" / "build_toy_world.py")
    run = subprocess.run([sys.executable, script, "--only", "editor", "--out", str(tmp_path), "--t2i", str(t2i),
                          "--steps-scale", "0.0005"], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "TOYWORLD_THREADS": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "editor" / "model_index.json").is_file() and not (tmp_path / "t2i").exists()
    bad = subprocess.run([sys.executable, script, "--only", "editor", "--out", str(tmp_path / "x"), "--t2i",
                          str(tmp_path / "nothing")], capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "model_index.json missing" in bad.stderr
    mixed = subprocess.run([sys.executable, script, "--only", "t2i", "editor", "--out", str(tmp_path / "y"),
                            "--t2i", str(t2i)], capture_output=True, text=True, timeout=600)
    assert mixed.returncode != 0 and "--t2i" in mixed.stderr and not (tmp_path / "y").exists()
