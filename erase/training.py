"""The one training loop every fine-tuning method shares.

accelerate does devices, DDP, mixed precision; the method supplies only `loss()`. Checkpoints hold the trained
parameters and the optimiser state (both safetensors: nothing is ever unpickled) and the step, written to a temporary
folder and renamed into place, so a run killed at any moment resumes from its last complete checkpoint. All
randomness is derived from (seed, step), which is what makes a resumed run end with the same weights as an
uninterrupted one. A checkpoint is only written from finite weights, a resume skips any checkpoint that is not, and a
resume with another configuration than the one the checkpoints were made with is refused (see RESUMABLE_CHANGES).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from erase.serial import to_jsonable as _jsonable
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
    gradient_checkpointing: bool | None = None  # None: on for real-size denoisers (REAL_SIZE), off for tiny/toy ones
    optimizer: str = "adamw"  # "adamw" | "adamw8bit" (bitsandbytes: the GPU extra, CUDA only)
    attention: str = "sdpa"  # "sdpa" (torch) | "xformers" | "default"
    checkpoint_every: int = 0  # steps; 0 = only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept; 0 = keep all
    seed: int = 0
    lora: LoraSpec | None = None
    log_every: int = 10
    wandb: bool = False
    wandb_project: str = "erase"
    cpu: bool = False  # force CPU even where a GPU exists (tests, gloo launches)
    stop_after: int | None = None  # stop (as if killed) after this many steps in this process: tests and smoke runs

    def __post_init__(self) -> None:
        for name in ("steps", "grad_accum", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("checkpoint_every", "keep_checkpoints"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"train.{name} must be 0 or more, got {getattr(self, name)} "
                                 f"({'0 = only at the end' if name == 'checkpoint_every' else '0 = keep all'})")
        if self.stop_after is not None and int(self.stop_after) < 1:
            raise ValueError(f"train.stop_after must be null or at least 1, got {self.stop_after}")


# Settings a resumed run may change without changing what the finished weights would be: how long it runs (steps may
# grow past the checkpoint), where it stops in this process, logging, and checkpoint bookkeeping. Anything else
# (lr, seed, LoRA rank, the method's parameters, the concept...) differs from the run the checkpoints belong to.
RESUMABLE_CHANGES = frozenset({"steps", "stop_after", "log_every", "wandb", "wandb_project", "checkpoint_every",
                               "keep_checkpoints"})


class ResumeMismatchError(ValueError):
    """out_dir holds checkpoints of a run configured differently from this one."""

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
    identity: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train `method` on the adapter's model, resuming from out_dir/checkpoints when there are any.

    `identity`: what else defines the run beyond `cfg` (method parameters, a hash of the concept); it is saved with
    every checkpoint and must match on resume, like the TrainConfig (except RESUMABLE_CHANGES). out_dir is locked
    for the run (erase.outdir; re-entrant, so erase() and the CLI holding it already is fine)."""
    from contextlib import nullcontext

    from erase.outdir import is_main_rank, locked_out_dir

    with locked_out_dir(out_dir) if is_main_rank() else nullcontext(out_dir):
        return _train(method, adapter, concept, cfg, out_dir, accelerator, original, identity)


def _train(method, adapter, concept, cfg, out_dir, accelerator, original, identity) -> TrainResult:
    from accelerate import Accelerator

    method.check(adapter.spec)
    out_dir = Path(out_dir)
    ckpt_root = out_dir / "checkpoints"
    if accelerator is None:
        _fresh_accelerator_state()
    accelerator = accelerator or Accelerator(
        mixed_precision=cfg.mixed_precision,
        cpu=cfg.cpu,
        project_dir=str(out_dir),
    )
    from erase import tracking

    logging_wandb = bool(cfg.wandb) and accelerator.is_main_process
    # One wandb run for the whole erase run (erase.tracking): join the CLI's, or start one and finish it here.
    owns_run = logging_wandb and tracking.ensure_run(out_dir, cfg.wandb_project, {"train": _jsonable(asdict(cfg))})

    adapter.pipe.to(accelerator.device)
    _configure_denoiser(adapter, cfg)
    if cfg.lora is not None:
        params = add_lora(adapter, method.group, cfg.lora, concept.id, seed=cfg.seed)
    else:
        params = adapter.set_trainable(method.group)
    names = [n for n, p in adapter.denoiser.named_parameters() if p.requires_grad]
    method.micro_batches, method.rank = cfg.grad_accum, accelerator.process_index  # for methods drawing from a pool
    method.setup(adapter, concept, Original(adapter, lora=cfg.lora is not None, frozen=original), cfg.seed)

    optimizer = make_optimizer(params, cfg, accelerator.device)
    model, optimizer = accelerator.prepare(adapter.denoiser, optimizer)

    setup = run_setup(cfg, method, identity)
    if accelerator.is_main_process:
        for gone in clean_checkpoints(ckpt_root):
            accelerator.print(f"removed {gone}: an unfinished checkpoint write or deletion of an earlier run")
    accelerator.wait_for_everyone()
    start = resume(ckpt_root, accelerator.unwrap_model(model), optimizer, setup, cfg, accelerator.print)

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
        grad_norm = accelerator.clip_grad_norm_(params, cfg.max_grad_norm) if cfg.max_grad_norm else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.steps = step + 1
        logs["step"] = step + 1
        result.history.append(logs)
        bar.set_postfix(loss=f"{logs['loss']:.4g}")
        if logging_wandb:
            extra = {"train/lr": optimizer.param_groups[0]["lr"]}
            if grad_norm is not None:
                extra["train/grad_norm"] = float(grad_norm)  # before clipping
            tracking.log({**{f"train/{method.name}/{k}": v for k, v in logs.items()}, **extra})
        every = cfg.checkpoint_every
        if every and (step + 1) % every == 0 and step + 1 < cfg.steps:
            _save_on_main(accelerator, ckpt_root, step + 1, model, optimizer, names, cfg, setup)
    model.eval()
    check_finite_weights(accelerator.unwrap_model(model), names, result.steps, ckpt_root)
    if accelerator.num_processes > 1:
        _record_rank_agreement(accelerator, model, names, out_dir)
    adapter.denoiser = accelerator.unwrap_model(model)
    setattr(adapter.pipe, adapter.spec.denoiser, adapter.denoiser)
    adapter.denoiser.requires_grad_(False)
    if result.steps < cfg.steps:  # stopped early on purpose: leave a checkpoint to resume from
        _save_on_main(accelerator, ckpt_root, result.steps, model, optimizer, names, cfg, setup)
    result.seconds = time.time() - t0
    if owns_run:
        tracking.finish()
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


OPTIMIZERS = ("adamw", "adamw8bit")
REAL_SIZE = 100_000_000  # denoiser parameters from which checkpointing is on by default (SD1.5's UNet has 860M)


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (optimiser state in 8 bits: 2 bytes per trained parameter instead of 8)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer != "adamw8bit":
        raise ValueError(f"train.optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    if torch.device(device).type != "cuda":
        raise ValueError(f"train.optimizer=adamw8bit needs a CUDA GPU (bitsandbytes), but training runs on {device}: "
                         "use train.optimizer=adamw on this machine")
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise ImportError("train.optimizer=adamw8bit needs bitsandbytes, in the GPU extra: pip install 'erase[gpu]'") from e
    return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _configure_denoiser(adapter: DiffusionAdapter, cfg: TrainConfig) -> None:
    net = adapter.denoiser
    checkpointing = cfg.gradient_checkpointing
    if checkpointing is None:  # real families: activations dominate memory; tiny and toy ones only lose time
        checkpointing = sum(p.numel() for p in net.parameters()) >= REAL_SIZE
        checkpointing = checkpointing and getattr(net, "_supports_gradient_checkpointing", False)
    if checkpointing:
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


def add_lora(adapter: DiffusionAdapter, group: str, spec: LoraSpec, concept_id: str, seed: int = 0) -> list[torch.nn.Parameter]:
    """Wrap the group's linear layers with a peft LoRA adapter named after the concept; only it trains.

    peft draws the adapter's initial weights from torch's global generator, whose state depends on whatever ran in
    the process before (a base evaluation computed or read from the cache, an earlier stage): the same run then
    started from a different adapter each time. The draw is made from (seed, adapter name) instead, in a forked
    generator state, so the run's seed decides it and the caller's global state is left as it was."""
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
    name = spec.name or lora_name(concept_id)
    with torch.random.fork_rng(devices=[]):  # peft initialises the new layers on the CPU, then moves them
        torch.default_generator.manual_seed(derived_generator(seed, "lora-init", name).initial_seed())
        adapter.denoiser.add_adapter(config, adapter_name=name)
    return [p for n, p in adapter.denoiser.named_parameters() if "lora_" in n and p.requires_grad]


def lora_name(concept_id: str) -> str:
    return "erase_" + "".join(c if c.isalnum() else "_" for c in concept_id)


# ---------------------------------------------------------------------- checkpoints
# A checkpoint folder step-NNNNNNN holds trainable.safetensors, optimizer.safetensors (+ optimizer.json: the
# optimiser's non-tensor state) and state.json (step, config, identity), written under .tmp-step-* and renamed into
# place; an old one is renamed to .del-step-* before it is deleted, so a kill mid-deletion leaves no half folder
# that looks like a checkpoint.
CHECKPOINT_FILES = ("trainable.safetensors", "optimizer.safetensors", "optimizer.json", "state.json")


def run_setup(cfg: TrainConfig, method: FineTuneMethod, identity: Mapping[str, Any] | None) -> dict[str, Any]:
    """Everything that decides the trained weights, as saved in state.json and compared on resume."""
    return {"config": _jsonable(asdict(cfg)), "identity": _jsonable({"method": method.name, **dict(identity or {})})}


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under root, oldest first."""
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and re.fullmatch(r"step-\d+", p.name)
            and all((p / f).is_file() for f in CHECKPOINT_FILES)]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    done = checkpoints(root)
    return done[-1] if done else None


def clean_checkpoints(root: Path) -> list[Path]:
    """Remove what killed runs leave behind: temporary folders, half-deleted and incomplete checkpoints.

    Only safe while this run holds out_dir (see erase.outdir): no other process is writing here."""
    if not root.is_dir():
        return []
    complete = set(checkpoints(root))
    stale = [p for p in root.iterdir() if p.is_dir() and p not in complete and not _legacy(p)
             and (p.name.startswith((".tmp-step-", ".del-step-")) or re.fullmatch(r"step-\d+", p.name))]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return sorted(stale)


def _legacy(folder: Path) -> bool:
    """A complete checkpoint of an older erase (optimiser state as a pickle, optimizer.pt): kept, never loaded."""
    return all((folder / f).is_file() for f in ("trainable.safetensors", "optimizer.pt", "state.json"))


def resume(root: Path, model, optimizer, setup: Mapping[str, Any], cfg: TrainConfig, say: Callable[[str], None] = print) -> int:
    """Load the newest usable checkpoint (its step), or 0. Non-finite checkpoints are skipped, with the folder named;
    one made by a differently configured run is refused (ResumeMismatchError)."""
    legacy = sorted(p for p in root.iterdir() if p.is_dir() and _legacy(p)) if root.is_dir() else []
    if legacy and not checkpoints(root):
        raise ResumeMismatchError(
            f"{legacy[-1]} is a checkpoint of an older erase, whose optimiser state is a pickle (optimizer.pt), which "
            f"erase no longer loads. Start fresh with another out_dir, or delete {root} to retrain here")
    for path in reversed(checkpoints(root)):
        state = _read_state(path)
        check_resumable(path, state, setup, cfg)
        weights, opt = _read_tensors(path)
        bad = {n: int((~torch.isfinite(t)).sum()) for n, t in {**weights, **opt[0]}.items()
               if t.is_floating_point() and not torch.isfinite(t).all()}
        if bad:
            say(f"checkpoint {path} holds {sum(bad.values())} non-finite values (e.g. in {sorted(bad)[0]}): "
                "not resuming from it; trying the one before")
            continue
        _apply(path, model, optimizer, weights, opt)
        say(f"resuming from {path} (step {state['step']})")
        return int(state["step"])
    return 0


def check_resumable(path: Path, state: Mapping[str, Any], setup: Mapping[str, Any], cfg: TrainConfig) -> None:
    saved = _flat({"train": state.get("config", {}), "run": state.get("identity", {})})
    now = _flat({"train": setup["config"], "run": setup["identity"]})
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k)
                    and not (k.startswith("train.") and k.split(".", 1)[1] in RESUMABLE_CHANGES))
    if differ:
        shown = "; ".join(f"{k}: {saved.get(k, '(unset)')!r} in the checkpoint, {now.get(k, '(unset)')!r} now"
                          for k in differ[:8])
        raise ResumeMismatchError(
            f"{path.parent} holds checkpoints of a run configured differently ({shown}). Resuming would train with "
            f"the checkpoint's settings while recording these. Rerun with the checkpoint's settings to resume, or "
            f"start fresh with another out_dir (or delete {path.parent}). Only "
            f"{', '.join(sorted('train.' + k for k in RESUMABLE_CHANGES))} may change on resume")
    step = int(state["step"])
    if step > cfg.steps:
        raise ResumeMismatchError(f"{path} is at step {step}, past train.steps={cfg.steps}: steps may grow on "
                                  f"resume, not shrink. Pass train.steps>={step}, or start fresh with another out_dir")


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_finite_weights(model, names: list[str], step: int, root: Path) -> None:
    params = dict(model.named_parameters())
    bad = {n: int((~torch.isfinite(params[n])).sum()) for n in names if not torch.isfinite(params[n]).all()}
    if bad:
        last = latest_checkpoint(root)
        raise NonFiniteLossError(
            f"{sum(bad.values())} trained weights are NaN/inf after step {step} (e.g. in {sorted(bad)[0]}); "
            f"no checkpoint or export was written from them"
            f"{f' (the last good checkpoint is {last})' if last else ''}. Lower the learning rate, use fp32/bf16 "
            "instead of fp16, or set max_grad_norm")


def _save_on_main(accelerator, root: Path, step: int, model, optimizer, names: list[str], cfg: TrainConfig,
                  setup: Mapping[str, Any]) -> None:
    check_finite_weights(accelerator.unwrap_model(model), names, step, root)  # every rank: all raise together
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_checkpoint(root, step, accelerator.unwrap_model(model), optimizer, names, cfg, setup)
    accelerator.wait_for_everyone()


def save_checkpoint(root: Path, step: int, model, optimizer, names: list[str], cfg: TrainConfig,
                    setup: Mapping[str, Any] | None = None) -> Path:
    """Write step-N atomically: everything goes to a temporary folder that is renamed only once complete."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = dict(model.named_parameters())
    save_file({n: state[n].detach().contiguous().cpu() for n in names}, tmp / "trainable.safetensors")
    tensors, rest = _optimizer_parts(optimizer.state_dict())
    save_file(tensors, tmp / "optimizer.safetensors")
    (tmp / "optimizer.json").write_text(json.dumps(rest, indent=1))
    info = {"step": step, **(setup or {"config": _jsonable(asdict(cfg))})}
    (tmp / "state.json").write_text(json.dumps(info, indent=2))
    if final.exists():
        _delete(final)
    os.replace(tmp, final)
    if cfg.keep_checkpoints:
        for old in checkpoints(root)[: -cfg.keep_checkpoints]:
            _delete(old)
    return final


def _delete(folder: Path) -> None:
    doomed = folder.with_name(f".del-{folder.name}-{os.getpid()}")
    os.replace(folder, doomed)  # atomic: from here on it is no checkpoint, whatever happens to the rmtree
    shutil.rmtree(doomed, ignore_errors=True)


def _optimizer_parts(sd: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimiser state_dict as tensors (safetensors) plus the rest (JSON): no pickle in a checkpoint."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().contiguous().cpu()
            else:
                plain.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": plain, "ids": [str(i) for i in sd["state"]]}


def _optimizer_state(tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(rest["state"].get(i, {})) for i in rest["ids"]}
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        state[int(idx)][name] = t
    return {"state": state, "param_groups": rest["param_groups"]}


def _read_state(path: Path) -> dict[str, Any]:
    try:
        return json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); delete that folder to resume "
                           "from the one before") from e


def _read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], tuple[dict[str, torch.Tensor], dict[str, Any]]]:
    try:
        weights = load_file(path / "trainable.safetensors")
        opt = load_file(path / "optimizer.safetensors"), json.loads((path / "optimizer.json").read_text())
    except Exception as e:  # noqa: BLE001 - any unreadable piece means the same thing to the user
        raise RuntimeError(
            f"checkpoint {path} is unreadable ({type(e).__name__}: {e}); delete that folder to resume from the one before"
        ) from e
    return weights, opt


def _apply(path: Path, model, optimizer, weights, opt) -> None:
    missing = set(weights) - set(dict(model.named_parameters()))
    if missing:
        raise RuntimeError(f"checkpoint {path} has parameters this model lacks (e.g. {sorted(missing)[:3]}): wrong model or method?")
    model.load_state_dict(weights, strict=False)
    optimizer.load_state_dict(_optimizer_state(*opt))


def load_checkpoint(path: Path, model, optimizer) -> int:
    """Load one checkpoint folder (no checks against a configuration; `resume` does those); returns its step."""
    state = _read_state(path)
    weights, opt = _read_tensors(path)
    _apply(path, model, optimizer, weights, opt)
    return int(state["step"])
