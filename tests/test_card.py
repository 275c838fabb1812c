"""The model card: hub metadata read back by huggingface_hub, loading snippets that run as written on a toy
export, and the concept's phrasings kept out of everything a run writes unless published on purpose."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from erase.card import concept_provenance, metadata, render_card, sha256_file
from erase.cli import CONFIGS, run_task

# A harmless phrasing the toy tokenizer knows, unusual enough that finding it anywhere means it was copied.
MARKER = "a bare-chested figure at night in the city with a tree"
ESD_FAST = ["method.params.num_steps=3", "method.params.trajectories=2", "method.params.refresh_every=2",
            "method.train.steps=1", "method.train.checkpoint_every=0"]


def _cfg(overrides):
    with initialize_config_dir(str(CONFIGS), version_base=None):
        return compose("config", overrides=overrides)


def _snippets(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def _run_snippets(folder: Path, snippets: list[str], check: str) -> None:
    """Each snippet as written, from inside the export folder, then `check` on the `pipe` it made."""
    program = "\n".join(f"exec(compile({s + chr(10) + check!r}, 'snippet-{i}', 'exec'), {{}})"
                        for i, s in enumerate(snippets))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", program], cwd=folder, capture_output=True, text=True, timeout=240,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]


def _text_files(root: Path):
    for p in root.rglob("*"):
        if p.is_file() and p.suffix in (".md", ".json", ".yaml", ".jsonl", ".txt", ".log", ".html"):
            yield p


def test_toy_export_card_metadata_snippets_and_no_prompt_text(tmp_path):
    from huggingface_hub import ModelCard

    prompts = tmp_path / "my_prompts.txt"
    prompts.write_text(MARKER + "\n", encoding="utf-8")
    out = tmp_path / "run"
    run_task(_cfg(["method=uce", "eval=none", "task=erase", "cpu=true", f"out_dir={out}",
                   f"concept.prompts_file={prompts}"]))
    folder = out / "export"
    text = (folder / "README.md").read_text()

    data = ModelCard.load(folder / "README.md").data.to_dict()
    assert data["library_name"] == "diffusers" and data["pipeline_tag"] == "text-to-image"
    assert Path(data["base_model"]).is_dir() and (Path(data["base_model"]) / "model_index.json").is_file()
    assert "erase-method-uce" in data["tags"] and "erased-concept-toy-exposed" in data["tags"]
    assert "does not protect" in text and "reconstructed" in text and "Not attacked here" in text

    # the phrasing: its file's path and sha256 are in the card, its text in nothing the run wrote
    assert str(prompts) in text and sha256_file(prompts) in text
    leaked = [str(p) for p in _text_files(out) if MARKER in p.read_text(encoding="utf-8", errors="replace")]
    assert not leaked, f"concept text copied into {leaked}"

    snippets = _snippets(text)
    assert len(snippets) == 2  # the folder, the changed-weights file (no LoRA for UCE)
    _run_snippets(folder, snippets, "\n".join([
        "import torch",
        "ref = DiffusionPipeline.from_pretrained('.')",
        "assert all(torch.equal(v, ref.unet.state_dict()[k]) for k, v in pipe.unet.state_dict().items())",
    ]))


def test_lora_export_snippet_loads_the_adapter(tmp_path):
    out = tmp_path / "run"
    run_task(_cfg(["method=safety_lora", "eval=none", "task=erase", "cpu=true", f"out_dir={out}", *ESD_FAST]))
    folder = out / "export"
    snippets = _snippets((folder / "README.md").read_text())
    lora = [s for s in snippets if "load_lora_weights" in s]
    assert len(lora) == 1 and (folder / "lora").is_dir()
    _run_snippets(folder, lora, "assert pipe.get_list_adapters(), 'no LoRA adapter was loaded'")


def test_publish_prompts_is_the_only_way_text_gets_in(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text(MARKER + "\n", encoding="utf-8")
    cfg = {"id": "x", "prompts": ["an inline phrasing"], "prompts_file": str(prompts), "anchor": "a person"}
    hidden = concept_provenance(cfg)
    assert MARKER not in str(hidden) and "an inline phrasing" not in str(hidden)
    assert hidden["prompts_file"] == {"path": str(prompts), "sha256": sha256_file(prompts), "n": 1}
    assert hidden["prompts_inline"]["n"] == 1 and hidden["anchor"] == "a person"
    shown = concept_provenance({**cfg, "publish_prompts": True})
    assert shown["prompts_file"]["text"] == [MARKER] and shown["prompts_published"] is True

    card = {"name": "m", "concept": "x", "method": "esd-u", "config": {"concept": cfg}}
    assert MARKER not in render_card(card, {}) and "an inline phrasing" not in render_card(card, {})
    assert MARKER in render_card({**card, "concept_provenance": shown}, {})


def test_metadata_license_and_pipeline_tag(tmp_path):
    assert metadata({"base_model": "stable-diffusion-v1-5/stable-diffusion-v1-5"})["license"] == "creativeml-openrail-m"
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: mit\n---\n# base\n")
    assert metadata({"base_model": str(base)})["license"] == "mit"  # the base's own card wins
    assert "license" not in metadata({"base_model": str(tmp_path / "nowhere")})  # unknown: not guessed
    assert metadata({"base_model": "tiny:sd1"}).get("base_model") is None  # not a loadable id
    assert metadata({"editing": "instruct"})["pipeline_tag"] == "image-to-image"
    assert metadata({"editing": None})["pipeline_tag"] == "text-to-image"


@pytest.mark.parametrize("rate", [{"rate": 0.25, "k": 1, "n": 4, "ci95": [0.0456, 0.6994]}])
def test_evaluation_section_carries_n_interval_detector_and_attacks(rate):
    ev = {"columns": ["base", "erased"], "detector": {"name": "toy-world", "version": "abc123"},
          "leakage": [{"suite": "prompts", "route": "all", "protocol": "toy", "values": {"base": rate, "erased": rate}}],
          "attacks": [{"attack": "ringabell", "threat model": "black-box", "values": {"erased": rate}}],
          "attacks_not_run": ["p4d"]}
    text = render_card({"name": "m", "evaluation": ev}, {})
    assert "25.0% [4.6, 69.9] (n=4)" in text and "toy-world" in text and "abc123" in text
    assert "| ringabell | black-box |" in text and "`p4d`" in text
