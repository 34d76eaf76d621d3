"""BitFit (Ben Zaken et al.): every bias of the backbone trains, everything else stays frozen — the
official GIFT code's BitFit baseline. Each task gets its own copy of the biases (initialised from the
pretrained ones), swapped into the frozen backbone for that task's forward pass.

The worked example of "adding a method" (README): one file, one config (``configs/strategy/bitfit.yaml``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.func import functional_call

from .base import FrozenBackboneModel


def _key(name: str) -> str:
    return name.replace(".", ":")  # ParameterDict keys cannot hold dots


class BitFit(FrozenBackboneModel):
    def __init__(self, backbone: nn.Module, plugins: Optional[dict] = None):
        super().__init__(backbone)
        self.bias_names = [n for n, _ in self.backbone.named_parameters() if n.endswith(".bias")]
        if not self.bias_names:
            raise ValueError("BitFit needs a backbone with bias terms; this one has none")
        self.biases = nn.ModuleDict()  # task -> ParameterDict of that task's biases
        self.record_pretrained_keys()
        self.use_plugins(plugins)

    def add_task_parts(self, task: int) -> None:
        pretrained = dict(self.backbone.named_parameters())
        self.biases[str(task)] = nn.ParameterDict(
            {_key(n): nn.Parameter(pretrained[n].detach().clone()) for n in self.bias_names})

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return super().task_parameters(task) + list(self.biases[str(task)].values())

    def features(self, x: torch.Tensor, task: int) -> torch.Tensor:
        biases = self.biases[str(task)]
        return functional_call(self.backbone, {n: biases[_key(n)] for n in self.bias_names}, (x,))

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
