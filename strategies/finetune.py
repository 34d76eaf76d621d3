"""The single-task strategy: one experience, one model, the paper's recipe.

Every single-task method (GIFT, LoRA, linear probe, full fine-tuning) trains through this class; the
method only decides which parameters of the model are trainable.
"""
from __future__ import annotations

from typing import Optional, Sequence

from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from gift_cl.optim import OptimConfig, build_optimizer

from .plugins import ProgressBarPlugin, TimmSchedulerPlugin


class FineTuning(SupervisedTemplate):
    """AdamW with the official two groups, a timm cosine schedule, progress bars."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optim: OptimConfig,
        device: str = "cpu",
        eval_mb_size: int = 256,
        evaluator=None,
        plugins: Optional[Sequence[SupervisedPlugin]] = None,
        progress: bool = True,
    ):
        self.optim_cfg = optim
        self.scheduler_plugin = TimmSchedulerPlugin(optim)
        kwargs = {} if evaluator is None else {"evaluator": evaluator}
        super().__init__(
            model=model,
            optimizer=build_optimizer(model, optim),
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=optim.batch_size,
            train_epochs=optim.epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=[self.scheduler_plugin, ProgressBarPlugin(progress), *(plugins or [])],
            **kwargs,
        )

    def make_optimizer(self, **kwargs):
        # Avalanche's default re-registers *every* named parameter (the frozen backbone too) and
        # guesses groups (avalanche-0.6-notes §2.4). Our groups are built once from trainable ones.
        self.optimized_param_id = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
