"""Exported checkpoints reload with plain diffusers and keep the erased behaviour."""

from __future__ import annotations

import torch
from diffusers import DiffusionPipeline

from erase.concept import Concept
from erase.export import load_erased_weights
from erase.models.adapter import DiffusionAdapter
from erase.models.tiny import tiny_pipeline
from erase.run import erase

CONCEPT = Concept(id="cat", prompts=["a cat"], anchor="a dog", preserve=["a bird"])
ESD_FAST = {"name": "esd", "params": {"variant": "esd-x", "num_steps": 3, "trajectories": 2, "refresh_every": 2},
            "train": {"steps": 3, "lr": 1e-2, "cpu": True}}


def _prediction(pipe, prompt="a cat"):
    a = DiffusionAdapter(pipe)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    with torch.no_grad():
        return a.predict(x, torch.tensor([400]), a.encode_prompts([prompt]))


def test_full_finetune_export_reloads(tmp_path):
    a = DiffusionAdapter(tiny_pipeline("sd1"))
    a.default_size = 32
    base = _prediction(tiny_pipeline("sd1"))
    res = erase(a, ESD_FAST, CONCEPT, tmp_path)
    erased = _prediction(a.pipe)
    assert not torch.allclose(erased, base)

    reloaded = DiffusionPipeline.from_pretrained(res.export.pipeline)
    assert torch.allclose(_prediction(reloaded), erased, atol=1e-6)

    fresh = tiny_pipeline("sd1")
    n = load_erased_weights(DiffusionAdapter(fresh), res.export.weights)
    assert n > 0 and torch.allclose(_prediction(fresh), erased, atol=1e-6)

    card = res.export.card.read_text()
    assert "cat" in card and "esd" in card


def test_export_is_one_hub_folder_with_the_card_beside_model_index(tmp_path):
    """`from_pretrained(<export>)` works: the card (README.md), model_index.json, the changed weights and the LoRA
    are in one folder, as a hub repo holds them; no temporary folder is left beside it."""
    a = DiffusionAdapter(tiny_pipeline("sd1"))
    a.default_size = 32
    res = erase(a, {**ESD_FAST, "lora": {"rank": 2}}, CONCEPT, tmp_path)
    folder = tmp_path / "export"
    assert res.export.pipeline == folder and res.export.card == folder / "README.md"
    assert res.export.weights.parent == folder and res.export.lora.parent == folder
    for name in ("README.md", "model_index.json", "erased_weights.safetensors", "lora", "unet", "text_encoder"):
        assert (folder / name).exists(), name
    assert not (folder / "pipeline").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".export")) == []
    reloaded = DiffusionPipeline.from_pretrained(str(folder))
    assert torch.allclose(_prediction(reloaded), _prediction(a.pipe), atol=1e-5)
    again = erase(DiffusionAdapter(tiny_pipeline("sd1")), ESD_FAST, CONCEPT, tmp_path)  # a re-export replaces it whole
    assert again.export.pipeline == folder and (folder / "model_index.json").is_file() and not (folder / "lora").exists()


def test_lora_export_loads_with_load_lora_weights(tmp_path):
    a = DiffusionAdapter(tiny_pipeline("sd1"))
    a.default_size = 32
    cfg = {**ESD_FAST, "lora": {"rank": 2}}
    res = erase(a, cfg, CONCEPT, tmp_path)
    fused = _prediction(a.pipe)
    assert res.export.lora is not None

    base = tiny_pipeline("sd1")
    before = _prediction(base)
    base.load_lora_weights(res.export.lora)
    with_adapter = _prediction(base)
    assert not torch.allclose(with_adapter, before)
    assert torch.allclose(with_adapter, fused, atol=1e-5)
    assert torch.allclose(_prediction(DiffusionPipeline.from_pretrained(res.export.pipeline)), fused, atol=1e-5)
