"""The one training loop every fine-tuning method shares.

accelerate does devices, DDP, mixed precision; the method supplies only `loss()`. Checkpoints hold the trained
parameters (safetensors), the optimiser state and the step, written to a temporary folder and renamed into place,
so a run killed at any moment resumes from its last complete checkpoint. All randomness is derived from
(seed, step), which is what makes a resumed run end with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from erase.concept import Concept
from erase.methods.base import FineTuneMethod, NonFiniteLossError, Original, derived_generator
from erase.models.adapter import DiffusionAdapter


@dataclass
class LoraSpec:
    rank: int = 4
    alpha: float | None = None  # defaults to rank (scale 1)
    dropout: float = 0.0
    name: str | None = None  # adapter name; defaults to the concept id


@dataclass
class TrainConfig:
    steps: int = 200
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_accum: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16"
    gradient_checkpointing: bool = False
    attention: str = "sdpa"  # "sdpa" (torch) | "xformers" | "default"
    checkpoint_every: int = 0  # steps; 0 = only at the end
    keep_checkpoints: int = 2
    seed: int = 0
    lora: LoraSpec | None = None
    log_every: int = 10
    wandb: bool = False
    wandb_project: str = "erase"
    cpu: bool = False  # force CPU even where a GPU exists (tests, gloo launches)
    stop_after: int | None = None  # stop (as if killed) after this many steps in this process: tests and smoke runs


@dataclass
class TrainResult:
    steps: int
    resumed_from: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def train(
    method: FineTuneMethod,
    adapter: DiffusionAdapter,
    concept: Concept,
    cfg: TrainConfig,
    out_dir: str | os.PathLike,
    accelerator=None,
    original: torch.nn.Module | None = None,
) -> TrainResult:
    from accelerate import Accelerator

    method.check(adapter.spec)
    out_dir = Path(out_dir)
    ckpt_root = out_dir / "checkpoints"
    if accelerator is None:
        _fresh_accelerator_state()
    accelerator = accelerator or Accelerator(
        mixed_precision=cfg.mixed_precision,
        cpu=cfg.cpu,
        log_with="wandb" if cfg.wandb else None,
        project_dir=str(out_dir),
    )
    if cfg.wandb:
        os.environ.setdefault("WANDB_MODE", "offline")
        accelerator.init_trackers(cfg.wandb_project, config=_jsonable(asdict(cfg)))

    adapter.pipe.to(accelerator.device)
    _configure_denoiser(adapter, cfg)
    if cfg.lora is not None:
        params = add_lora(adapter, method.group, cfg.lora, concept.id)
    else:
        params = adapter.set_trainable(method.group)
    names = [n for n, p in adapter.denoiser.named_parameters() if p.requires_grad]
    method.setup(adapter, concept, Original(adapter, lora=cfg.lora is not None, frozen=original), cfg.seed)

    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer = accelerator.prepare(adapter.denoiser, optimizer)

    start = 0
    if (last := latest_checkpoint(ckpt_root)) is not None:
        start = load_checkpoint(last, accelerator.unwrap_model(model), optimizer)
        accelerator.print(f"resuming from {last} (step {start})")

    result = TrainResult(steps=start, resumed_from=start)
    t0 = time.time()
    end = cfg.steps if cfg.stop_after is None else min(cfg.steps, start + cfg.stop_after)
    bar = tqdm(range(start, end), initial=start, total=cfg.steps, desc=f"{method.name}", disable=not accelerator.is_local_main_process)
    model.train()
    for step in bar:
        logs: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            g = derived_generator(cfg.seed, "step", step, micro, accelerator.process_index)
            sync = micro == cfg.grad_accum - 1
            with (nullcontext() if sync else accelerator.no_sync(model)), accelerator.autocast():
                loss, micro_logs = method.loss(model, step, g)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(
                    f"{method.name}: loss is {loss.item()} at step {step}; nothing from this step was applied or saved. "
                    "Lower the learning rate, use fp32/bf16 instead of fp16, or check the concept prompts."
                )
            accelerator.backward(loss / cfg.grad_accum)
            for k, v in {"loss": loss.item(), **micro_logs}.items():
                logs[k] = logs.get(k, 0.0) + v / cfg.grad_accum
        if cfg.max_grad_norm:
            accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.steps = step + 1
        logs["step"] = step + 1
        result.history.append(logs)
        bar.set_postfix(loss=f"{logs['loss']:.4g}")
        if cfg.wandb:
            accelerator.log(logs, step=step + 1)
        every = cfg.checkpoint_every
        if every and (step + 1) % every == 0 and step + 1 < cfg.steps:
            _save_on_main(accelerator, ckpt_root, step + 1, model, optimizer, names, cfg)
    model.eval()
    if accelerator.num_processes > 1:
        _record_rank_agreement(accelerator, model, names, out_dir)
    adapter.denoiser = accelerator.unwrap_model(model)
    setattr(adapter.pipe, adapter.spec.denoiser, adapter.denoiser)
    adapter.denoiser.requires_grad_(False)
    if result.steps < cfg.steps:  # stopped early on purpose: leave a checkpoint to resume from
        _save_on_main(accelerator, ckpt_root, result.steps, model, optimizer, names, cfg)
    result.seconds = time.time() - t0
    if cfg.wandb:
        accelerator.end_training()
    return result


def _fresh_accelerator_state() -> None:
    """accelerate keeps one AcceleratorState per process; a second run with other settings (another stage, a
    notebook cell) must start from a clean one. The process group (PartialState) is kept."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


def weights_digest(model, names: list[str]) -> str:
    h = hashlib.sha256()
    params = dict(model.named_parameters())
    for n in names:
        h.update(params[n].detach().float().cpu().numpy().tobytes())
    return h.hexdigest()


def _record_rank_agreement(accelerator, model, names: list[str], out_dir: Path) -> None:
    """Each rank writes the digest of its trained weights; DDP must have kept them identical."""
    digest = weights_digest(accelerator.unwrap_model(model), names)
    ranks = out_dir / "ranks"
    ranks.mkdir(parents=True, exist_ok=True)
    (ranks / f"rank-{accelerator.process_index}.json").write_text(
        json.dumps({"rank": accelerator.process_index, "world": accelerator.num_processes, "digest": digest})
    )


def _configure_denoiser(adapter: DiffusionAdapter, cfg: TrainConfig) -> None:
    net = adapter.denoiser
    if cfg.gradient_checkpointing:
        if not getattr(net, "_supports_gradient_checkpointing", False):
            raise ValueError(f"{type(net).__name__} does not support gradient checkpointing")
        net.enable_gradient_checkpointing()
    if cfg.attention == "xformers":
        try:
            import xformers  # noqa: F401
        except ImportError as e:
            raise ImportError("attention=xformers needs the GPU extra: pip install 'erase[gpu]'") from e
        net.enable_xformers_memory_efficient_attention()
    elif cfg.attention == "sdpa":
        from diffusers.models.attention_processor import AttnProcessor2_0

        if adapter.spec.architecture == "unet":
            net.set_attn_processor(AttnProcessor2_0())


def add_lora(adapter: DiffusionAdapter, group: str, spec: LoraSpec, concept_id: str) -> list[torch.nn.Parameter]:
    """Wrap the group's linear layers with a peft LoRA adapter named after the concept; only it trains."""
    from peft import LoraConfig

    targets = sorted(adapter.linear_modules(group))
    if not targets:
        raise ValueError(f"module group {group!r} has no linear layers to put LoRA on in {adapter.family}")
    adapter.pipe_modules_requires_grad(False)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha or spec.rank,
        lora_dropout=spec.dropout,
        init_lora_weights="gaussian",
        target_modules=targets,
    )
    adapter.denoiser.add_adapter(config, adapter_name=spec.name or lora_name(concept_id))
    return [p for n, p in adapter.denoiser.named_parameters() if "lora_" in n and p.requires_grad]


def lora_name(concept_id: str) -> str:
    return "erase_" + "".join(c if c.isalnum() else "_" for c in concept_id)


# ---------------------------------------------------------------------- checkpoints
def latest_checkpoint(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").is_file()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _save_on_main(accelerator, root: Path, step: int, model, optimizer, names: list[str], cfg: TrainConfig) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(root, step, accelerator.unwrap_model(model), optimizer, names, cfg)
    accelerator.wait_for_everyone()


def save_checkpoint(root: Path, step: int, model, optimizer, names: list[str], cfg: TrainConfig) -> Path:
    """Write step-N atomically: everything goes to a temporary folder that is renamed only once complete."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = dict(model.named_parameters())
    save_file({n: state[n].detach().contiguous().cpu() for n in names}, tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "config": _jsonable(asdict(cfg))}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in root.iterdir() if p.name.startswith("step-"))[: -cfg.keep_checkpoints or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer) -> int:
    try:
        state = json.loads((path / "state.json").read_text())
        weights = load_file(path / "trainable.safetensors")
        opt = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable piece means the same thing to the user
        raise RuntimeError(
            f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); delete that folder to resume from the one before"
        ) from e
    missing = set(weights) - set(dict(model.named_parameters()))
    if missing:
        raise RuntimeError(f"checkpoint {path} has parameters this model lacks (e.g. {sorted(missing)[:3]}): wrong model or method?")
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(opt)
    return int(state["step"])


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x if isinstance(x, (str, int, float, bool, type(None))) else str(x)
