"""Unified Concept Editing (Gandikota et al., WACV 2024): a closed-form edit of the maps that read the text.

For every linear map W that takes text embeddings (UNet cross-attention to_k / to_v; for MMDiT and FLUX the
context embedder and the pooled-text embedder), with erased embeddings c_i, their guide outputs
v*_i = W_old c_guide(i), and preserved embeddings c_j:

    W = (lamb W_old + sum_i s_e v*_i c_i^T + sum_j s_p W_old c_j c_j^T) (lamb I + sum_i s_e c_i c_i^T + sum_j s_p c_j c_j^T)^-1

i.e. the least-squares map that sends each erased embedding where the guide went, keeps preserved ones, and
stays near W_old. `UCEFitter` accumulates the two sums and solves once, lazily.

Token positions, as the reference code picks them: the last word token (attention_mask.sum() - 2); also
"words" (every non-special token) and "all" (special tokens too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from erase.concept import Concept
from erase.methods.base import ClosedFormMethod, MethodError
from erase.methods.registry import register
from erase.models.adapter import DiffusionAdapter

TOKEN_MODES = ("last", "words", "all")


@dataclass
class UCEFitter:
    """Normal-equation sums for one map W (out x in); `solve()` returns the edited weight."""

    w_old: Tensor
    lamb: float
    lhs: Tensor = field(init=False)  # lamb W_old + sum s v* c^T
    gram: Tensor = field(init=False)  # lamb I + sum s c c^T

    def __post_init__(self) -> None:
        w = self.w_old.detach().double()
        self.lhs = self.lamb * w.clone()
        self.gram = self.lamb * torch.eye(w.shape[1], dtype=torch.float64, device=w.device)

    def update(self, c: Tensor, v_star: Tensor, scale: float) -> None:
        """c: (n, in) embeddings; v_star: (n, out) where W should send them."""
        c, v_star = c.double(), v_star.double()
        self.lhs += scale * v_star.T @ c
        self.gram += scale * c.T @ c

    def preserve(self, c: Tensor, scale: float) -> None:
        self.update(c, c.double() @ self.w_old.detach().double().T, scale)

    def solve(self) -> Tensor:
        # Solve X gram = lhs rather than forming the inverse (same result, better conditioned).
        return torch.linalg.solve(self.gram.T, self.lhs.T).T.to(self.w_old.dtype)


@register("uce")
class UCE(ClosedFormMethod):
    name = "uce"

    def __init__(
        self,
        erase_scale: float = 1.0,
        preserve_scale: float = 1.0,
        lamb: float = 0.5,
        token_positions: str = "last",
        guides: list[str] | None = None,  # one per concept prompt, or one for all; default: the concept's anchor
    ):
        if token_positions not in TOKEN_MODES:
            raise MethodError(f"token_positions must be one of {TOKEN_MODES}, got {token_positions!r}")
        self.erase_scale, self.preserve_scale, self.lamb = erase_scale, preserve_scale, lamb
        self.token_positions, self.guides = token_positions, guides

    @torch.no_grad()
    def apply(self, adapter: DiffusionAdapter, concept: Concept) -> dict[str, float]:
        self.check(adapter.spec)
        guides = self.guides or [concept.anchor]
        if len(guides) == 1:
            guides = guides * len(concept.prompts)
        if len(guides) != len(concept.prompts):
            raise MethodError(f"UCE: {len(guides)} guide concepts for {len(concept.prompts)} erased prompts")
        targets = edit_targets(adapter)
        fitters = {name: UCEFitter(module.weight, self.lamb) for name, (module, _) in targets.items()}
        for prompt, guide in zip(concept.prompts, guides):
            c_tok, c_pool = text_vectors(adapter, prompt, self.token_positions)
            g_tok, g_pool = text_vectors(adapter, guide, "last")
            for name, (module, kind) in targets.items():
                c, g = (c_tok, g_tok) if kind == "tokens" else (c_pool, g_pool)
                v_star = module(g).expand(c.shape[0], -1)  # the guide's output under the original weights
                fitters[name].update(c, v_star, self.erase_scale)
        for prompt in concept.preserve:
            c_tok, c_pool = text_vectors(adapter, prompt, self.token_positions)
            for name, (_, kind) in targets.items():
                fitters[name].preserve(c_tok if kind == "tokens" else c_pool, self.preserve_scale)
        change = 0.0
        for name, (module, _) in targets.items():
            new = fitters[name].solve()
            change += (new - module.weight).float().norm().item() ** 2
            module.weight.copy_(new)
        return {"edited_modules": float(len(targets)), "weight_change_norm": change**0.5}


def edit_targets(adapter: DiffusionAdapter) -> dict[str, tuple[nn.Linear, str]]:
    """The linear maps UCE edits, each with what it reads ("tokens" or "pooled")."""
    if adapter.spec.architecture == "unet":
        return {name: (m, "tokens") for name, m in adapter.linear_modules("xattn-kv").items()}
    net = adapter.denoiser
    targets = {"context_embedder": (net.context_embedder, "tokens")}
    pooled = getattr(getattr(net, "time_text_embed", None), "text_embedder", None)
    if pooled is not None:
        targets["time_text_embed.text_embedder.linear_1"] = (pooled.linear_1, "pooled")
    return targets


def text_vectors(adapter: DiffusionAdapter, prompt: str, mode: str) -> tuple[Tensor, Tensor | None]:
    """The prompt's token embeddings at the chosen positions (n, d), and its pooled embedding (1, d')."""
    cond = adapter.encode_prompts([prompt])
    positions = token_positions(adapter, prompt, mode)
    pooled = None if cond.pooled is None else cond.pooled.float()
    return cond.embeds[0, positions].float(), pooled


def token_positions(adapter: DiffusionAdapter, prompt: str, mode: str) -> list[int]:
    """Indices into the conditioning sequence. FLUX conditions on T5 only (tokenizer_2); the others start with
    CLIP tokens (SD3 appends T5 after them)."""
    tok = adapter.pipe.tokenizer_2 if adapter.spec.architecture == "flux" else adapter.pipe.tokenizer
    ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids
    mask = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True).attention_mask
    n = int(sum(mask))
    has_bos = tok.bos_token_id is not None and ids[0] == tok.bos_token_id
    first_word = 1 if has_bos else 0
    if mode == "last":
        return [max(n - 2, 0)]  # the reference's attention_mask.sum() - 2: the last word, before the end token
    if mode == "words":
        return list(range(first_word, max(n - 1, first_word + 1)))
    return list(range(n))
