"""The toy world's evaluation pieces, registered by name in erase.registry (the core never imports this module).

    sampling presets   toy (text-to-image), toy-edit (edits, benign suites)
    suites             toy: prompts (held-out exposed phrasings), edits (forbidden edit of held-out photos),
                       utility / benign (benign prompts and benign edits)
    photos             toy: clothed photos with shirt masks and their exposed counterparts
    attack material    toy: held-out exposed prompts, forbidden instructions, exposed references, held-out photos
    detector           toy: the shipped toy-world detector
    models             toy:t2i, toy:editor
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image

from erase.evaluation.attack_items import AttackMaterial
from erase.evaluation.edit_suites import EditCase, EditSuite
from erase.evaluation.generate import GenSettings
from erase.evaluation.prompt_suites import Prompt, PromptSuite
from erase.evaluation.utility import BenignPrompt, UtilitySuite
from erase.photos import PhotoSet, box_mask, mask_tensor, to_tensor
import erase.toyworld as _toy
from erase.toyworld import world
from erase.toyworld.world import (
    BENIGN_EDIT_KINDS,
    EXPOSED_PHRASES,
    HELDOUT_EXPOSED_PHRASES,
    HELDOUT_FORBIDDEN_INSTRUCTIONS,
    HELDOUT_SEED_START,
    TRAIN_EXPOSED_PHRASE,
    Edit,
    apply_edit,
    benign_prompts,
    caption,
    edit_prompts,
    exposed_prompts,
    photos,
    render,
)

# The toy models' sampling (erase.toyworld.SAMPLING / EDIT_SAMPLING) as GenSettings fields: the `toy` and
# `toy-edit` presets. Text-to-image and edits differ in guidance; 0.7 is the SDEdit leakage measurement's strength.
SDEDIT_STRENGTH = _toy.SDEDIT_STRENGTH
SAMPLING: dict[str, Any] = dict(steps=_toy.SAMPLING["num_inference_steps"], guidance=_toy.SAMPLING["guidance_scale"],
                                height=_toy.SAMPLING["height"], width=_toy.SAMPLING["width"], strength=SDEDIT_STRENGTH)
EDIT_SAMPLING: dict[str, Any] = dict(SAMPLING, steps=_toy.EDIT_SAMPLING["num_inference_steps"],
                                     guidance=_toy.EDIT_SAMPLING["guidance_scale"],
                                     image_guidance=_toy.EDIT_SAMPLING["image_guidance_scale"])
PHRASES = {"heldout": HELDOUT_EXPOSED_PHRASES, "train": (TRAIN_EXPOSED_PHRASE,), "all": EXPOSED_PHRASES}
EVERYTHING = {"shirt": True, "trousers": True, "background": True, "obj": True}  # captions name every attribute
EDIT_CHANGES = {"recolour_shirt": ("shirt",), "change_background": ("background",),
                "remove_object": ("obj",), "add_object": ("obj",), "remove_shirt": ("shirt", "exposed")}


def settings(edit: bool = False) -> GenSettings:
    return GenSettings(**(EDIT_SAMPLING if edit else SAMPLING))


def shirt_mask(scene: Any, size: int, sleeves: float = 3.5, margin: float = 1.5) -> Image.Image:
    """The toy world's one shirt mask (the region the forbidden edit repaints), for the evaluation's inpainting
    suites and attack material and for the training photos alike: the torso box, widened by `sleeves` and `margin`
    canvas units (the canvas is 32 units wide) so the sleeves and the shirt's edge are repainted too."""
    x1, y1, x2, y2 = world.torso_box(scene, size)
    k = size / 32.0 * getattr(scene, "scale", 1.0)
    box = (x1 - (sleeves + margin) * k, y1 - margin * k, x2 + (sleeves + margin) * k, y2 + margin * k)
    return box_mask((size, size), [min(max(b, 0), size) for b in box])


# ------------------------------------------------------------------------------------------------ suites


def prompt_suite(n: int = 32, seed: int | None = None, phrases: str | Sequence[str] | None = None,
                 **kwargs: Any) -> PromptSuite:
    """The toy world's exposed prompts (held-out phrasings by default): the toy analogue of I2P."""
    seed = HELDOUT_SEED_START if seed is None else seed
    phrases = PHRASES[phrases] if isinstance(phrases, str) else tuple(phrases or HELDOUT_EXPOSED_PHRASES)
    kwargs.setdefault("name", "toy-prompts")
    kwargs.setdefault("seed", seed)
    kwargs.setdefault("settings", settings())
    prompts = [Prompt(f"toy{i:05d}", text, meta={"phrase": attrs.get("phrase")})
               for i, (text, attrs) in enumerate(exposed_prompts(n, seed, phrases))]
    return PromptSuite(prompts, **kwargs)


def edit_suite(n_photos: int = 8, seed: int | None = None, instructions: Sequence[str] | None = None,
               phrases: Sequence[str] | None = None, size: int = 32, **kwargs: Any) -> EditSuite:
    """Held-out toy photos x the forbidden edit (remove the shirt), with held-out wordings; the inpainting mask
    covers the shirt (torso box widened over the sleeves)."""
    seed = HELDOUT_SEED_START if seed is None else seed
    instructions = tuple(instructions or HELDOUT_FORBIDDEN_INSTRUCTIONS)
    phrases = tuple(phrases or HELDOUT_EXPOSED_PHRASES)
    cases = []
    for i, scene in enumerate(photos(n_photos, seed)):
        target = apply_edit(scene, Edit("remove_shirt"))
        prompt = caption(target, np.random.default_rng(seed + i), exposed_phrase=phrases[i % len(phrases)],
                         mention=EVERYTHING)
        cases.append(EditCase(f"photo{i:04d}~remove_shirt", render(scene, size), instructions[i % len(instructions)],
                              prompt, shirt_mask(scene, size), meta={"photo_seed": seed + i, "edit": "remove_shirt"}))
    kwargs.setdefault("name", "toy-edits")
    kwargs.setdefault("settings", settings(edit=True))
    kwargs.setdefault("strengths", (SDEDIT_STRENGTH,))
    kwargs.setdefault("seed", seed)
    return EditSuite(cases, **kwargs)


def utility_suite(n_prompts: int = 16, n_edits_per_kind: int = 2, seed: int | None = None,
                  kinds: Sequence[str] | None = None, size: int = 32, **kwargs: Any) -> UtilitySuite:
    """Toy benign prompts (all attributes named) and benign edits of every kind (held-out wordings)."""
    seed = (HELDOUT_SEED_START + 500_000) if seed is None else seed  # apart from the leakage items
    prompts = [BenignPrompt(f"toy{i:05d}", text, attrs) for i, (text, attrs) in enumerate(benign_prompts(n_prompts, seed))]
    cases = []
    for kind in kinds or BENIGN_EDIT_KINDS:
        for i, (photo, instruction, result) in enumerate(edit_prompts(n_edits_per_kind, kind, seed)):
            target = caption(result, np.random.default_rng(seed + i), mention=EVERYTHING)
            mask = shirt_mask(photo, size) if kind == "recolour_shirt" else None
            cases.append(EditCase(f"{kind}{i:03d}", render(photo, size), instruction, target, mask,
                                  expected=result.attributes(), changed=EDIT_CHANGES.get(kind, ()),
                                  meta={"edit": kind}))
    kwargs.setdefault("name", "toy-utility")
    kwargs.setdefault("seed", seed)
    kwargs.setdefault("strengths", (SDEDIT_STRENGTH,))
    kwargs.setdefault("settings", settings(edit=True))
    return UtilitySuite(prompts, cases, **kwargs)


def build_suite(kind: str, name: str, size: int, **options: Any):
    """The registry's `suite` entry for `source: toy`: kind is prompts | edits | utility."""
    if kind == "prompts":
        return prompt_suite(name=name, **options)
    if kind == "edits":
        return edit_suite(name=name, size=size, **options)
    return utility_suite(name=name, size=size, **options)


# ------------------------------------------------------------------------------------------------ photos, material


def toy_photos(n: int, size: int = 32, seed: int = 0) -> PhotoSet:
    """Clothed toy photos with their shirt masks and exposed counterparts (training seeds by default)."""
    images, masks, exposed = [], [], []
    for i in range(n):
        scene = world.scene_from_seed(seed + i)
        images.append(to_tensor(render(scene, size), size))
        exposed.append(to_tensor(render(apply_edit(scene, Edit("remove_shirt")), size), size))
        masks.append(mask_tensor(shirt_mask(scene, size), size))
    return PhotoSet(torch.stack(images), torch.stack(masks), torch.stack(exposed))


def neutralise(prompt: str, phrases: Sequence[str] = EXPOSED_PHRASES) -> str:
    """The prompt with its exposed phrase replaced by a clothed one (Ring-A-Bell's concept-free pair)."""
    for p in sorted(phrases, key=len, reverse=True):
        prompt = prompt.replace(p, "in a red shirt" if p.startswith(("with", "without", "not")) else "")
    return " ".join(prompt.split())


def attack_material(n: int, size: int, seed: int, concept: Any = None) -> AttackMaterial:
    """Held-out exposed prompts and forbidden instructions, the prompts with the shirt named instead, exposed
    references, held-out clothed photos (with shirt masks) to edit, and benign prompts and instructions."""
    seed = HELDOUT_SEED_START + 2_000_000 + seed  # apart from the suites' held-out items
    prompts = [p for p, _ in exposed_prompts(n, seed, HELDOUT_EXPOSED_PHRASES)]
    scenes = list(photos(n, seed))
    instructions = [HELDOUT_FORBIDDEN_INSTRUCTIONS[i % len(HELDOUT_FORBIDDEN_INSTRUCTIONS)] for i in range(n)]
    benign = [b for b, _ in benign_prompts(n, seed)]
    # Benign instructions that leave the figure as it is (a background change, held-out phrasing, one per photo):
    # the route AdvI2I takes ("let the woman in the car"), which the content-preserving editor keeps the photo's
    # content through; a shirt recolour would be redrawn whatever the photo shows.
    benign_instr = []
    for i, s in enumerate(scenes):
        rng = np.random.default_rng(seed + 7_000 + i)
        benign_instr.append(world.instruction(world.random_edit(s, "change_background", rng), rng, "heldout"))
    return AttackMaterial(
        prompts=prompts,
        instructions=instructions,
        neutral_prompts=[neutralise(p) for p in prompts],
        references=[render(apply_edit(s, Edit("remove_shirt")), size) for s in scenes],
        photos=[render(s, size) for s in scenes],
        masks=[shirt_mask(s, size) for s in scenes],
        benign_prompts=benign,
        benign_instructions=benign_instr,
        anchor=getattr(concept, "anchor", "") or "a person in a blue shirt",
        negative_words=["shirt", "t-shirt", "top"],
    )

