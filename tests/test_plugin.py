"""The toy world is a plugin: with `erase.toyworld` made unimportable, every core module still imports, a tiny
non-toy evaluation (prompts, edits, an attack) runs end to end, and asking for a toy piece names the plugin."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

BLOCKER = textwrap.dedent('''
    import importlib.abc, sys

    class BlockToyWorld(importlib.abc.MetaPathFinder):
        """Any import of erase.toyworld fails, as if the plugin were not installed."""
        def find_spec(self, name, path=None, target=None):
            if name == "erase.toyworld" or name.startswith("erase.toyworld."):
                raise ImportError(f"blocked for this test: {name}")
            return None

    sys.meta_path.insert(0, BlockToyWorld())
''')

SCRIPT = BLOCKER + textwrap.dedent('''
    import importlib, json, pkgutil, sys
    import erase

    imported, failed = [], {}
    for info in pkgutil.walk_packages(erase.__path__, "erase."):
        if info.name.startswith("erase.toyworld"):
            continue
        try:
            importlib.import_module(info.name)
            imported.append(info.name)
        except Exception as e:  # noqa: BLE001 - every failure is reported below
            failed[info.name] = f"{type(e).__name__}: {e}"

    import csv, numpy as np, torch
    from erase import registry
    from erase.detect.base import Detection
    from erase.evaluation import EditCase, EditSuite, GenSettings, Prompt, PromptSuite, evaluate
    from erase.evaluation.attack_items import AttackMaterial, AttackSuite
    from erase.models.adapter import DiffusionAdapter
    from erase.models.tiny import TINY_SIZE, tiny_image, tiny_mask, tiny_pipeline

    torch.set_num_threads(1)

    class Brightness:
        name, version, labels = "brightness", "1", ("TORSO_EXPOSED",)
        def detect(self, images):
            return [[Detection("TORSO_EXPOSED", float(np.asarray(im, np.float32).mean() / 255))] for im in images]

    adapter = DiffusionAdapter(tiny_pipeline("sd1"))
    settings = GenSettings(steps=2, guidance=2.0, height=TINY_SIZE, width=TINY_SIZE)
    suites = [
        PromptSuite([Prompt("p0", "a red square"), Prompt("p1", "a green square")], images_per_prompt=2),
        EditSuite([EditCase("c0", tiny_image(), "make it blue", "a blue square", tiny_mask())], strengths=(0.5,)),
        AttackSuite([{"name": "unlearndiffatk", "n_prompts": 1, "images": 2,
                      "params": {"k": 1, "iterations": 1, "num_timesteps": 1}}],
                    AttackMaterial(prompts=["a red square"], references=[tiny_image()]), adapter, settings=settings),
    ]
    summary = evaluate(adapter.pipe, suites, Brightness(), ["toy"], sys.argv[1], settings=settings, progress=False)
    try:
        registry.get("detector", "toy")
        toy_error = None
    except KeyError as e:
        toy_error = str(e)
    print(json.dumps({"imported": imported, "failed": failed, "toy_loaded": "erase.toyworld" in sys.modules,
                      "prompts": summary["prompts"]["toy"], "edits": summary["edits"]["toy"],
                      "attacks": sorted(summary["attacks"]["attacks"]), "toy_error": toy_error}))
''')


def test_core_runs_without_the_toy_world(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "eval")], capture_output=True, text=True,
                          timeout=600, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                            "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["toy_loaded"]
    # A module may need an optional package this machine lacks, but never the toy world.
    assert not {m: e for m, e in out["failed"].items() if "toyworld" in e}, out["failed"]
    core = {"erase.registry", "erase.run", "erase.cli", "erase.photos", "erase.evaluation.harness",
            "erase.evaluation.config", "erase.evaluation.attack_items", "erase.methods.edit_refusal"}
    assert core <= set(out["imported"]), (core - set(out["imported"]), out["failed"])
    assert out["prompts"]["n"] == 4 and out["edits"]["n"] == 2  # 2 prompts x 2 images; img2img + inpaint
    assert out["attacks"] == ["no-attack", "unlearndiffatk"]
    assert "no detector named 'toy'" in out["toy_error"] and "erase.toyworld could not be imported" in out["toy_error"]


def test_registry_entries_by_name() -> None:
    import pytest

    from erase import registry

    registry.register("sampling", "test-preset", {"steps": 3, "guidance": 2.5})
    assert registry.get("sampling", "test-preset") == {"steps": 3, "guidance": 2.5}
    registry.register("detector", "test-lazy", "erase.stats:Rate")  # "module:attribute", imported on use
    assert registry.get("detector", "test-lazy").__name__ == "Rate"

    @registry.register("suite", "test-decorated")
    def build(kind, name, size, **options):
        return (kind, name, size, options)

    assert registry.get("suite", "test-decorated")("prompts", "p", 32) == ("prompts", "p", 32, {})
    with pytest.raises(KeyError, match="no photos named 'nope' is registered"):
        registry.get("photos", "nope")
    with pytest.raises(ValueError, match="unknown registry kind"):
        registry.get("colours", "red")
    # Model aliases: the toy world's are found through its plugin; a mistyped one names the valid ones.
    assert registry.resolve_model("toy:t2i").endswith("t2i")
    with pytest.raises(KeyError, match="toy:editor, toy:t2i"):
        registry.resolve_model("toy:t2")
    assert registry.resolve_model("tiny:sd1") is None and registry.resolve_model("some/hub-id") is None

    from erase.evaluation.generate import settings_from

    s = settings_from({"preset": "test-preset", "num_steps": 4, "scheduler": "ddim"})
    assert (s.steps, s.guidance, s.extra["scheduler"]) == (4, 2.5, "ddim")
    with pytest.raises(ValueError, match="unknown generation setting 'bogus'"):
        settings_from({"bogus": 1})
