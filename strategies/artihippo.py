"""ArtiHippo's architecture search as an Avalanche plugin (``strategy=artihippo``).

At the start of each experience, before the template adapts the model (so the task's head and the parts of
its architecture exist when the optimizer is built), the plugin carves a search split deterministically from
the experience's training data (``val_fraction``, at most ``max_val`` images), trains a one-shot supernet on
the *rest* of the training data, runs the evolutionary search scoring paths on the search split and fixes
the task's architecture (``model.set_architecture``): its new/adapted parameters are created freshly
initialised and the template's normal epochs train them with the normal optim recipe.

Resume: the architecture is part of the model's checkpointed state, so an experience resumed mid-way skips
the search; a run killed during a search continues from the previous experience boundary and redoes the
search, which is deterministic given the run's RNG there (the search forks torch's RNG, seeded by one draw of
it). The plugin itself holds no state.
"""
from __future__ import annotations

import logging

import torch
from avalanche.core import SupervisedPlugin

from gift_cl.artihippo.search import SearchConfig, search_task
from gift_cl.config import ConfigError
from gift_cl.methods.base import classes_per_task

log = logging.getLogger("gift_cl")


class ArtiHippoSearch(SupervisedPlugin):
    """Searches each new task's architecture (see :class:`gift_cl.artihippo.SearchConfig` for the options)."""

    def __init__(self, supernet_epochs: int = 2, lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 32,
                 val_fraction: float = 0.2, max_val: int = 100, population: int = 8, generations: int = 3,
                 parents: int = 4, mutation_prob: float = 0.25, eps_train: float = 0.3, eps_search: float = 0.5,
                 temperature: float = 0.2, pretrained_similarity: float = 0.0, tolerance: float = 0.02,
                 eval_batch_size: int = 256, probe_steps: int = 200, new_lr_scale: float = 0.1,
                 level1: str = "aux"):
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
