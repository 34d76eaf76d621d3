"""LoRA (Hu et al.) as the official GIFT code runs it: rank r, alpha 1 (scaling 1/r), A Kaiming, B zero;
one adapter per task on every target layer (``attn.proj`` by default, ``attn.qkv`` for LoRA-qkv)."""
from __future__ import annotations

from typing import Optional, Sequence, cast

from torch import nn

from ..injection import find_linear_targets, set_submodule
from ..lora import LoraLinear
from .base import FrozenBackboneModel


class LoraMethod(FrozenBackboneModel):
    def __init__(self, backbone: nn.Module, rank: int = 8, alpha: float = 1.0,
                 target_modules: Sequence[str] = ("attn.proj",), addons: Optional[dict] = None):
        super().__init__(backbone)
        self.targets = [n for n, _ in find_linear_targets(self.backbone, target_modules)]
        for n in self.targets:
            # find_linear_targets: every target is an nn.Linear (get_submodule is typed Module)
            set_submodule(self.backbone, n, LoraLinear(cast(nn.Linear, self.backbone.get_submodule(n)), rank, alpha))

    def _layers(self) -> list[LoraLinear]:
        return [cast(LoraLinear, self.backbone.get_submodule(n)) for n in self.targets]  # swapped in __init__

    def add_task_parts(self, task):
        for layer in self._layers():
            layer.add_adapter(str(task))

    def task_parameters(self, task):
        return super().task_parameters(task) + [p for l in self._layers() for p in l.adapters[str(task)].parameters()]

    def features(self, x, task):
        with self.serving(task):
            return self.backbone(x)

    def frozen_features(self, x):
        return self.backbone(x)  # no task served: every layer is the frozen one
