"""LoRA (Hu et al.) as the official GIFT code runs it: rank r, alpha 1 (scaling 1/r), A Kaiming, B zero;
one adapter per task on every target layer (``attn.proj`` by default, ``attn.qkv`` for LoRA-qkv)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from ..injection import find_linear_targets, set_submodule
from ..lora import LoraAdapter
from .base import FrozenBackboneModel


class MultiLoraLinear(nn.Module):
    """A frozen linear layer with one LoRA adapter per task; ``active`` picks the adapter."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.adapters = nn.ModuleDict()
        self.active: Optional[str] = None

    def add_adapter(self, task: str) -> None:
        adapter = LoraAdapter(self.base.in_features, self.base.out_features, self.rank, self.alpha)
        self.adapters[task] = adapter.to(self.base.weight.device)

    def forward(self, x):
        y = self.base(x)
        return y if self.active is None else y + self.adapters[self.active](x)


class LoraMethod(FrozenBackboneModel):
    def __init__(self, backbone: nn.Module, rank: int = 8, alpha: float = 1.0,
                 target_modules: Sequence[str] = ("attn.proj",), plugins: Optional[dict] = None):
        super().__init__(backbone)
        self.targets = [n for n, _ in find_linear_targets(self.backbone, target_modules)]
        for n in self.targets:
            set_submodule(self.backbone, n, MultiLoraLinear(self.backbone.get_submodule(n), rank, alpha))
        self.record_pretrained_keys()
        self.use_plugins(plugins)

    def _layers(self) -> list[MultiLoraLinear]:
        return [self.backbone.get_submodule(n) for n in self.targets]

    def add_task_parts(self, task):
        for layer in self._layers():
            layer.add_adapter(str(task))

    def task_parameters(self, task):
        return super().task_parameters(task) + [p for l in self._layers() for p in l.adapters[str(task)].parameters()]

    def _run(self, x: torch.Tensor, active: Optional[str]) -> torch.Tensor:
        for layer in self._layers():
            layer.active = active
        try:
            return self.backbone(x)
        finally:
            for layer in self._layers():
                layer.active = None

    def features(self, x, task):
        return self._run(x, str(task))

    def frozen_features(self, x):
        return self._run(x, None)
