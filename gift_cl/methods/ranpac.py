"""RanPAC (McDonnell et al., "RanPAC: Random Projections and Pre-trained Models for Continual Learning",
NeurIPS 2023; github.com/RanPAC/RanPAC): the frozen backbone's [CLS] feature through a fixed random projection
with ReLU (``projection_dim`` = M, 10,000 in the paper), and a ridge-regression classifier over every class seen,
from the Gram matrix accumulated over the stages (λ chosen per stage as the official code chooses it:
:class:`~gift_cl.classincremental.heads.RandomProjectionRidge`).

This is RanPAC's phase 2 on the pretrained backbone, the paper's "no first-session PETL" variant; its phase 1
(parameter-efficient adaptation on the first task) is not part of this method. Nothing trains."""
from __future__ import annotations

from typing import Optional

from torch import nn

from ..classincremental.heads import RandomProjectionRidge
from .readout import FrozenBackboneReadout


class RanPAC(FrozenBackboneReadout):
    def __init__(self, backbone: nn.Module, projection_dim: int = 10000, projection_seed: int = 0,
                 addons: Optional[dict] = None):
        super().__init__(backbone)
        self.projection_dim, self.projection_seed = int(projection_dim), int(projection_seed)

    def build_readout(self) -> nn.Module:
        return RandomProjectionRidge(self.feature_dim, self.projection_dim, seed=self.projection_seed)
