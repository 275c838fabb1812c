"""Safety LoRA: one adapter per concept, fused into one model.

Two ways to fuse per-concept adapters into the base weights W_0:
- `merge`: W = W_0 + sum_i dW_i (adapters trained on disjoint concepts rarely collide, but they can).
- `closed-form` (MACE, Lu et al., CVPR 2024): for every map that reads text embeddings (cross-attention
  key/value), the single W that reproduces each adapter on its own concept's embeddings and W_0 on preserved
  ones:  min_W  sum_i sum_{e in E_i} ||W e - (W_0 + dW_i) e||^2 + s_p sum_p ||W p - W_0 p||^2 + lamb ||W - W_0||^2,
  which is the same normal-equation solve as UCE (`UCEFitter`). Layers that do not read text fall back to merge.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from erase.concept import Concept
from erase.methods.uce import UCEFitter, text_vectors
from erase.models.adapter import DiffusionAdapter

FUSION_MODES = ("merge", "closed-form")


def lora_layers(adapter: DiffusionAdapter) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in adapter.denoiser.named_modules() if isinstance(m, LoraLayer)}


def lora_delta(layer, name: str) -> Tensor:
    return layer.get_delta_weight(name).detach()


@torch.no_grad()
def fuse_adapters(
    adapter: DiffusionAdapter,
    concepts: Mapping[str, Concept],
    mode: str = "closed-form",
    preserve: list[str] | None = None,
    preserve_scale: float = 1.0,
    lamb: float = 0.1,
) -> dict[str, float]:
    """Fuse the named LoRA adapters ({adapter name: its concept}) into the base weights and remove them."""
    if mode not in FUSION_MODES:
        raise ValueError(f"fusion mode must be one of {FUSION_MODES}, got {mode!r}")
    layers = lora_layers(adapter)
    if not layers:
        raise ValueError("the denoiser has no LoRA adapters to fuse")
    names = list(concepts)
    text_layers = set(adapter.linear_modules("xattn-kv")) if adapter.spec.architecture == "unet" else set()
    new_weights: dict[str, Tensor] = {}
    embeds = {}
    if mode == "closed-form":
        # Embeddings are read with adapters off: the text encoder is not adapted, but be explicit.
        embeds = {n: torch.cat([text_vectors(adapter, p, "words")[0] for p in concepts[n].prompts]) for n in names}
        kept = [text_vectors(adapter, p, "words")[0] for p in (preserve or [])]
        kept_embeds = torch.cat(kept) if kept else None
    solved = 0
    for lname, layer in layers.items():
        w0 = layer.get_base_layer().weight
        deltas = {n: lora_delta(layer, n) for n in names if n in layer.lora_A}
        if mode == "closed-form" and lname in text_layers and deltas:
            fitter = UCEFitter(w0, lamb)
            for n, d in deltas.items():
                e = embeds[n].to(w0)
                fitter.update(e, e @ (w0 + d).T, 1.0)
            if kept_embeds is not None:
                fitter.preserve(kept_embeds.to(w0), preserve_scale)
            new_weights[lname] = fitter.solve()
            solved += 1
        else:
            new_weights[lname] = w0 + sum(deltas.values()) if deltas else w0.clone()
    adapter.denoiser.unload_lora()  # back to plain nn.Linear modules, adapters discarded (not merged)
    modules = dict(adapter.denoiser.named_modules())
    for lname, w in new_weights.items():
        modules[lname].weight.copy_(w)
    return {"fused_adapters": float(len(names)), "closed_form_layers": float(solved), "merged_layers": float(len(new_weights) - solved)}


def train_concept_loras(adapter: DiffusionAdapter, jobs: list[tuple[Concept, Mapping]], out_dir, seed: int = 0,
                        **train_overrides) -> tuple[dict[str, Concept], dict[str, float]]:
    """One LoRA adapter per concept, each trained on its own against the base model (`jobs`: (concept, method config
    with a `lora:` block), in order, in out_dir/<concept id>); left attached. Returns {adapter name: concept}."""
    from pathlib import Path

    from erase.methods.registry import build_method
    from erase.run import make_train_config  # the same training config every run builds
    from erase.training import lora_name, train

    names: dict[str, Concept] = {}
    stats: dict[str, float] = {}
    for concept, cfg in jobs:
        if not cfg.get("lora"):
            raise ValueError(f"fusing adapters needs a LoRA per concept: give the method config for {concept.id!r} a lora: block")
        method = build_method(cfg["name"], cfg.get("params"))
        train_cfg = make_train_config(cfg.get("train"), cfg["lora"], seed, **train_overrides)
        name = train_cfg.lora.name or lora_name(concept.id)
        if name in names:
            raise ValueError(f"two concepts share the adapter name {name!r}: give each a distinct lora.name")
        run = train(method, adapter, concept, train_cfg, Path(out_dir) / concept.id)
        stats[f"{concept.id}/final_loss"] = run.history[-1]["loss"] if run.history else float("nan")
        names[name] = concept
    return names, stats


def erase_concepts_fused(
    adapter: DiffusionAdapter,
    jobs: list[tuple[Concept, Mapping]],
    out_dir,
    mode: str = "closed-form",
    preserve: list[str] | None = None,
    seed: int = 0,
    lamb: float = 0.1,
    preserve_scale: float = 1.0,
    **train_overrides,
) -> dict[str, float]:
    """Several concepts erased at once, MACE's way: `train_concept_loras`, then `fuse_adapters` into the base
    weights. `preserve` defaults to every concept's preserve prompts."""
    names, stats = train_concept_loras(adapter, jobs, out_dir, seed, **train_overrides)
    if preserve is None:
        preserve = list(dict.fromkeys(p for c in names.values() for p in c.preserve))
    stats.update(fuse_adapters(adapter, names, mode=mode, preserve=preserve, preserve_scale=preserve_scale, lamb=lamb))
    return stats
