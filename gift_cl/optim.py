"""Optimizer and schedule, as the official GIFT recipe: AdamW with two groups, timm cosine with warm-up."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn


def no_weight_decay(name: str, param: torch.Tensor) -> bool:
    """The official rule: no decay on 1-D tensors, biases, or cluster-assignment layers
    (decay on the cluster layer reduces cluster diversity)."""
    return param.ndim <= 1 or name.endswith(".bias") or "cluster" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters only (frozen backbone weights never enter the optimizer)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if no_weight_decay(name, p) else decay).append(p)
    return [
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
    ]


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: tuple = (0.9, 0.999)
    epochs: int = 10
    warmup_epochs: float = 1
    warmup_lr: float = 1e-7
    min_lr: float = 1e-6
    batch_size: int = 32
    # False: step the schedule once per epoch (the official code); True: every update, which
    # keeps warm-up meaningful in the short runs a CPU allows.
    sched_on_updates: bool = False


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int) -> CosineLRScheduler:
    """Cosine from ``lr`` to ``min_lr`` after a linear warm-up from ``warmup_lr``; in epochs or updates."""
    unit = steps_per_epoch if cfg.sched_on_updates else 1
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, int(round(cfg.epochs * unit))),
        lr_min=cfg.min_lr,
        warmup_t=int(round(cfg.warmup_epochs * unit)),
        warmup_lr_init=cfg.warmup_lr,
        warmup_prefix=False,
        t_in_epochs=not cfg.sched_on_updates,
    )
