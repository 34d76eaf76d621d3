"""Model add-ons: per-task parts that attach to the timm ViT(s) of *any* method (GIST, Coeff-Tuning).

An add-on is an ``nn.Module`` handed to a method's constructor (``addons={name: addon}``; from a
configuration ``+addon=gist``, which adds ``strategy.method.addons.gist``). The method owns it as
``model.model_addons[name]`` and drives it:

- ``attach(vit)`` once per timm ViT the method runs (``TaskAwareModel.vit(task)``: the GIFT-wrapped
  model, the LoRA/BitFit/linear backbone, each fine-tuned copy, ...). Add-ons hook the ViT with
  forward hooks or an instance-level ``forward`` (never by replacing submodules: the pretrained
  state-dict keys, and so ``frozen_state_keys``, stay as they are);
- ``add_task(task)`` creates the task's own parameters (they join ``task_parameters(task)``: trained
  during the task, frozen afterwards, counted per task, checkpointed with the model);
- ``active`` is the task (as ``str``) whose parts run; the model sets it only around
  ``forward_single_task``, so ``frozen_features`` (task-id inference) never sees an add-on;
- ``after_head(task, classifier, logits, index)`` lets an add-on read the head (GIST's Gist logits);
- ``auxiliary_loss(targets)`` is added to the training loss (``TaskAwareStrategy.criterion``).

Hooks hold the add-on through bound methods and ``__dict__`` entries, so ``copy.deepcopy(model)`` (LwF's
previous model) copies the add-on together with the model and the copy stays self-consistent.

Add-ons change the model; Avalanche's plugins (``cl=ewc``, ``strategy.plugins``) hook the training loop. The two
are different things and keep different names.
"""
from __future__ import annotations

import abc
from typing import Optional

import torch
from torch import nn

from ..selective import TaskSelective
from .arguments import RecordsArguments


class ModelAddon(RecordsArguments, TaskSelective, nn.Module, abc.ABC):
    """Base class; see the module docstring for the protocol."""

    def __init__(self):
        super().__init__()
        self.active: Optional[str] = None

    # -------------------------------------------------------------- what an add-on provides
    @abc.abstractmethod
    def attach(self, vit: nn.Module) -> None:
        """Hook one timm ViT (called once per ViT, before the first task's parts exist)."""

    def add_task(self, task: int) -> None:
        """Create the task's own parameters."""

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return []

    def begin_forward(self) -> None:
        """A new top-level forward starts (drop what the previous one recorded)."""

    def after_head(self, task: int, classifier: nn.Module, logits: torch.Tensor,
                   index: Optional[torch.Tensor]) -> None:
        """Task ``task``'s head produced ``logits`` for the samples ``index`` of the batch (None: all)."""

    def auxiliary_loss(self, targets: torch.Tensor) -> torch.Tensor | float:
        """A loss term added to the training loss of the last forward pass."""
        return 0.0

    # -------------------------------------------------------------- helpers
    def mark_attached(self, vit: nn.Module, name: str) -> bool:
        """True the first time ``name`` attaches to ``vit`` (a shared ViT is hooked once)."""
        marks = vit.__dict__.setdefault("_gift_cl_addons", set())
        if name in marks:
            return False
        marks.add(name)
        return True


def check_token_pooling(vit: nn.Module, who: str) -> None:
    """Add-ons that insert tokens need [CLS] pooling (average pooling would pool the new tokens)."""
    if getattr(vit, "global_pool", "token") != "token" or getattr(vit, "attn_pool", None) is not None:
        raise ValueError(f"{who} needs a ViT pooled on its [CLS] token (global_pool='token'), "
                         f"got global_pool={getattr(vit, 'global_pool', None)!r}")
