"""Attacks as an evaluation suite: run each configured attack on the erased model, generate from its result,
count with the detector, and compare with the same prompts unattacked.

Each attack's outcome is written to `<out>/<name>.json` and skipped when already there, so an interrupted
evaluation resumes. Attack success = the protocol's rate over the attack's images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from erase.concept import Concept
from erase.detect.protocols import count, get_protocol
from erase.evaluation.attacks import get_attack
from erase.evaluation.attacks.base import AttackResult, AttackTarget, generate_with
from erase.models.adapter import DiffusionAdapter
from erase.report import image_grid


def toy_attack_material(n_prompts: int, size: int, seed: int) -> tuple[list[str], list[str], torch.Tensor, torch.Tensor]:
    """Held-out exposed prompts, the same prompts with the shirt named instead, reference images of the exposed
    state and clothed photos to edit (the toy world's stand-ins for the user's reference material)."""
    from erase import toyworld
    from erase.photos import toy_photos

    prompts = [p for p, _ in toyworld.exposed_prompts(n_prompts, seed, toyworld.HELDOUT_EXPOSED_PHRASES)]
    neutral = [_neutralise(p, toyworld.EXPOSED_PHRASES) for p in prompts]
    ps = toy_photos(max(n_prompts, 4), size, seed)
    return prompts, neutral, ps.counterparts, ps.photos


def _neutralise(prompt: str, phrases: Sequence[str]) -> str:
    for p in sorted(phrases, key=len, reverse=True):
        prompt = prompt.replace(p, "in a red shirt" if p.startswith(("with", "without", "not")) else "")
    return " ".join(prompt.split())


def run_attacks(
    adapter: DiffusionAdapter,
    attacks: Sequence[Mapping[str, Any]],
    concept: Concept,
    detector,
    out_dir: str | Path,
    protocol: str = "toy",
    original=None,
    seed: int = 0,
    sampling: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """`sampling`: {num_steps, guidance} for generating from attack results (default: the toy world's)."""
    if sampling is None:
        from erase import toyworld

        sampling = {"num_steps": toyworld.SAMPLING["num_inference_steps"], "guidance": toyworld.SAMPLING["guidance_scale"]}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    proto = get_protocol(protocol)
    rates: dict[str, float] = {}
    n_max = max(int(a.get("n_prompts", 4)) for a in attacks)
    prompts, neutral, refs, photos = toy_attack_material(n_max, adapter.default_size, seed + 2_000_000)
    editing = adapter.spec.editing is not None

    def score(images, name: str, info: dict) -> float:
        dets = detector.detect(images)
        rate = count(proto, dets).rate
        grid = image_grid(images[:16], flagged=[any(d.score >= proto.threshold for d in ds if d.label in proto.labels) for ds in dets[:16]])
        grid.save(out / f"{name}.png")
        (out / f"{name}.json").write_text(json.dumps({"name": name, "rate": rate, "protocol": proto.name,
                                                      "n_images": len(images), **info}, indent=2, default=str))
        return rate

    cached = out / "no-attack.json"
    if cached.is_file():
        rates["no-attack"] = json.loads(cached.read_text())["rate"]
    else:
        plain = AttackResult(attack="none", access="black-box", kind="text", prompts=prompts[:n_max],
                             photo=photos[:n_max] if editing else None)
        rates["no-attack"] = score(generate_with(adapter, plain, 2 * n_max, seed, **sampling), "no-attack", {"prompts": n_max})

    for spec in tqdm(attacks, desc="attacks"):
        name = spec["name"]
        done = out / f"{name}.json"
        if done.is_file():
            rates[name] = json.loads(done.read_text())["rate"]
            continue
        attack = get_attack(name, **dict(spec.get("params") or {}))
        if reason := _unsupported(attack, adapter, original):
            (out / f"{name}.skipped").write_text(reason)
            continue
        n = int(spec.get("n_prompts", 4))
        images, described = [], []
        for i in range(n):
            target = AttackTarget(
                prompts=[prompts[i]], images=refs[i : i + 1], original=original, neutral_prompts=[neutral[i]],
                photo=photos[i : i + 1] if editing else None,
            )
            g = torch.Generator().manual_seed(seed + i)
            result: AttackResult = attack.run(adapter, target, g)
            images += generate_with(adapter, result, int(spec.get("images", 2)), seed + 100 * i, **sampling)
            described.append(result.describe())
        rates[name] = score(images, name, {"access": attack.access, "results": described})
    return rates


def _unsupported(attack, adapter: DiffusionAdapter, original) -> str | None:
    if attack.access == "white-box+original" and original is None:
        return f"{attack.name} needs the model before erasure (run with task=erase_and_eval)"
    try:
        attack.check(adapter)
    except Exception as e:  # noqa: BLE001 - the attack's own reason, reported instead of crashing the evaluation
        return str(e)
    return None
