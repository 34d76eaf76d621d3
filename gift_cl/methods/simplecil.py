"""SimpleCIL (Zhou et al., "Revisiting Class-Incremental Learning with Pre-Trained Models: Generalizability and
Adaptivity are All You Need", IJCV 2024; LAMDA-PILOT ``models/simplecil.py``): the frozen pretrained backbone and
a prototype classifier, the cosine similarity of the [CLS] feature to each class's mean training feature.
Nothing trains; each task's un-augmented training images are passed once to record its class means."""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..classincremental.heads import PrototypeClassifier
from .readout import FrozenBackboneReadout


class SimpleCIL(FrozenBackboneReadout):
    def __init__(self, backbone: nn.Module, addons: Optional[dict] = None):
        super().__init__(backbone)

    def build_readout(self) -> nn.Module:
        return PrototypeClassifier(self.feature_dim)
