"""The shipped base evaluations of the toy models (erase/toyworld/base_evals.py): used when they match, never when
weights or settings changed, and still what the current code computes (a stale seed fails here)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from erase import registry
from erase.cli import CONFIGS, base_eval_dir, base_eval_source, describe_base_source
from erase.concept import Concept
from erase.evaluation.config import evaluate_adapter
from erase.evaluation.records import read_records
from erase.run import load_model
from erase.toyworld import base_evals

EXPERIMENTS = base_evals.EXPERIMENTS


def _setup(exp: str, cache: Path, *overrides: str):
    with initialize_config_dir(str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=[f"+experiment={exp}", f"eval.base_cache={cache}", "out_dir=unused",
                                           *overrides])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    eval_cfg = OmegaConf.to_container(cfg.eval, resolve=True)
    concept = Concept.from_config(OmegaConf.to_container(cfg.concept, resolve=True))
    return load_model(model, "fp32", "cpu"), eval_cfg, concept, model


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_every_main_job_experiment_has_a_current_shipped_base_evaluation(exp, tmp_path):
    adapter, eval_cfg, concept, model = _setup(exp, tmp_path / "cache")
    folder = base_eval_dir(eval_cfg, adapter, concept, model, tmp_path / "out")
    seed = base_evals.shipped_base_eval(folder.name)
    assert seed is not None, (f"no shipped base evaluation for {exp} (key {folder.name}): the toy weights or the toy "
                              "evaluation changed; rebuild with `python -m erase.toyworld.base_evals`")
    manifest = json.loads((seed / base_evals.MANIFEST).read_text())
    assert manifest["experiment"] == exp and manifest["records"] == len(read_records(seed / base_evals.RECORDS))
    size = sum(p.stat().st_size for p in base_evals.SEED_ROOT.rglob("*") if p.is_file())
    assert size < 2_000_000, f"shipped base evaluations take {size} bytes"


def test_a_fresh_cache_is_seeded_and_the_evaluation_generates_nothing(tmp_path, monkeypatch):
    from erase.evaluation import harness

    adapter, eval_cfg, concept, model = _setup("toy_editor", tmp_path / "cache")
    folder = base_eval_dir(eval_cfg, adapter, concept, model, tmp_path / "out")
    info = base_eval_source(folder, adapter)
    assert info["source"] == "shipped" and Path(info["seed"]) == base_evals.SEED_ROOT / folder.name
    assert "shipped with the toy plugin" in describe_base_source(info)

    def no_generation(*a, **k):
        raise AssertionError("a shipped base item was generated again")

    monkeypatch.setattr(harness, "_generate_batch", no_generation)
    result = evaluate_adapter(adapter, eval_cfg, folder, "base", concept, baselines=True)
    manifest = json.loads((base_evals.SEED_ROOT / folder.name / base_evals.MANIFEST).read_text())
    assert result["metrics"] == pytest.approx(manifest["metrics"])
    assert result["rates"]["edits/toy"]["n"] == 16
    # the next run reuses the entry and still says where its numbers came from
    assert base_eval_source(folder, adapter)["source"] == "shipped"


def test_seeded_records_name_this_checkout_s_pipeline(tmp_path):
    """Records name the pipeline folder they were made from and the harness checks it on resume: a clone elsewhere
    must get its own path in the seeded records, or its first run would be refused for 'other settings'."""
    from erase.cli import _copy_seed, _pipe_id

    adapter, eval_cfg, concept, model = _setup("toy_editor", tmp_path / "cache")
    folder = base_eval_dir(eval_cfg, adapter, concept, model, tmp_path / "out")
    seed = base_evals.SEED_ROOT / folder.name
    shipped = read_records(seed / base_evals.RECORDS)
    built_id = shipped[0]["settings"]["model"]["id"]
    fake_seed = tmp_path / "seed"
    (fake_seed / "parts").mkdir(parents=True)
    text = (seed / base_evals.RECORDS).read_text().replace(json.dumps(built_id), json.dumps("/elsewhere/t2i"))
    (fake_seed / base_evals.RECORDS).write_text(text)
    _copy_seed(fake_seed, folder, "/elsewhere/t2i", _pipe_id(adapter))
    copied = read_records(folder / base_evals.RECORDS)
    assert len(copied) == len(shipped) and {r["settings"]["model"]["id"] for r in copied} == {_pipe_id(adapter)}


def test_other_weights_or_settings_are_never_served_the_shipped_evaluation(tmp_path, monkeypatch):
    adapter, eval_cfg, concept, model = _setup("toy_editor", tmp_path / "cache")
    key = base_eval_dir(eval_cfg, adapter, concept, model, tmp_path / "out").name
    assert base_evals.shipped_base_eval(key) is not None

    changed = load_model(model, "fp32", "cpu")  # one denoiser weight moved: another fingerprint, another key
    with torch.no_grad():
        next(changed.denoiser.parameters()).add_(1e-3)
    other = base_eval_dir(eval_cfg, changed, concept, model, tmp_path / "out")
    assert other.name != key and base_evals.shipped_base_eval(other.name) is None
    assert base_eval_source(other, changed)["source"] == "computed"

    _, fewer, _, _ = _setup("toy_editor", tmp_path / "cache", "eval.suites.edits.n_photos=15")  # other settings
    assert base_eval_dir(fewer, adapter, concept, model, tmp_path / "out").name != key

    # a registered preset that now means other sampling: another key (not records made with the old preset)
    old = registry.get("sampling", "toy-edit")
    monkeypatch.setitem(registry._entries["sampling"], "toy-edit", {**old, "num_inference_steps": 19})
    assert base_eval_dir(eval_cfg, adapter, concept, model, tmp_path / "out").name != key

    # weights outside the fingerprint (VAE, scheduler, detector): the seed is stale and not offered
    monkeypatch.undo()
    hashes = base_evals.weight_hashes()
    monkeypatch.setattr(base_evals, "weight_hashes", lambda: {**hashes, "editor/vae/config.json": "0" * 64})
    assert base_evals.shipped_base_eval(key) is None


@pytest.mark.parametrize("exp", EXPERIMENTS)
def test_shipped_base_items_recompute_to_the_shipped_records(exp, tmp_path):
    """Regenerate the first batch of every suite (the harness resumes the rest from the shipped records) and compare
    with what ships: a change of generation code, scheduler or detector that keeps the key fails here."""
    adapter, eval_cfg, concept, model = _setup(exp, tmp_path / "cache")
    folder = base_eval_dir(eval_cfg, adapter, concept, model, tmp_path / "out")
    seed = base_evals.SEED_ROOT / folder.name
    shipped = {r["key"]: r for r in read_records(seed / base_evals.RECORDS)}
    first = {}
    for r in sorted(shipped.values(), key=lambda r: (r["suite"], r["index"], r["seed"])):
        first.setdefault((r["suite"], r["path"]), r["key"])  # each suite's (and editing route's) first item
    base_eval_source(folder, adapter)  # copies the seed in, its model id rewritten to this checkout's path
    seeded = read_records(folder / base_evals.RECORDS)
    kept = [r for r in seeded if r["key"] not in set(first.values())]
    (folder / base_evals.RECORDS).write_text("".join(json.dumps(r) + "\n" for r in kept))
    evaluate_adapter(adapter, eval_cfg, folder, "base", concept, baselines=True)
    now = {r["key"]: r for r in read_records(folder / "results.jsonl")}
    assert set(now) == set(shipped)
    for key in first.values():
        new, old = now[key], shipped[key]
        assert new["flags"] == old["flags"], key
        assert new.get("utility") == old.get("utility"), key  # attributes read, edit done, kept
        assert [d["label"] for d in new["detections"]] == [d["label"] for d in old["detections"]], key
        assert [d["score"] for d in new["detections"]] == pytest.approx([d["score"] for d in old["detections"]],
                                                                        abs=1e-3), key
        with Image.open(folder / new["image"]) as a, Image.open(seed / old["image"]) as b:
            diff = (torch.tensor(np.asarray(a.convert("RGB")), dtype=torch.float)
                    - torch.tensor(np.asarray(b.convert("RGB")), dtype=torch.float)).abs().mean().item()
        assert diff < 2.0, f"{key}: regenerated image differs from the shipped one by {diff:.2f} / 255 on average"


def test_toy_demo_comparison_gives_every_rate_with_n_and_interval_and_says_where_the_base_came_from():
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("toy_demo", Path(__file__).parents[1] / "scripts" / "toy_demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    rec = lambda k, n: {"rate": k / n, "k": k, "n": n, "ci95": [0, 1]}
    summary = {"model": "toy-t2i", "erasure": {"seconds": 12.5},
               "base": {"source": {"source": "shipped", "plugin": "toy", "records": 210, "built": "then",
                                   "command": "python -m erase.toyworld.base_evals", "seed": "S", "folder": "F"}},
               "comparison": {"leakage": [{"suite": "prompts", "route": "all", "protocol": "toy",
                                           "values": {"base": rec(48, 48), "erased": rec(0, 48)}},
                                          {"suite": "edits", "route": "inpaint", "protocol": "toy",
                                           "values": {"base": rec(16, 16), "erased": rec(1, 16)}}],
                              "utility": [{"suite": "utility", "metric": "attribute_accuracy",
                                           "values": {"base": rec(317, 320), "erased": rec(312, 320)}}],
                              "attacks": []}}
    table = demo.side_by_side({"toy_t2i": summary})
    assert "| leakage: prompts (toy) | 100.0% [92.6, 100.0] (n=48) | 0.0% [0.0, 7.4] (n=48) |" in table
    assert "| leakage: edits [inpaint] (toy) | 100.0% [80.6, 100.0] (n=16) | 6.2% [1.1, 28.3] (n=16) |" in table
    cells = [c.strip() for line in table.splitlines() if line.startswith("| leakage") or line.startswith("| utility")
             for c in line.strip("|").split("|")[1:]]
    assert cells and all(re.fullmatch(r"\d+\.\d% \[\d+\.\d, \d+\.\d\] \(n=\d+\)", c) for c in cells), cells
    assert "Base column: shipped with the toy plugin (210 records" in table and "| erasure time (s) | - | 12.5 |" in table
