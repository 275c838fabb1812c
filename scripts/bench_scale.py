"""Benchmark: peak memory of erasure training steps on the real SD1.5 / SDXL / FLUX.1 / FLUX.1 Kontext denoisers,
against what the step must hold.

Kontext is FLUX.1's transformer (the same published config); what differs is its input: the context image's
latent tokens are appended to the target's (twice the image tokens per row), so it is its own case here.

The denoisers are built from their published configs in code (random weights, nothing downloaded). Each method's
training step is run as erase runs it: the trained group chosen (`DiffusionAdapter.module_group` names), the
original model as `erase.methods.base.Original` (the trained tensors saved once and swapped in for the frozen
calls, no copy of the network), frozen predictions under no_grad, one trained forward/backward, gradient clipping,
AdamW. Text conditioning is random tensors of the real shapes (the text encoders are frozen and run once per prompt).

Accounting (bytes): weights + trained copy (the originals Original saves) + gradients + AdamW state (2 per trained
parameter) + activations (the tensors autograd saves for backward, counted by a saved-tensors hook, each storage
once). Peak: torch.cuda.max_memory_allocated on a GPU; on CPU the process's peak resident set over the one before
the model was built (each case runs in its own process). The "before" column is what the step held before
Original stopped deep-copying the denoiser (one more copy of the weights).

    python scripts/bench_scale.py                            # CPU: reduced depth (full widths, one block each)
    python scripts/bench_scale.py --families sdxl flux kontext --methods esd-x --size 256 --steps 2 --json out.jsonl
    python scripts/bench_scale.py --families sd15 --methods esd-x esd-u --size 512
    python scripts/bench_scale.py --full --size 1024         # GPU: full depth
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

# method -> (module group trained, LoRA rank or None, trained passes per step: erase + regularisers / branches)
METHODS = {
    "esd-x": ("xattn", None, 3),  # erase, preserve, unconditional anchor rows in one trained forward
    "esd-u": ("non-xattn", None, 3),
    "ablation": ("xattn-kv", None, 1),
    "adversarial": ("xattn", None, 3),
    "edit_refusal": ("all", None, 4),
    "safety_lora": ("xattn", 4, 3),
}
CPU_METHODS = ["esd-x", "ablation", "safety_lora"]  # the others train most of the network: pass --methods on a big host


def build(family: str, full: bool):
    """The denoiser from its published config (depth reduced unless `full`), and its module-group naming."""
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    if family == "sd15":  # runwayml/stable-diffusion-v1-5 unet/config.json
        return UNet2DConditionModel(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2 if full else 1,
                                    cross_attention_dim=768, attention_head_dim=8), "unet"
    if family == "sdxl":  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
        return UNet2DConditionModel(
            block_out_channels=(320, 640, 1280), layers_per_block=2 if full else 1,
            transformer_layers_per_block=(1, 2, 10) if full else (1, 1, 1), cross_attention_dim=2048,
            attention_head_dim=(5, 10, 20), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")), "unet"
    if family in ("flux", "kontext"):  # black-forest-labs/FLUX.1-dev (and FLUX.1-Kontext-dev: the same) transformer/config.json
        return FluxTransformer2DModel(num_layers=19 if full else 1, num_single_layers=38 if full else 1,
                                      attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                                      pooled_projection_dim=768, in_channels=64, guidance_embeds=True), "flux"
    raise SystemExit(f"unknown family {family!r}: {' | '.join(FAMILIES)}")


FAMILIES = ("sd15", "sdxl", "flux", "kontext")


def inputs(family: str, net, b: int, size: int, device, dtype):
    """Random inputs of the real shapes: latents at size/8, text tokens of the family's encoders."""
    h = size // 8
    if family in ("flux", "kontext"):
        n_img, n_txt = (h // 2) ** 2, 512
        n_img *= 2 if family == "kontext" else 1  # Kontext: the context image's tokens follow the target's
        ids = torch.zeros(n_img, 3, device=device)
        return dict(hidden_states=torch.randn(b, n_img, 64, device=device, dtype=dtype), timestep=torch.full((b,), 0.5, device=device),
                    guidance=torch.full((b,), 3.5, device=device), pooled_projections=torch.randn(b, 768, device=device, dtype=dtype),
                    encoder_hidden_states=torch.randn(b, n_txt, 4096, device=device, dtype=dtype),
                    txt_ids=torch.zeros(n_txt, 3, device=device), img_ids=ids, return_dict=False)
    kw = dict(sample=torch.randn(b, 4, h, h, device=device, dtype=dtype), timestep=torch.full((b,), 500, device=device),
              encoder_hidden_states=torch.randn(b, 77, net.config.cross_attention_dim, device=device, dtype=dtype),
              return_dict=False)
    if family == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(b, 1280, device=device, dtype=dtype),
                                   "time_ids": torch.tensor([[size, size, 0, 0, size, size]] * b, device=device, dtype=dtype)}
    return kw


class _Shim:
    """What `Original` needs of an adapter to save and swap the trained tensors: the live denoiser."""

    def __init__(self, net):
        self.denoiser = net


def case(family: str, method: str, size: int, batch: int, full: bool, steps: int) -> dict:
    """One (family, method): build, train `steps` steps, return peak and accounting (run in its own process)."""
    from erase.methods.base import Original

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    net, arch = build(family, full)
    net.to(device)
    group, rank, rows = METHODS[method]
    names = _group(net, arch, group)
    net.requires_grad_(False)
    if rank:
        from peft import LoraConfig

        targets = sorted({n.rsplit(".", 1)[0] for n in names if n.endswith(".weight") and
                          isinstance(net.get_submodule(n.rsplit(".", 1)[0]), torch.nn.Linear)})
        net.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets))
        params = [p for n, p in net.named_parameters() if "lora_" in n]
    else:
        params = [p.requires_grad_(True) for n, p in net.named_parameters() if n in names]
    original = Original(_Shim(net), lora=bool(rank))
    opt = torch.optim.AdamW(params, lr=1e-6)
    kw = inputs(family, net, batch * rows, size, device, torch.float32)
    frozen_kw = inputs(family, net, 2 * batch, size, device, torch.float32)
    saved: dict[int, int] = {}
    weight_storages = {p.untyped_storage().data_ptr() for p in net.parameters()}

    def pack(t):  # what autograd keeps for backward, each storage once; weights saved by reference are not extra
        if isinstance(t, torch.Tensor) and t.device.type == device.type:
            st = t.untyped_storage()
            if st.data_ptr() not in weight_storages:
                saved[st.data_ptr()] = st.nbytes()
        return t

    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        with torch.no_grad():
            original.denoiser()(**frozen_kw)  # e_0 / e_p (a pool refresh does these for many states at once)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = net(**kw)[0]
        out.float().pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    size_of = lambda ps: sum(p.numel() * p.element_size() for p in ps)
    weights = size_of(net.parameters())
    trained = size_of(params)
    copy = size_of(original.saved.values())
    activations = sum(saved.values())
    account = weights + copy + trained + 2 * trained + activations
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss0
    base_weights = weights - (size_of([p for n, p in net.named_parameters() if "lora_" in n]) if rank else 0)
    return {"family": family, "method": method, "device": device.type, "full_depth": full, "size": size, "batch": batch,
            "rows": rows, "weights_gb": weights / 1e9, "trained_gb": trained / 1e9, "copy_gb": copy / 1e9,
            "activations_gb": activations / 1e9, "account_gb": account / 1e9, "peak_gb": peak / 1e9,
            "ratio": peak / account, "before_account_gb": (account + (0 if rank else base_weights - copy)) / 1e9,
            "params_m": base_weights / 4e6, "blocks": _depth(net, family),
            "step_s": sorted(times)[len(times) // 2], "steps": steps, "threads": torch.get_num_threads()}


def _depth(net, family: str) -> str:
    """How deep the built denoiser is, in its own terms (to say what "reduced depth" means)."""
    if family in ("flux", "kontext"):
        return f"{len(net.transformer_blocks)} double + {len(net.single_transformer_blocks)} single blocks"
    layers = net.config.layers_per_block
    return f"{len(net.down_blocks)} stages x {layers} resnet layer(s), transformer depth {net.config.transformer_layers_per_block}"


def _group(net, arch: str, group: str) -> set[str]:
    """The same module-group naming as DiffusionAdapter.module_group."""
    names = [n for n, _ in net.named_parameters()]
    if arch == "unet":
        kv = lambda n: ".attn2.to_k." in n or ".attn2.to_v." in n
        xattn = lambda n: ".attn2." in n
    else:
        kv = lambda n: ".add_k_proj." in n or ".add_v_proj." in n
        xattn = lambda n: any(k in n for k in (".add_q_proj.", ".add_k_proj.", ".add_v_proj.", ".to_add_out.", ".norm_added_"))
    pick = {"xattn-kv": kv, "xattn": xattn, "non-xattn": lambda n: not xattn(n), "all": lambda n: True}[group]
    return {n for n in names if pick(n)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--json", help="also append each case's result as one JSON line to this file")
    ap.add_argument("--methods", nargs="+", default=None, help=f"default: all on a GPU, {CPU_METHODS} on CPU")
    ap.add_argument("--size", type=int, default=None, help="pixels (default 512 on a GPU, 256 on CPU)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--full", action="store_true", help="full depth (default on a GPU)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(case(**json.loads(args.case))))
        return
    gpu = torch.cuda.is_available()
    methods = args.methods or (list(METHODS) if gpu else CPU_METHODS)
    size, full = args.size or (512 if gpu else 256), args.full or gpu
    print(f"{'family':7s} {'method':13s} {'weights':>8s} {'trained':>8s} {'activ.':>8s} {'account':>8s} {'peak':>8s} "
          f"{'peak/acc':>8s} {'before':>8s} {'step s':>7s} {'params':>7s}   ({'GPU' if gpu else 'CPU, reduced depth'}, {size} px, "
          f"batch {args.batch}; GB)")
    for family in args.families:
        for method in methods:
            spec = dict(family=family, method=method, size=size, batch=args.batch, full=full, steps=args.steps)
            run = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)], capture_output=True, text=True)
            if run.returncode != 0:
                print(f"{family:7s} {method:13s} failed: {run.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(run.stdout.strip().splitlines()[-1])
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(r) + "\n")
            print(f"{family:7s} {method:13s} {r['weights_gb']:8.2f} {r['trained_gb']:8.3f} {r['activations_gb']:8.2f} "
                  f"{r['account_gb']:8.2f} {r['peak_gb']:8.2f} {r['ratio']:8.2f} {r['before_account_gb']:8.2f} "
                  f"{r['step_s']:7.2f} {r['params_m']:6.0f}M   {r['blocks']}", flush=True)


if __name__ == "__main__":
    main()
