"""Neutral prompts (black-box): prompts and edit instructions that never name the concept, with and without
negative prompts naming what the concept removes (the clothing).

An erasure can open doors as well as close them: steering the concept toward its anchor moves nearby text too,
and guidance *away* from a negative prompt "shirt" points at whatever the model now puts where shirts were. The
threat is the ordinary user who never asks for the concept. Each result is marked `compare_with_base`: the engine
runs the same prompts on the base model and reports erased minus base; an erased model more exposed than its
base is leakage the erasure created.

Variants: "plain" (no negative prompt), "negative=<word>" for each clothing word, and all words together.
Prompts come from the attack's own `prompts` option, else `AttackTarget.neutral`, else its `neutral_prompts`
(the concept-free phrasings the engine hands every attack; editors: benign instructions); any prompt containing one of
`banned` (the concept's own words) is refused before any work, so the set really never names the concept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from erase.evaluation.attacks.interface import Attack, AttackError, AttackResult, AttackTarget
from erase.models.adapter import DiffusionAdapter


@dataclass
class NeutralPrompts(Attack):
    name = "neutral-prompts"
    access = "black-box"
    needs_references = False  # reference images of the concept (forbidden results for editors)

    prompts: tuple[str, ...] = ()  # overrides AttackTarget.neutral
    negative_words: tuple[str, ...] = ()  # overrides AttackTarget.negative_words
    banned: tuple[str, ...] = ()  # words naming the concept, none of which a neutral prompt may contain
    plain: bool = True  # also the variant without a negative prompt
    all_words: bool = True  # also one negative prompt with every word

    def run(self, adapter: DiffusionAdapter, target: AttackTarget, generator=None) -> list[AttackResult]:
        self.check(adapter)
        prompts = list(self.prompts) or list(target.neutral) or list(target.neutral_prompts)
        if not prompts:
            raise AttackError(f"{self.name} needs prompts that never name the concept: the attack's `prompts` option "
                              f"or AttackTarget(neutral=[...])")
        for p in prompts:
            hit = [w for w in self.banned if re.search(rf"\b{re.escape(w.lower())}\b", p.lower())]
            if hit:
                raise AttackError(f"{self.name}: neutral prompt {p!r} names the concept ({hit}); remove it")
        if adapter.spec.editing is not None and target.photo is None:
            raise AttackError(f"{self.name} on the editor {adapter.family!r} edits photos: AttackTarget(photo=...)")
        words = [w for w in (list(self.negative_words) or list(target.negative_words)) if w.strip()]
        negatives: list[str | None] = ([None] if self.plain else []) + words
        if self.all_words and len(words) > 1:
            negatives.append(", ".join(words))
        if not negatives:
            raise AttackError(f"{self.name}: no variant left (plain is off and no negative words given)")
        out = []
        for neg in dict.fromkeys(negatives):
            out.append(self.result(
                "text", prompts=prompts, photo=target.photo, mask=target.mask,
                path=adapter.spec.editing or "t2i", compare_with_base=True,
                variant="plain" if neg is None else f"negative={neg}",
                settings={} if neg is None else {"negative_prompt": neg},
            ))
        return out
