"""Does the embedding adversary in the loop lower the embedding-space attack's success on the toy text-to-image
model? Two ESD-x runs of the toy recipe (recipe/toy_esd) with the same seed and a short budget, one with
robust.embedding on; then erase.evaluation.attacks.embedding_space on held-out exposed prompts (toy attack
material, reference images of the exposed result) at a reduced budget, and the toy detector on the images
generated from the attacked embeddings (and from the plain prompts). Rates with n and Wilson intervals.

    OMP_NUM_THREADS=1 python scripts/toy_robust_probe.py [--steps 100] [--attack-steps 100] [--prompts 4] [--seeds 8]

`--terms EXPERIMENT` instead: a few steps of that experiment's recipe (e.g. toy_editor_robust) with every robust
term on at every step, on its training material only (training instructions and photos); prints each loss term's
mean and the seconds a step, to set the terms' weights against the method's own loss (docs/robustness.md).

    OMP_NUM_THREADS=1 python scripts/toy_robust_probe.py --terms toy_editor_robust --steps 24
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

from erase.concept import Concept  # noqa: E402
from erase.configs import CONFIGS  # noqa: E402
from erase.evaluation.attacks.interface import AttackTarget  # noqa: E402
from erase.evaluation.attacks.embedding_space import EmbeddingSpace  # noqa: E402
from erase.methods.esd import ESD  # noqa: E402
from erase.models.adapter import DiffusionAdapter  # noqa: E402
from erase.stats import Rate  # noqa: E402
from erase.toyworld import SAMPLING, load_detector, load_t2i  # noqa: E402
from erase.toyworld.evaluation import attack_material  # noqa: E402
from erase.training import TrainConfig, train  # noqa: E402


def erased(robust: dict, steps: int, lr: float) -> DiffusionAdapter:
    recipe = yaml.safe_load((CONFIGS / "recipe" / "toy_esd.yaml").read_text())
    concept = Concept.from_config({k: v for k, v in yaml.safe_load((CONFIGS / "concept" / "toy_exposed.yaml").read_text()).items()
                                   if k not in ("publish_prompts",)})
    a = DiffusionAdapter(load_t2i())
    with tempfile.TemporaryDirectory() as out:
        train(ESD(**recipe, robust=robust), a, concept, TrainConfig(steps=steps, lr=lr, cpu=True, seed=0, log_every=25), out)
    return a


def exposed(a: DiffusionAdapter, det, prompts: list[str], seeds: int, embeds=None) -> Rate:
    images = []
    with torch.no_grad():
        neg = a.encode_prompts([""])
        for i, p in enumerate(prompts):
            for s in range(seeds):
                g = torch.Generator().manual_seed(1000 + s)
                kw = dict(prompt=p) if embeds is None else dict(prompt_embeds=embeds.select([i]).embeds,
                                                                negative_prompt_embeds=neg.embeds)
                images += a.pipe(**kw, generator=g, **SAMPLING).images
    flags = [p > 0.5 for p in det.p_exposed(images)]
    return Rate(sum(flags), len(flags))


def term_magnitudes(experiment: str, steps: int, overrides: list[str]) -> None:
    """Mean of each logged loss term over `steps` steps of the experiment's (single-stage) recipe, every term every step."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from erase.methods.registry import build_method
    from erase.run import load_model, make_train_config

    with initialize_config_dir(str(CONFIGS), version_base=None):
        cfg = compose("config", overrides=[f"+experiment={experiment}", "out_dir=/tmp/unused", *overrides])
    m = OmegaConf.to_container(cfg.method, resolve=True)
    for name, term in m["params"].get("robust", {}).items():
        if term.get("weight", 0) > 0:
            for key in ("every",):
                if key in term:
                    term[key] = 1  # every step, so each term is seen `steps` times
    concept = Concept.from_config({k: v for k, v in OmegaConf.to_container(cfg.concept, resolve=True).items()})
    a = load_model(OmegaConf.to_container(cfg.model, resolve=True), "fp32", "cpu")
    method = build_method(m["name"], m["params"])
    tc = make_train_config({**m["train"], "steps": steps, "checkpoint_every": 0}, None, int(cfg.seed))
    with tempfile.TemporaryDirectory() as out:
        t0 = time.time()
        res = train(method, a, concept, tc, out)
        secs = (time.time() - t0) / steps
    keys = sorted({k for h in res.history for k in h if k != "step"})
    print(f"{experiment}: {steps} steps, every term every step, {secs:.2f} s a step (shared CPU: an upper bound)")
    for k in keys:
        vals = [h[k] for h in res.history if k in h]
        print(f"  {k:<20} mean {sum(vals) / len(vals):.4f}  first {vals[0]:.4f}  last {vals[-1]:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--terms", default=None, help="experiment name: print the loss terms' magnitudes instead")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for --terms")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--attack-steps", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=8)
    args = ap.parse_args()
    if args.terms:
        return term_magnitudes(args.terms, args.steps, args.overrides)
    det = load_detector()
    m = attack_material(args.prompts, 32, seed=0)
    target = AttackTarget(prompts=m.prompts[: args.prompts], images=m.references)
    attack = EmbeddingSpace(steps=args.attack_steps)
    robust_on = {"embedding": {"weight": 1.0, "every": 2, "steps": 3, "eps": 0.3}}
    for name, robust in (("esd-x (recipe)", {}), ("esd-x + embedding adversary", robust_on)):
        t0 = time.time()
        a = erased(robust, args.steps, args.lr)
        trained = time.time() - t0
        plain = exposed(a, det, target.prompts, args.seeds)
        res = attack.run(a, target, torch.Generator().manual_seed(0))
        hit = exposed(a, det, target.prompts, args.seeds, res.conditioning)
        print(f"{name}: train {trained:.0f}s ({args.steps} steps) | plain prompts {plain} | embedding-space attack "
              f"({args.attack_steps} steps, loss {res.initial_loss:.4f} -> {res.final_loss:.4f}) {hit} | {time.time() - t0:.0f}s",
              flush=True)


if __name__ == "__main__":
    main()
