"""Ring-A-Bell (Tsai et al., ICLR 2024; chiayi-hsu/Ring-A-Bell): a black-box attack that needs only the text encoder.

1. Concept vector from paired prompts with and without the concept (same wording otherwise):

       v = mean_i [ E(with_i) - E(without_i) ]            E = text-encoder hidden states (L x D)

2. For each concept prompt p, the target embedding  E* = E(p) + eta * v  (eta = 3).
3. A genetic search over token ids for a prompt of `length` = 16 tokens whose encoding is closest to E*:
   population 200, 3000 generations; each generation keeps the fitter half, then one-point crossover
   (rate 0.5, each pair gives two children) and single-token mutation (rate 0.25), as in the reference notebook.

Fitness: cosine similarity between the flattened encodings (as the paper states; default) or the negative squared
L2 distance (`fitness="l2"`, what the reference notebook computes). The result is the best prompt as text.
The text encoder is the original model's where `target.original` is a DiffusionAdapter (the public encoder the
attack assumes), else the attacked model's (erasure methods that leave the text encoder alone share it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from erase.models.adapter import DiffusionAdapter
from erase.evaluation.attacks.interface import Attack, AttackError, AttackResult, AttackTarget, single_clip
from erase.evaluation.attacks.randomness import seeded
from erase.evaluation.attacks.tokens import allowed_token_ids


@torch.no_grad()
def concept_vector(adapter: DiffusionAdapter, with_concept: Sequence[str], without_concept: Sequence[str]) -> Tensor:
    """v = mean_i [E(with_i) - E(without_i)] over paired prompts: (L, D) hidden states of the text encoder."""
    if len(with_concept) != len(without_concept) or not with_concept:
        raise AttackError(f"Ring-A-Bell needs paired prompts with and without the concept (got {len(with_concept)} "
                          f"and {len(without_concept)}): AttackTarget(prompts=..., neutral_prompts=...)")
    diff = adapter.encode_clip_tokens(adapter.tokenize(with_concept)) - adapter.encode_clip_tokens(adapter.tokenize(without_concept))
    return diff.float().mean(0)


@dataclass
class RingABell(Attack):
    name = "ringabell"
    access = "black-box"
    needs_clip_tokens = True

    eta: float = 3.0
    length: int = 16  # tokens of the searched prompt
    population: int = 200
    generations: int = 3000
    mutate_rate: float = 0.25
    crossover_rate: float = 0.5
    fitness: str = "cosine"  # "cosine" | "l2"
    batch_size: int = 256  # candidates encoded at once

    def __post_init__(self) -> None:
        if self.fitness not in ("cosine", "l2"):
            raise AttackError(f"fitness must be 'cosine' or 'l2', not {self.fitness!r}")
        if self.population < 2:
            raise AttackError("population must be at least 2")

    def run(self, adapter: DiffusionAdapter, target: AttackTarget, generator: torch.Generator | None = None) -> AttackResult:
        g = seeded(generator)
        encoder = target.original if isinstance(target.original, DiffusionAdapter) else adapter
        self.check(encoder)
        vec = concept_vector(encoder, target.prompts, target.neutral_prompts)
        tok = encoder.pipe.tokenizer
        texts, scores = [], []
        for prompt in target.prompts:
            with torch.no_grad():
                goal = encoder.encode_clip_tokens(encoder.tokenize([prompt]))[0].float() + self.eta * vec
            best, score = self.search(encoder, goal, g)
            texts.append(tok.decode(best[1 : self.length + 1].tolist(), skip_special_tokens=True).strip())
            scores.append(score)
        return self.result(
            "text", prompts=texts, photo=target.photo, mask=target.mask,
            info={"best_fitness": scores, "concept_vector_norm": vec.norm().item(),
                  "text_encoder": "original" if encoder is not adapter else "attacked model"},
        )

    def unsupported_reason(self, adapter: DiffusionAdapter) -> str | None:
        if not single_clip(adapter):
            return (f"attack {self.name!r} searches CLIP token ids of an SD1/SD2-style text encoder; "
                    f"family {adapter.family!r} encodes text with {adapter.spec.text_encoders}")
        return None

    @torch.no_grad()
    def score(self, encoder: DiffusionAdapter, population: Tensor, goal: Tensor) -> Tensor:
        """Fitness of each candidate (higher is better)."""
        out = []
        for chunk in population.split(self.batch_size):
            emb = encoder.encode_clip_tokens(chunk.to(encoder.device)).float()
            if self.fitness == "cosine":
                out.append(F.cosine_similarity(emb.flatten(1), goal.flatten()[None], dim=-1))
            else:
                out.append(-(emb - goal).pow(2).flatten(1).sum(-1))
        return torch.cat(out).cpu()

    def search(self, encoder: DiffusionAdapter, goal: Tensor, g: torch.Generator) -> tuple[Tensor, float]:
        """The genetic search; returns the best token ids (L,) and its fitness."""
        tok = encoder.pipe.tokenizer
        n_ctx = tok.model_max_length
        if self.length > n_ctx - 2:
            raise AttackError(f"length {self.length} does not fit {n_ctx - 2} prompt tokens")
        vocab = torch.tensor(allowed_token_ids(tok))
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        genes = vocab[torch.randint(len(vocab), (self.population, self.length), generator=g)]
        frame = torch.full((1, n_ctx), pad, dtype=torch.long)
        frame[0, 0], frame[0, self.length + 1] = tok.bos_token_id, tok.eos_token_id

        def assemble(genes: Tensor) -> Tensor:
            ids = frame.repeat(len(genes), 1)
            ids[:, 1 : self.length + 1] = genes
            return ids

        for gen in range(self.generations):
            fit = self.score(encoder, assemble(genes), goal)
            order = fit.argsort(descending=True)
            genes = genes[order[: max(1, self.population // 2)]]
            if gen == self.generations - 1:
                return assemble(genes[:1])[0], fit[order[0]].item()
            genes = self._mutate(self._crossover(genes, g), vocab, g)
        fit = self.score(encoder, assemble(genes), goal)  # generations == 0: the best random prompt
        return assemble(genes[fit.argmax()][None])[0], fit.max().item()

    def _crossover(self, parents: Tensor, g: torch.Generator) -> Tensor:
        """Every parent survives; with probability crossover_rate it also mates with a random parent at a random
        cut point, giving both children."""
        out = [parents]
        for i in range(len(parents)):
            if torch.rand((), generator=g).item() < self.crossover_rate:
                j = torch.randint(len(parents), (), generator=g).item()
                cut = torch.randint(self.length, (), generator=g).item()  # genes before the cut come from a
                a, b = parents[i], parents[j]
                out.append(torch.stack([torch.cat([a[:cut], b[cut:]]), torch.cat([b[:cut], a[cut:]])]))
        return torch.cat(out)

    def _mutate(self, population: Tensor, vocab: Tensor, g: torch.Generator) -> Tensor:
        """With probability mutate_rate, one random position of a candidate gets a random token."""
        population = population.clone()
        hit = torch.rand(len(population), generator=g) < self.mutate_rate
        for i in hit.nonzero()[:, 0].tolist():
            pos = torch.randint(self.length, (), generator=g).item()
            population[i, pos] = vocab[torch.randint(len(vocab), (), generator=g)]
        return population
