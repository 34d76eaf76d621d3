"""The ArtiHippo architecture search for one new task: SPOS supernet training with hierarchical
similarity-guided sampling on the task's training data minus a held-out search split, then an evolutionary
search over the supernet's accuracy on that search split that picks, among candidates within ``tolerance``
of the best, the one that adds the fewest parameters (then the most accurate, then the fewest FLOPs).

What comes from the sources and what is the project's own:

- SPOS supernet + evolutionary search, exploration ε₁ (supernet) / ε₂ (search): ArtiHippo / CHEEM.
- The selection rule: the candidates within ``tolerance`` of the best, then the cheapest by ``choice``. CHEEM's
  rule is ``tolerance_kind="relative", tolerance=0.02, choice="flops"`` (the fewest FLOPs within 2 % of the
  best accuracy). The default is the project's own: an *absolute* accuracy margin (``tolerance_kind=
  "absolute"``) and the fewest *added parameters* first (``choice="parameters"``). On a small search split an
  accuracy margin may be below one image (40 images: one image = 0.025, so 0.02 admits only exact ties);
  ``tolerance_kind="images"`` states the margin in search images instead (``tolerance=2``: two images).
- The task similarity: by default the project's simplification, one global cosine between mean frozen [CLS]
  features (:func:`similarities`); ``similarity="per_layer"`` is CHEEM's, per block along the old task's path
  (:func:`layer_similarities`: the new task's mean [CLS] token after block ``l`` of the old task's path against
  the old task's own, recorded when it finished).
- The supernet's head warm-started as a linear probe (:func:`linear_probe`) and the ``new_lr_scale`` for new
  experts are the project's own.

Everything here is deterministic given torch's RNG when :func:`search_task` starts (the plugin forks the RNG
and seeds it from one draw of the run's RNG), so a run killed during a search redoes the same search.

:class:`ArtiHippoSearch` runs the search as an Avalanche plugin (``strategy=artihippo``). At the start of each
experience, before the template adapts the model (so the task's head and the parts of its architecture exist
when the optimizer is built), it carves a search split deterministically from the experience's training data
(``val_fraction``, at most ``max_val`` images), trains the supernet on the *rest* of the training data, runs
the evolutionary search on the search split and fixes the task's architecture (``model.set_architecture``):
its new/adapted parameters are created freshly initialised and the template's normal epochs train them with
the normal optim recipe. The architecture is part of the model's checkpointed state, so an experience resumed
mid-way skips the search; a run killed during a search continues from the previous experience boundary and
redoes it. The plugin itself holds no state.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from torch import nn
from torch.utils.data import DataLoader

from ...config import ConfigError
from ..base import classes_per_task
from .arch import Arch
from .sampling import HierarchicalSampler

log = logging.getLogger("gift_cl")



@dataclass
class SearchConfig:
    supernet_epochs: int = 2
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 32
    val_fraction: float = 0.2
    max_val: int = 100
    population: int = 8
    generations: int = 3
    parents: int = 4
    mutation_prob: float = 0.25
    eps_train: float = 0.3
    eps_search: float = 0.5
    temperature: float = 0.2
    pretrained_similarity: float = 0.0
    tolerance: float = 0.02
    eval_batch_size: int = 256
    probe_steps: int = 200
    new_lr_scale: float = 0.1
    level1: str = "aux"
    tolerance_kind: str = "absolute"  # absolute | relative (CHEEM) | images (a count of search-split images)
    choice: str = "parameters"  # parameters (the project's) | flops (CHEEM): the cheapest near-best candidate
    similarity: str = "global"  # global (one cosine of frozen [CLS] means) | per_layer (CHEEM: per block, along paths)

    TOLERANCE_KINDS = ("absolute", "relative", "images")
    CHOICES = ("parameters", "flops")
    SIMILARITIES = ("global", "per_layer")

    def __post_init__(self):
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction}: must be in (0, 1)")
        for name in ("supernet_epochs", "population", "parents", "batch_size", "max_val"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.generations < 0 or self.probe_steps < 0 or not 0 <= self.mutation_prob <= 1 or self.temperature <= 0:
            raise ValueError("generations >= 0, mutation_prob in [0, 1] and temperature > 0 are required")
        for name in ("eps_train", "eps_search"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1]")
        if self.level1 not in HierarchicalSampler.LEVEL1:
            raise ValueError(f"level1={self.level1!r}: must be one of {list(HierarchicalSampler.LEVEL1)}")
        if self.tolerance_kind not in self.TOLERANCE_KINDS:
            raise ValueError(f"tolerance_kind={self.tolerance_kind!r}: must be one of {list(self.TOLERANCE_KINDS)}")
        if self.choice not in self.CHOICES:
            raise ValueError(f"choice={self.choice!r}: must be one of {list(self.CHOICES)}")
        if self.similarity not in self.SIMILARITIES:
            raise ValueError(f"similarity={self.similarity!r}: must be one of {list(self.SIMILARITIES)}")
        if self.tolerance < 0 or (self.tolerance_kind != "images" and self.tolerance > 1):
            raise ValueError(f"tolerance={self.tolerance}: must be in [0, 1] (an accuracy margin or fraction), or "
                             f"a count of images >= 0 with tolerance_kind=images")

    def margin(self, best: float, n_val: int) -> float:
        """The accuracy margin below ``best`` within which a candidate counts as near-best."""
        if self.tolerance_kind == "relative":
            return self.tolerance * best
        if self.tolerance_kind == "images":
            return self.tolerance / n_val
        return self.tolerance

    def cost_key(self, params: int, flops: int, accuracy: float) -> tuple:
        """How the near-best candidates are ranked (lowest first): ``choice``'s cost, then accuracy, then the
        other cost."""
        if self.choice == "flops":
            return (flops, -accuracy, params)
        return (params, -accuracy, flops)


def split_indices(n: int, val_fraction: float, max_val: int, task: int) -> tuple[list[int], list[int]]:
    """``(train, search)`` indices: a search split carved from a task's training data (the same for every run
    and seed); the supernet trains on ``train`` only and paths are scored on ``search``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(1_000_003 + task)).tolist()
    n_val = max(1, min(max_val, int(round(val_fraction * n)), n - 1))
    return sorted(perm[n_val:]), sorted(perm[:n_val])


@torch.no_grad()
def frozen_features(model, dataset, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen [CLS] features and labels of every sample, in order (un-augmented)."""
    feats, labels = [], []
    for x, y, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        feats.append(model.frozen_features(x.to(device)))
        labels.append(y.to(device))
    return torch.cat(feats), torch.cat(labels)


def linear_probe(head: nn.Linear, feats: torch.Tensor, labels: torch.Tensor, steps: int, lr: float,
                 weight_decay: float) -> None:
    """Warm-start the supernet's head as a linear probe on frozen features (full batch; milliseconds): the
    supernet's paths then start from a classifier that already reads the features, so two short supernet
    epochs are enough to rank them."""
    if steps <= 0:
        return
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        loss = F.cross_entropy(head(feats), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def similarities(model, prototype: torch.Tensor) -> dict[int, float]:
    """Cosine similarity of the new task's mean frozen [CLS] feature to each old task's: one global value per
    old task (the project's simplification; CHEEM computes it per layer along the old task's path)."""
    return {t: float(F.cosine_similarity(prototype, p.to(prototype.device), dim=0))
            for t, p in sorted(model.prototypes.items()) if t in model.arch}


@torch.no_grad()
def layer_means(model, dataset, path: list, batch_size: int, device) -> torch.Tensor:
    """The mean [CLS] token after every block of ``path`` over ``dataset`` (un-augmented): ``(depth, D)``."""
    total, n = None, 0
    for x, _, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        tokens: list = []
        model.run_path(x.to(device), path, cls_tokens=tokens)
        batch = torch.stack(tokens).sum(1)
        total = batch if total is None else total + batch
        n += len(x)
    assert total is not None, "an empty dataset has no mean"
    return total / n


def layer_similarities(model, dataset, batch_size: int, device) -> dict[int, list[float]]:
    """CHEEM's task similarity, per block: for each old task with a recorded ``layer_prototypes`` entry, the
    cosine between the new task's mean [CLS] token after block ``l`` of that task's path and the old task's own
    (``{old task: [cos per block]}``)."""
    was_training = model.training
    model.eval()
    try:
        return {t: F.cosine_similarity(layer_means(model, dataset, model.task_path(t), batch_size, device),
                                       model.layer_prototypes[t].to(device), dim=-1).tolist()
                for t in sorted(model.layer_prototypes) if t in model.arch}
    finally:
        model.train(was_training)


def train_supernet(model, head: nn.Module, loader, sampler: HierarchicalSampler, cfg: SearchConfig,
                   device) -> list[float]:
    """SPOS: one sampled path per step, trained with AdamW over the supernet's own parts and a head."""
    new = [p for pool in model.pools for k, m in pool.experts.items() if k.startswith("search") for p in m.parameters()]
    new_ids = {id(p) for p in new}
    rest = [p for p in model.search_parameters() if id(p) not in new_ids] + list(head.parameters())
    params = new + rest
    for p in params:
        p.requires_grad_(True)
    # full-rank new experts at a fine-tuning learning rate; adapters, generator and head at the PEFT one
    groups = [g for g in ({"params": new, "lr": cfg.lr * cfg.new_lr_scale}, {"params": rest, "lr": cfg.lr})
              if g["params"]]
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.train()
    losses = []
    for _ in range(cfg.supernet_epochs):
        total, n = 0.0, 0
        for x, y, _ in loader:
            x, y = x.to(device), y.to(device)
            path = model.search_path(sampler.sample(cfg.eps_train))
            loss = F.cross_entropy(head(model.run_path(x, path)), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, n = total + loss.item() * len(y), n + len(y)
        losses.append(total / max(n, 1))
    for p in params:
        p.requires_grad_(False)
    return losses


def evolutionary_search(evaluate: Callable[[Arch], float], sampler: HierarchicalSampler, cost: Callable,
                        cfg: SearchConfig, generator: Optional[torch.Generator] = None,
                        n_val: int = 1) -> tuple[Arch, dict]:
    """SPOS's evolution (population, top-k parents, mutation and crossover, every path evaluated once), then
    the computation-aware choice among the candidates within the tolerance of the best
    (:meth:`SearchConfig.margin`; ``n_val``: the search split's size) by :meth:`SearchConfig.cost_key`. By
    default the fewest added parameters, then the best accuracy, then the fewest FLOPs (the project's rule);
    ``choice="flops"`` with a relative tolerance is CHEEM's."""
    scores: dict[tuple, float] = {}

    def score(arch: Arch) -> None:
        key = tuple(arch)
        if key not in scores:
            scores[key] = evaluate(list(arch))

    def rand() -> float:
        return float(torch.rand((), generator=generator))

    depth = sampler.model.depth
    tries = 0
    while len(scores) < cfg.population and tries < 20 * cfg.population:
        score(sampler.sample(cfg.eps_search))
        tries += 1
    for _ in range(cfg.generations):
        ranked = sorted(scores, key=lambda k: -scores[k])[: cfg.parents]
        children: list[list] = []
        tries = 0
        while len(children) < cfg.population and tries < 20 * cfg.population:
            tries += 1
            a = list(ranked[int(torch.randint(len(ranked), (1,), generator=generator))])
            if len(children) % 2 == 0 or len(ranked) == 1:  # mutation
                child = [sampler.sample_block(l, cfg.eps_search) if rand() < cfg.mutation_prob else a[l]
                         for l in range(depth)]
            else:  # uniform crossover
                b = ranked[int(torch.randint(len(ranked), (1,), generator=generator))]
                child = [a[l] if rand() < 0.5 else b[l] for l in range(depth)]
            if tuple(child) not in scores and child not in children:
                children.append(child)
        for child in children:
            score(child)
    chosen, near = choose(scores, cost, cfg, n_val)
    best = max(scores.values())
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    return list(chosen), {
        "evaluated": len(scores),
        "best_val_accuracy": best,
        "near_best": len(near),
        "chosen_val_accuracy": scores[chosen],
        "best_arch": [list(op) for op in ranked[0][0]],
        "top": [{"arch": [list(op) for op in k], "val_accuracy": v, "added_parameters": cost(list(k))[0]}
                for k, v in ranked[:5]],
    }


def choose(scores: dict[tuple, float], cost: Callable, cfg: SearchConfig, n_val: int) -> tuple[tuple, list]:
    """The chosen architecture among the evaluated ones (``scores``: search accuracy by architecture), and the
    near-best candidates it was chosen from: those within :meth:`SearchConfig.margin` of the best, ranked by
    :meth:`SearchConfig.cost_key` (``cost(arch)`` = added parameters, added FLOPs)."""
    best = max(scores.values())
    margin = cfg.margin(best, n_val)
    near = [k for k, v in scores.items() if v >= best - margin - 1e-9]  # 1e-9: accuracies are counts / n_val
    # default: fewest added parameters first, then the most accurate, FLOPs break exact ties (FLOPs first, as
    # choice="flops", lets skip win every noisy tie against reuse on a small search split)

    def rank(k: tuple) -> tuple:
        params, flops = cost(list(k))
        return (*cfg.cost_key(params, flops, scores[k]), repr(k))

    return min(near, key=rank), near


def search_task(model, dataset, task: int, num_classes: int, cfg: SearchConfig, device) -> tuple[Arch, dict]:
    """Supernet training on ``task``'s training data minus a held-out search split, and evolutionary search
    scoring paths on that split.
    Leaves the model as it found it (the supernet's parts are dropped); returns the chosen architecture and
    a log of the search (plain containers)."""
    t0 = time.time()
    gen = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
    train_idx, val_idx = split_indices(len(dataset), cfg.val_fraction, cfg.max_val, task)
    feats, labels = frozen_features(model, dataset.eval(), cfg.eval_batch_size, device)
    prototype = feats.mean(0)
    sims: dict = (layer_similarities(model, dataset.eval(), cfg.eval_batch_size, device)
                  if cfg.similarity == "per_layer" else similarities(model, prototype))
    sampler = HierarchicalSampler(model, sims, cfg.temperature, cfg.pretrained_similarity, generator=gen,
                                  level1=cfg.level1)
    old = sorted(sims)
    lora_sources = [list(model.candidates(l, old)) for l in range(model.depth)]
    was_training = model.training
    model.add_search_modules(lora_sources)
    head = nn.Linear(model.feature_dim, num_classes).to(device)
    linear_probe(head, feats[train_idx], labels[train_idx], cfg.probe_steps, cfg.lr, cfg.weight_decay)
    try:
        loader = DataLoader(dataset.train().subset(train_idx), batch_size=cfg.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=gen))))
        losses = train_supernet(model, head, loader, sampler, cfg, device)
        t1 = time.time()
        val = [(x.to(device), y.to(device)) for x, y, _ in
               DataLoader(dataset.eval().subset(val_idx), batch_size=cfg.eval_batch_size, shuffle=False)]
        model.eval()

        @torch.no_grad()
        def evaluate(arch: Arch) -> float:
            path = model.search_path(arch)
            correct = sum((head(model.run_path(x, path)).argmax(-1) == y).sum().item() for x, y in val)
            return correct / sum(len(y) for _, y in val)

        cost = lambda arch: (model.added_parameters(arch), model.added_flops(arch))  # noqa: E731
        arch, evo = evolutionary_search(evaluate, sampler, cost, cfg, generator=gen, n_val=len(val_idx))
    finally:
        model.drop_search_modules()
        model.train(was_training)
    t2 = time.time()
    level1 = {str(l): {("aux" if o == "aux" else str(o)): round(p, 4) for o, p in sampler.level1(l, cfg.eps_train)}
              for l in range(model.depth)}
    return arch, {
        "similarity": {str(t): s for t, s in sims.items()},
        "level1_probabilities_supernet": level1,
        "n_train": len(train_idx), "n_val": len(val_idx),
        "supernet_loss": losses,
        **evo,
        "chosen_added_parameters": model.added_parameters(arch),
        "supernet_time_s": t1 - t0, "search_time_s": t2 - t1,
    }


# ------------------------------------------------------------------------------------------- the plugin
class ArtiHippoSearch(SupervisedPlugin):
    """Searches each new task's architecture (see :class:`gift_cl.methods.artihippo.SearchConfig` for the options)."""

    def __init__(self, supernet_epochs: int = 2, lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 32,
                 val_fraction: float = 0.2, max_val: int = 100, population: int = 8, generations: int = 3,
                 parents: int = 4, mutation_prob: float = 0.25, eps_train: float = 0.3, eps_search: float = 0.5,
                 temperature: float = 0.2, pretrained_similarity: float = 0.0, tolerance: float = 0.02,
                 eval_batch_size: int = 256, probe_steps: int = 200, new_lr_scale: float = 0.1,
                 level1: str = "aux", tolerance_kind: str = "absolute", choice: str = "parameters",
                 similarity: str = "global"):
        super().__init__()
        args = dict(locals())
        self.cfg = SearchConfig(**{k: v for k, v in args.items() if k not in ("self", "__class__")})

    def before_train_dataset_adaptation(self, strategy, **kwargs):
        model = strategy.model
        counts = classes_per_task(strategy.experience.dataset)
        if len(counts) != 1:
            raise ConfigError(f"ArtiHippo learns one task per experience (sequential protocol); this experience "
                             f"holds tasks {sorted(counts)}: use strategy.protocol=sequential")
        (task, num_classes), = counts.items()
        if model.has_architecture(task):  # resumed inside the experience: the architecture is already fixed
            return
        device = next(model.parameters()).device
        seed = int(torch.randint(2**62, (1,)))  # the only draw from the run's RNG
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            arch, report = search_task(model, strategy.experience.dataset, task, num_classes, self.cfg, device)
        model.set_architecture(task, arch, report)
        log.info("artihippo task %d: %s (supernet %.0fs, search %.0fs, val acc %.3f of best %.3f)", task,
                 " ".join(op if src is None else f"{op}:{src}" for op, src in arch), report["supernet_time_s"],
                 report["search_time_s"], report["chosen_val_accuracy"], report["best_val_accuracy"])

    def after_training_exp(self, strategy, **kwargs):
        """The per-layer similarity's record of the task just trained: its mean [CLS] token after every block
        along its own path, over its training data (un-augmented)."""
        if self.cfg.similarity != "per_layer":
            return
        model = strategy.model
        (task,) = classes_per_task(strategy.experience.dataset)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            means = layer_means(model, strategy.experience.dataset.eval(), model.task_path(task),
                                self.cfg.eval_batch_size, device)
        finally:
            model.train(was_training)
        model.layer_prototypes[task] = means.cpu()
