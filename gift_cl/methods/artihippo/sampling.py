"""Hierarchical, task-similarity-guided exploration-exploitation sampling of ArtiHippo architectures.

The sources give the structure (a level-1 categorical over the old tasks' experts and ``Aux = {New, Skip}``,
probabilities from task similarity mixed with uniform exploration; a level-2 Bernoulli reuse-vs-adapt; ε₁ = 0.3
in supernet training, ε₂ = 0.5 in the search; normalised cosine similarity of mean [CLS] tokens). They give no
formulas for the weights: every formula below (the softmax at temperature τ over ``ŝ``, Aux's weight
``1 − max ŝ``, the credit ``pretrained_similarity`` of the pretrained projection, ``ρ = (1 − ε)·ŝ + ε/2`` and
the 50/50 New/Skip split inside Aux) is the project's own.

Per block ``l`` of the new task:

- **Level 1**, a categorical over the distinct old experts at ``l`` (the pretrained projection and every old
  task's expert there; a reuse names the expert it reuses) and ``Aux = {new, skip}``. Exploitation weights come
  from task similarity: the normalised similarity of an expert is ``ŝ = (1 + cos) / 2`` with ``cos`` the
  cosine between the new task's mean frozen [CLS] feature and the mean [CLS] of the most similar old task
  that runs this expert (the pretrained projection, which has no task of its own, counts at least
  ``pretrained_similarity``); ``Aux`` weighs ``1 − max ŝ`` (the less the new task resembles any old one, the
  more it tries new/skip). ``p = (1 − ε)·softmax(w / τ) + ε·uniform``. A known consequence: as old experts
  accumulate, Aux's share (and so New's) falls (about 16 % at task 1, 5 % at task 5, 2 % at task 9 with
  ε₁ = 0.3 and the similarities of the shipped backbone).
- **Level 2**: for an old expert, Bernoulli(ρ) reuse vs adapt with ``ρ = (1 − ε)·ŝ + ε/2`` (similar experts are
  reused more, dissimilar ones adapted); for Aux, new vs skip with equal probability.

``level1="separate"`` (an option, also the project's own formula) gives New and Skip their own level-1
categories instead of one shared Aux: items are the old experts, ``new`` and ``skip``; exploitation weights
``ŝ`` for an expert and ``1 − max ŝ`` for each of New and Skip, ``softmax(w / τ)``; exploration ε is spread
uniformly over the *kinds* present (old experts as one kind, shared uniformly among them; New; Skip) rather
than over the items, so exploration does not thin out as old experts accumulate: P(New) ≥ ε / 3 at every block
and task (10 % at ε₁ = 0.3, 16.7 % at ε₂ = 0.5), however many tasks came before. ``level1="aux"`` (the
default) is the behaviour described above.

ε is ``eps_train`` (0.3, the reference's ε₁) while training the supernet and ``eps_search`` (0.5, ε₂) in the
evolutionary search. Operations left out of the model's search space (``ops``) get no probability.
"""
from __future__ import annotations

from typing import Optional, cast

import torch

from .arch import PRETRAINED


def normalised(cos: float) -> float:
    return (1.0 + float(cos)) / 2.0


def _at(similarity, block: int) -> float:
    """A similarity at ``block``: the value itself (one per task) or its ``block``-th entry (per layer)."""
    return float(similarity) if isinstance(similarity, (int, float)) else float(similarity[block])


class HierarchicalSampler:
    """Samples one (op, source) per block for the task being searched, given its cosine similarity to
    each old task (``similarity``: {old task: cos}, or {old task: [cos per block]} for the per-layer
    similarity)."""

    LEVEL1 = ("aux", "separate")

    def __init__(self, model, similarity: dict, temperature: float = 0.2,
                 pretrained_similarity: float = 0.0, generator: Optional[torch.Generator] = None,
                 level1: str = "aux"):
        if level1 not in self.LEVEL1:
            raise ValueError(f"level1={level1!r}: must be one of {list(self.LEVEL1)}")
        self.level1_mode = level1
        self.model = model
        self.ops = set(model.ops)
        self.temperature = temperature
        self.generator = generator
        old = sorted(similarity)
        self.experts: list[dict[int, float]] = []  # per block: {expert owner: normalised similarity}
        for l in range(model.depth):
            experts = {}
            if self.ops & {"reuse", "adapt"}:
                for owner, users in model.candidates(l, old).items():
                    sims = [_at(similarity[t], l) for t in users]
                    if owner == PRETRAINED:
                        sims.append(pretrained_similarity)
                    experts[owner] = normalised(max(sims))
            self.experts.append(experts)
        self.aux = [op for op in ("new", "skip") if op in self.ops]

    def level1(self, block: int, eps: float) -> list[tuple[object, float]]:
        """[(expert owner or "aux", probability)] at ``block``; with ``level1="separate"``, "new" and "skip"
        instead of "aux"."""
        if self.level1_mode == "separate":
            return self._level1_separate(block, eps)
        experts = self.experts[block]
        items: list[object] = list(experts)
        weights = [experts[o] for o in experts]
        if self.aux:
            items.append("aux")
            weights.append(1.0 - max(experts.values(), default=0.0))
        exploit = torch.softmax(torch.tensor(weights, dtype=torch.float64) / self.temperature, 0)
        probs = (1 - eps) * exploit + eps / len(items)
        return list(zip(items, probs.tolist()))

    def _level1_separate(self, block: int, eps: float) -> list[tuple[object, float]]:
        experts = self.experts[block]
        novelty = 1.0 - max(experts.values(), default=0.0)
        items: list[object] = list(experts) + list(self.aux)
        weights = [experts[o] for o in experts] + [novelty] * len(self.aux)
        exploit = torch.softmax(torch.tensor(weights, dtype=torch.float64) / self.temperature, 0)
        kinds = (1 if experts else 0) + len(self.aux)
        explore = torch.tensor([1.0 / (kinds * len(experts))] * len(experts) + [1.0 / kinds] * len(self.aux),
                               dtype=torch.float64)
        probs = (1 - eps) * exploit + eps * explore
        return list(zip(items, probs.tolist()))

    def reuse_probability(self, block: int, owner: int, eps: float) -> float:
        if "adapt" not in self.ops:
            return 1.0
        if "reuse" not in self.ops:
            return 0.0
        return (1 - eps) * self.experts[block][owner] + eps / 2

    def distribution(self, block: int, eps: float) -> dict[tuple[str, Optional[int]], float]:
        """The exact probability of every (op, source) at ``block`` (tests and reports)."""
        out: dict[tuple[str, Optional[int]], float] = {}
        for item, p in self.level1(block, eps):
            if item == "aux":
                for op in self.aux:
                    out[(op, None)] = p / len(self.aux)
            elif item in ("new", "skip"):
                out[(item, None)] = p
            else:
                owner = cast(int, item)  # neither "aux" nor "new"/"skip": an expert's owner (a source id)
                rho = self.reuse_probability(block, owner, eps)
                if rho > 0:
                    out[("reuse", owner)] = p * rho
                if rho < 1:
                    out[("adapt", owner)] = p * (1 - rho)
        return out

    def _draw(self, probs: list[float]) -> int:
        return int(torch.multinomial(torch.tensor(probs, dtype=torch.float64), 1, generator=self.generator))

    def sample_block(self, block: int, eps: float) -> tuple[str, Optional[int]]:
        level1 = self.level1(block, eps)
        item = level1[self._draw([p for _, p in level1])][0]
        if item == "aux":
            return self.aux[self._draw([1.0] * len(self.aux))], None
        if item in ("new", "skip"):
            return cast(str, item), None
        owner = cast(int, item)  # neither "aux" nor "new"/"skip": an expert's owner (a source id)
        rho = self.reuse_probability(block, owner, eps)
        reuse = bool(torch.rand((), generator=self.generator, dtype=torch.float64) < rho)
        return ("reuse" if reuse else "adapt"), owner

    def sample(self, eps: float) -> list[tuple[str, Optional[int]]]:
        return [self.sample_block(l, eps) for l in range(self.model.depth)]
