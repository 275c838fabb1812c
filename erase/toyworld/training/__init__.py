"""Training the toy world's parts from scratch on renders of `erase.toyworld.world`, on a CPU, one file each:

    vae.py       the VAE (AutoencoderKL)            -> <out>/vae (then inside t2i/)
    detector.py  the detector (toyworld.detector)   -> <out>/detector.safetensors
    t2i.py       the text-to-image pipeline         -> <out>/t2i   (StableDiffusionPipeline)
    editor.py    the InstructPix2Pix-style editor   -> <out>/editor (StableDiffusionInstructPix2PixPipeline)

with what they share in data.py (seed streams, renders, tokens, latents), diffusion.py (schedules, min-SNR loss)
and loop.py (seeding, lr schedule, EMA, batches, pacing). Every part saves plain diffusers folders (safetensors)
that `from_pretrained` loads without any download. `scripts/build_toy_world.py` builds them in order (and decides
threads and processes); the shipped weights under `erase/toyworld/weights` came from it.
"""

from erase.toyworld.training.detector import train_detector
from erase.toyworld.training.editor import train_editor
from erase.toyworld.training.t2i import train_t2i
from erase.toyworld.training.vae import load_vae, train_vae

__all__ = ["load_vae", "train_detector", "train_editor", "train_t2i", "train_vae"]
