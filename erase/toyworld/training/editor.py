"""The toy editor: InstructPix2Pix architecture fine-tuned from the text-to-image weights on edit triplets,
saved as a plain `StableDiffusionInstructPix2PixPipeline` folder."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline, UNet2DConditionModel
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from erase.toyworld import world
from erase.toyworld.training.data import encode_latents, item_seeds, render_uint8, tokenize
from erase.toyworld.training.diffusion import diffusion_loss, sample_scheduler, train_scheduler
from erase.toyworld.training.loop import DiffusionOptimiser, NoPace, Pace, random_batches, setup_training


def ip2p_unet_from(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """8-input-channel UNet initialised from a 4-channel one; the extra (image) channels start at zero (IP2P)."""
    cfg = dict(unet.config)
    cfg["in_channels"] = 8
    new = UNet2DConditionModel.from_config(cfg)
    state = unet.state_dict()
    w = state["conv_in.weight"]
    state["conv_in.weight"] = torch.cat([w, torch.zeros_like(w)], dim=1)
    new.load_state_dict(state)
    return new


# Share of each edit kind in the editor's training set: the whole-image (background) and the forbidden
# (skin tone must be copied from face and arms) edits are the hard ones, so they get more.
EDIT_MIX = {"recolour_shirt": 0.2, "change_background": 0.25, "remove_object": 0.15, "add_object": 0.15,
            "remove_shirt": 0.25}
# Share of already-exposed photos among the background/object edits (`world.EXPOSED_SOURCE_EDIT_KINDS`), whose
# results stay exposed: a real editor (InstructPix2Pix, Kontext) keeps the photo's content under a benign edit,
# which is the route image-space attacks (AdvI2I) take. 0.0 is the earlier editor, trained on clothed photos only,
# which redraws the shirt under any benign edit whatever the photo.
P_EXPOSED_SOURCE = 0.25


def editor_dataset(
    n: int, seed: int, tok: PreTrainedTokenizerFast, mix: dict[str, float] = EDIT_MIX,
    p_exposed_source: float = P_EXPOSED_SOURCE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Photo renders, result renders (uint8) and tokenized instructions for `n` triplets (kinds per `mix`,
    exposed photos per `p_exposed_source`, see `world.edit_triplet`)."""
    kinds = [k for k, share in mix.items() for _ in range(round(share * 20))]  # a cycle of 20 triplets
    photos, results, texts = [], [], []
    for i, s in enumerate(item_seeds("editor", n, seed)):
        photo, text, result = world.edit_triplet(np.random.default_rng(s), kinds[i % len(kinds)],
                                                 p_exposed_source=p_exposed_source)
        photos.append(photo)
        results.append(result)
        texts.append(text)
    return render_uint8(photos), render_uint8(results), tokenize(tok, texts)


def train_editor(
    out_dir: str | Path, t2i_dir: str | Path, steps: int = 3200, seed: int = 0, n_triplets: int = 14_000,
    batch_size: int = 64, lr: float = 1e-3, p_drop: float = 0.05, pace: Pace = NoPace,
    p_exposed_source: float = P_EXPOSED_SOURCE,
) -> StableDiffusionInstructPix2PixPipeline:
    """IP2P editor from the t2i weights: 8-channel UNet (zero-init image channels), same VAE, text encoder
    fine-tuned too; conditioning dropout 5% text / 5% image / 5% both so both guidance scales work.
    `p_exposed_source`: share of exposed photos among background/object edits (`editor_dataset`)."""
    gen = setup_training(seed)
    t2i = StableDiffusionPipeline.from_pretrained(t2i_dir, safety_checker=None, requires_safety_checker=False)
    vae, te, tok = t2i.vae.eval(), t2i.text_encoder.train(), t2i.tokenizer
    unet = ip2p_unet_from(t2i.unet).train()
    t0 = time.time()
    photo_px, result_px, ids = editor_dataset(n_triplets, seed, tok, p_exposed_source=p_exposed_source)
    # IP2P conditions on the *unscaled* posterior mode of the photo (that is what the pipeline feeds).
    photo_lat = encode_latents(vae, photo_px, pace=pace)
    result_lat = encode_latents(vae, result_px, pace=pace) * vae.config.scaling_factor
    print(f"editor: {n_triplets} triplets (p_exposed_source={p_exposed_source}) + latents in {time.time() - t0:.0f} s")
    empty = tokenize(tok, [""])[0]
    sched = train_scheduler()
    optimiser = DiffusionOptimiser([unet, te], lr, steps)
    bar = tqdm(random_batches(n_triplets, batch_size, steps, gen), total=steps, desc="editor", mininterval=5)
    gov = pace()
    for idx in bar:
        gov.step()
        batch_ids, cond_img = ids[idx].clone(), photo_lat[idx].clone()
        r = torch.rand(len(idx), generator=gen)
        drop_text = r < 2 * p_drop  # [0, p): text only, [p, 2p): both
        drop_img = (r >= p_drop) & (r < 3 * p_drop)  # [p, 2p): both, [2p, 3p): image only
        batch_ids[drop_text] = empty
        cond_img[drop_img] = 0.0
        loss = diffusion_loss(unet, sched, result_lat[idx], te(batch_ids)[0], gen, extra=cond_img)
        optimiser.step(loss)
        bar.set_postfix(loss=f"{loss.item():.4f}", threads=torch.get_num_threads(), refresh=False)
    optimiser.finish()
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=te.eval(), tokenizer=tok, unet=unet.eval(), scheduler=sample_scheduler(),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(Path(out_dir), safe_serialization=True)
    return pipe
