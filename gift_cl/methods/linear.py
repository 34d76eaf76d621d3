"""Linear probe: per-task classifiers on the frozen pretrained backbone."""
from __future__ import annotations

from typing import Optional

from torch import nn

from .base import FrozenBackboneModel


class LinearProbe(FrozenBackboneModel):
    shared_features = True

    def __init__(self, backbone: nn.Module, addons: Optional[dict] = None):
        super().__init__(backbone)

    def features(self, x, task):
        return self.backbone(x)

    def frozen_features(self, x):
        return self.backbone(x)
