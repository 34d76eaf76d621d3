"""GIFT as first-session adaptation with a prototype classifier, the APER recipe (Zhou et al., "Revisiting
Class-Incremental Learning with Pre-Trained Models", IJCV 2024; LAMDA-PILOT ``models/aper_*.py``).

On the first task GIFT trains as usual (shared trunk, the task's generator head, a linear classifier); then
everything freezes. The adapted backbone serves every later task (no new generator heads: nothing trains after the
first task), and the classifier over every class seen is APER's: the cosine similarity to class means of the
frozen and the adapted [CLS] features side by side (``[f_frozen(x), f_adapted(x)]``, 2·d), recorded from each
task's un-augmented training images, the first task's included."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..classincremental.heads import PrototypeClassifier
from ..gift import GiftConfig
from .gift import GiftMethod
from .readout import GlobalReadout


class GiftAper(GlobalReadout, GiftMethod):
    def __init__(self, backbone: nn.Module, config: GiftConfig, per_task_clusters: bool = True,
                 per_task_recovery: bool = True, addons: Optional[dict] = None):
        super().__init__(backbone, config, trunk="frozen_after_first", per_task_clusters=per_task_clusters,
                         per_task_recovery=per_task_recovery)

    def build_readout(self) -> nn.Module:
        return PrototypeClassifier(2 * self.feature_dim)

    def _adapted(self, task: Optional[int]) -> Optional[int]:
        # every task is served by the first task's generator head (the one adaptation)
        return self.first_task if self.first_task is not None else task

    def add_task_parts(self, task: int) -> None:
        if self.first_task is None:
            super().add_task_parts(task)

    def features(self, x: torch.Tensor, task: Optional[int]) -> torch.Tensor:
        return super().features(x, self._adapted(task))

    def readout_features(self, x: torch.Tensor) -> torch.Tensor:
        assert self.first_task is not None, "no task has trained yet"
        return torch.cat([self.frozen_features(x), super().features(x, self.first_task)], dim=-1)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        if task != self.first_task:
            return []  # after the first task nothing trains: the prototypes are the classifier
        return super().task_parameters(task)

    def shared_parameters(self, task: int) -> list[nn.Parameter]:
        return super().shared_parameters(task) if task == self.first_task else []
