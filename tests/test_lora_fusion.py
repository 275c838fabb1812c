"""MACE-style fusion of per-concept LoRA adapters (erase.methods.lora_fusion), on a tiny random model.

The toy-world measurement (two concepts erased at once, benign prompts kept) is scripts/toy_fusion.py; its numbers
are in docs/architecture.md. Here: the closed form does what it promises, and the wiring trains and fuses."""

from __future__ import annotations

import torch

from erase.concept import Concept
from erase.methods.lora_fusion import erase_concepts_fused, fuse_adapters, lora_layers
from erase.methods.uce import text_vectors
from erase.models.adapter import DiffusionAdapter
from erase.models.tiny import tiny_pipeline
from erase.training import LoraSpec, add_lora

A = Concept(id="a", prompts=["cat"], preserve=["dog", "tree"])  # no shared first token: each text vector has one target
B = Concept(id="b", prompts=["red box"], preserve=["dog"])


def _two_random_adapters() -> DiffusionAdapter:
    torch.manual_seed(0)
    adapter = DiffusionAdapter(tiny_pipeline("sd1"))
    for concept in (A, B):
        add_lora(adapter, "xattn-kv", LoraSpec(rank=4, name=concept.id), concept.id)
    with torch.no_grad():
        for layer in lora_layers(adapter).values():
            for name in ("a", "b"):
                layer.lora_B[name].weight.normal_(0, 0.5)  # peft starts B at zero: give each adapter an effect
    return adapter


def _text_layers(adapter):
    return {n: m for n, m in lora_layers(adapter).items() if n.endswith(("to_k", "to_v"))}


def test_closed_form_fusion_keeps_each_adapter_on_its_concept_and_the_base_on_preserved_text():
    adapter = _two_random_adapters()
    emb = {c.id: torch.cat([text_vectors(adapter, p, "words")[0] for p in c.prompts]) for c in (A, B)}
    kept = torch.cat([text_vectors(adapter, p, "words")[0] for p in A.preserve])
    layers = _text_layers(adapter)
    expect = {}
    for n, layer in layers.items():
        w0 = layer.get_base_layer().weight.detach().clone()
        expect[n] = {c: emb[c] @ (w0 + layer.get_delta_weight(c)).T for c in ("a", "b")} | {"keep": kept @ w0.T}
        expect[n]["merge_a"] = emb["a"] @ (w0 + layer.get_delta_weight("a") + layer.get_delta_weight("b")).T
    stats = fuse_adapters(adapter, {"a": A, "b": B}, mode="closed-form", preserve=A.preserve, lamb=1e-3)
    assert stats["fused_adapters"] == 2 and stats["closed_form_layers"] == len(layers) > 0
    assert not lora_layers(adapter)  # adapters removed, their effect now in the plain weights
    modules = dict(adapter.denoiser.named_modules())
    for n, want in expect.items():
        w = modules[n].weight.detach()
        for c in ("a", "b"):
            err = (emb[c] @ w.T - want[c]).norm() / want[c].norm()
            assert err < 0.05, (n, c, float(err))
        assert (kept @ w.T - want["keep"]).norm() / want["keep"].norm() < 0.05
        # what merging would have given on concept a carries b's adapter too; the closed form does not
        merged_err = (want["merge_a"] - want["a"]).norm()
        assert (emb["a"] @ w.T - want["a"]).norm() < merged_err


def test_merge_adds_every_adapter():
    adapter = _two_random_adapters()
    layers = lora_layers(adapter)
    n, layer = next(iter(layers.items()))
    want = layer.get_base_layer().weight.detach() + layer.get_delta_weight("a") + layer.get_delta_weight("b")
    fuse_adapters(adapter, {"a": A, "b": B}, mode="merge")
    assert torch.allclose(dict(adapter.denoiser.named_modules())[n].weight, want, atol=1e-6)


def test_two_concepts_trained_and_fused(tmp_path):
    """The wiring: one ESD LoRA per concept, each against the base model, then fused; nothing left attached."""
    adapter = DiffusionAdapter(tiny_pipeline("sd1"))
    adapter.default_size = 32
    before = {n: p.detach().clone() for n, p in adapter.denoiser.named_parameters()}
    method = {"name": "esd", "params": {"num_steps": 2, "trajectories": 2, "refresh_every": 2},
              "lora": {"rank": 2}, "train": {"steps": 2, "lr": 1e-2, "checkpoint_every": 0}}
    stats = erase_concepts_fused(adapter, [(A, method), (B, method)], tmp_path, cpu=True)
    assert stats["fused_adapters"] == 2 and stats["closed_form_layers"] > 0
    assert not lora_layers(adapter)
    changed = [n for n, p in adapter.denoiser.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all("attn2" in n for n in changed)  # ESD-x: cross-attention only
