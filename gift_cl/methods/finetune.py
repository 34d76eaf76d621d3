"""Full fine-tuning: each task trains its own copy of the pretrained backbone (the upper bound)."""
from __future__ import annotations

import copy
from typing import Optional

from torch import nn

from .base import TaskAwareModel, headless


class FullFinetune(TaskAwareModel):
    def __init__(self, backbone: nn.Module, addons: Optional[dict] = None):
        backbone = headless(backbone).requires_grad_(False)
        super().__init__(backbone)
        self.pretrained = backbone
        self.backbones = nn.ModuleDict()

    def vit(self, task):
        return self.backbones[str(task)]  # add-ons hook each task's copy, never the pretrained one

    def add_task_parts(self, task):
        self.backbones[str(task)] = copy.deepcopy(self.pretrained)

    def task_parameters(self, task):
        return super().task_parameters(task) + list(self.backbones[str(task)].parameters())

    def features(self, x, task):
        return self.backbones[str(task)](x)

    def frozen_features(self, x):
        return self.pretrained(x)
