"""One shared, fully trainable backbone with per-task heads: the model behind the continual-learning
baselines (Avalanche's Naive, EWC, LwF). A frozen copy of the pretrained backbone serves task-id inference."""
from __future__ import annotations

import copy
from typing import Optional

from torch import nn

from .base import TaskAwareModel, headless


class SharedBackbone(TaskAwareModel):
    shared_features = True

    def __init__(self, backbone: nn.Module, addons: Optional[dict] = None):
        backbone = headless(backbone)
        super().__init__(backbone)
        self.backbone = backbone
        self.reference = copy.deepcopy(backbone).requires_grad_(False)

    def vit(self, task):
        return self.backbone

    def shared_parameters(self, task):
        return list(self.backbone.parameters())

    def features(self, x, task):
        return self.backbone(x)

    def frozen_features(self, x):
        return self.reference(x)
