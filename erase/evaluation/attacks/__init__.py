"""Attacks on erased models: each tries to get the erased concept back, and `generate_with` turns what it found
into images any detector can score.

    name                access               result
    unlearndiffatk      white-box            adversarial prefix prompt (text; soft prompt as embeddings)
    p4d                 white-box+original   prompt matching the original's predictions (text; soft as embeddings)
    ringabell           black-box            genetic-search prompt near E(prompt) + eta * concept vector (text)
    concept-inversion   white-box            textual-inversion embedding against the erased weights (embeddings)
    photo-inversion     white-box            DDIM-inverted latent of a reference photo, empty prompt (latents)
    relearning          white-box            briefly fine-tuned weights (weights)

    attack = get_attack("unlearndiffatk", iterations=40)
    result = attack.run(adapter, AttackTarget(prompts=[...], images=refs), torch.Generator().manual_seed(0))
    images = generate_with(adapter, result, n=4, seed=0)
"""

from __future__ import annotations

from typing import Any

from erase.evaluation.attacks.base import (
    ACCESS_LEVELS,
    Attack,
    AttackError,
    AttackResult,
    AttackTarget,
    generate_with,
    sample_latents,
)
from erase.evaluation.attacks.concept_inversion import ConceptInversion
from erase.evaluation.attacks.p4d import P4D
from erase.evaluation.attacks.photo_inversion import PhotoInversion, ddim_invert
from erase.evaluation.attacks.relearning import Relearning
from erase.evaluation.attacks.ringabell import RingABell, concept_vector
from erase.evaluation.attacks.unlearndiffatk import UnlearnDiffAtk

ATTACKS: dict[str, type[Attack]] = {
    cls.name: cls for cls in (UnlearnDiffAtk, P4D, RingABell, ConceptInversion, PhotoInversion, Relearning)
}

_ALIASES = {
    "unlearn-diff-atk": "unlearndiffatk",
    "ring-a-bell": "ringabell",
    "cce": "concept-inversion",
    "textual-inversion": "concept-inversion",
    "tina": "photo-inversion",
    "latent-inversion": "photo-inversion",
    "relearn": "relearning",
}


def get_attack(name: str, **cfg: Any) -> Attack:
    """The attack called `name` (case, '_' and '-' do not matter; a few aliases), configured with `cfg`."""
    key = str(name).strip().lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in ATTACKS:
        raise AttackError(f"unknown attack {name!r}; choose one of: {', '.join(ATTACKS)}")
    cls = ATTACKS[key]
    unknown = sorted(set(cfg) - set(cls.options()))
    if unknown:
        raise AttackError(f"attack {key!r} has no option(s) {unknown}; its options are: {', '.join(cls.options())}")
    return cls(**cfg)


__all__ = [
    "ACCESS_LEVELS",
    "ATTACKS",
    "Attack",
    "AttackError",
    "AttackResult",
    "AttackTarget",
    "ConceptInversion",
    "P4D",
    "PhotoInversion",
    "Relearning",
    "RingABell",
    "UnlearnDiffAtk",
    "concept_vector",
    "ddim_invert",
    "generate_with",
    "get_attack",
    "sample_latents",
]
