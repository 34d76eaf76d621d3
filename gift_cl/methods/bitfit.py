"""BitFit: only bias terms of the backbone train, everything else stays frozen. Two definitions, chosen by
``biases``:

- ``"all"`` (the default): Ben Zaken et al.'s BitFit, every bias of the backbone, LayerNorm biases and the
  patch embedding's bias included (102,912 per task on ViT-B/16);
- ``"linear"``: the official GIFT code's BitFit baseline (``BitFiTWrapper``): the biases of ``nn.Linear``
  layers only (qkv, proj, fc1, fc2; 82,944 per task on ViT-B/16).

Each task gets its own copy of the biases (initialised from the pretrained ones), swapped into the frozen
backbone for that task's forward pass; at step 0 the model is the frozen one, bit for bit.

The worked example of docs/guide/extending.md ("Adding a method"): one file plus ``configs/method/bitfit.yaml``.
"""
from __future__ import annotations

from typing import Optional, cast

import torch
from torch import nn
from torch.func import functional_call

from .base import FrozenBackboneModel


def _key(name: str) -> str:
    return name.replace(".", ":")  # ParameterDict keys cannot hold dots


class BitFit(FrozenBackboneModel):
    CHOICES = ("all", "linear")

    def __init__(self, backbone: nn.Module, biases: str = "all", addons: Optional[dict] = None):
        super().__init__(backbone)
        if biases not in self.CHOICES:
            raise ValueError(f"BitFit biases must be one of {list(self.CHOICES)}, got {biases!r}")
        self.bias_choice = biases
        if biases == "linear":
            self.bias_names = [f"{m}.bias" for m, mod in self.backbone.named_modules()
                               if isinstance(mod, nn.Linear) and mod.bias is not None]
        else:
            self.bias_names = [n for n, _ in self.backbone.named_parameters() if n.endswith(".bias")]
        if not self.bias_names:
            raise ValueError(f"BitFit (biases={biases!r}) needs a backbone with such bias terms; this one has none")
        self.biases = nn.ModuleDict()  # task -> ParameterDict of that task's biases

    def add_task_parts(self, task: int) -> None:
        pretrained = dict(self.backbone.named_parameters())
        self.biases[str(task)] = nn.ParameterDict(
            {_key(n): nn.Parameter(pretrained[n].detach().clone()) for n in self.bias_names})

    def _task_biases(self, task: int) -> nn.ParameterDict:
        return cast(nn.ParameterDict, self.biases[str(task)])  # nn.ModuleDict is typed Module; see add_task_parts

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return super().task_parameters(task) + list(self._task_biases(task).values())

    def backbone_biases(self, task: int) -> dict[str, torch.Tensor]:
        """``{backbone parameter name: the task's bias}``: what replaces the backbone's biases for ``task``."""
        biases = self._task_biases(task)
        return {n: biases[_key(n)] for n in self.bias_names}

    def features(self, x: torch.Tensor, task: Optional[int]) -> torch.Tensor:
        assert task is not None, "BitFit's features depend on the task (shared_features is False)"
        return functional_call(self.backbone, self.backbone_biases(task), (x,))

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
