"""Token-space helpers for the attacks that search prompts a user could type (UnlearnDiffAtk, P4D, Ring-A-Bell,
concept inversion): prompts with learnable token slots, the vocabulary an attack may use, and the projection of
embeddings onto their nearest tokens (PEZ)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from erase.evaluation.attacks.interface import AttackError
from erase.evaluation.attacks.randomness import randint
from erase.models.adapter import Conditioning, DiffusionAdapter


@dataclass
class SlotPrompt:
    """A tokenised prompt with learnable slots: [bos] + (fixed tokens | slots)* + [eos] + padding.

    The slot positions get their embeddings from the attack; every other position is the usual token embedding.
    """

    ids: Tensor  # (1, L) token ids; slots hold their initial/projected token ids
    slots: Tensor  # (k,) positions of the learnable tokens
    end: int  # index of the eos token (the body is ids[1:end])

    def embeds(self, adapter: DiffusionAdapter, slot_embeds: Tensor) -> Tensor:
        """Token embeddings (B, L, D) with the slots replaced by `slot_embeds` ((k, D) or (B, k, D))."""
        emb = adapter.token_embedding()
        base = emb(self.ids.to(adapter.device)).detach()
        slot_embeds = slot_embeds if slot_embeds.dim() == 3 else slot_embeds[None]
        base = base.expand(len(slot_embeds), -1, -1).clone()
        base[:, self.slots.to(adapter.device)] = slot_embeds.to(base.dtype)
        return base

    def encode(self, adapter: DiffusionAdapter, slot_embeds: Tensor) -> Conditioning:
        """Text conditioning from the prompt with these slot embeddings (differentiable in them)."""
        return Conditioning(adapter.encode_clip_tokens(inputs_embeds=self.embeds(adapter, slot_embeds)))

    def with_ids(self, slot_ids: Sequence[int] | Tensor) -> Tensor:
        ids = self.ids.clone()
        ids[0, self.slots] = torch.as_tensor(list(map(int, slot_ids)), dtype=ids.dtype)
        return ids

    def text(self, tokenizer, slot_ids: Sequence[int] | Tensor) -> str:
        """The prompt as text with the slots set to `slot_ids` (what a user would type)."""
        body = self.with_ids(slot_ids)[0, 1 : self.end].tolist()
        return tokenizer.decode(body, skip_special_tokens=True, clean_up_tokenization_spaces=False).strip()


def slot_prompt(tokenizer, parts: Sequence[str | int | list[int]], placeholder: int | None = None) -> SlotPrompt:
    """Build a SlotPrompt from parts: text (str), token ids (list[int]) or a number of learnable slots (int)."""
    placeholder = allowed_token_ids(tokenizer)[0] if placeholder is None else placeholder
    body: list[int] = []
    slots: list[int] = []
    for part in parts:
        if isinstance(part, int):
            slots += range(1 + len(body), 1 + len(body) + part)
            body += [placeholder] * part
        elif isinstance(part, str):
            body += tokenizer(part, add_special_tokens=False).input_ids if part.strip() else []
        else:
            body += list(part)
    n = tokenizer.model_max_length
    if slots and max(slots) > n - 2:
        raise AttackError(f"the prompt is too long for {len(slots)} learnable tokens within {n} tokens")
    body = body[: n - 2]
    ids = [tokenizer.bos_token_id, *body, tokenizer.eos_token_id]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids += [pad] * (n - len(ids))
    return SlotPrompt(torch.tensor([ids]), torch.tensor(slots, dtype=torch.long), end=1 + len(body))


def allowed_token_ids(tokenizer) -> list[int]:
    """Vocabulary ids an attack may place in a prompt: everything but the special tokens."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return [i for i in range(len(tokenizer)) if i not in special]


def nearest_tokens(embeds: Tensor, table: Tensor, allowed: Sequence[int]) -> Tensor:
    """Ids of the vocabulary embeddings nearest in cosine to each row of `embeds` (..., D) (PEZ projection)."""
    allowed_t = torch.as_tensor(list(allowed), device=table.device)
    vocab = F.normalize(table[allowed_t].float(), dim=-1)
    sims = F.normalize(embeds.detach().float().reshape(-1, embeds.shape[-1]), dim=-1).to(vocab.device) @ vocab.T
    return allowed_t[sims.argmax(-1)].reshape(embeds.shape[:-1]).cpu()


def random_tokens(tokenizer, n: int, generator: torch.Generator) -> list[int]:
    allowed = allowed_token_ids(tokenizer)
    return [allowed[i] for i in randint(len(allowed), n, generator)]
