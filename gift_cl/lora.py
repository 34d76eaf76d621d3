"""LoRA baseline (Hu et al.), as the official GIFT code runs it: loralib-style, alpha=1 so scaling = 1/r,
A Kaiming-initialised, B zero, on ``attn.proj`` by default; mergeable into a plain timm model."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .injection import backbone_parameter_count, count_parameters, find_linear_targets, freeze_backbone, set_submodule


class LoraAdapter(nn.Module):
    """The low-rank residual ``ΔW = B A · alpha / r``, applied in activation space."""

    def __init__(self, in_features: int, out_features: int, rank: int = 8, alpha: float = 1.0):
        super().__init__()
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.zeros(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.lora_A.t() @ self.lora_B.t()) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling


class LoraLinear(nn.Module):
    """``y = x Wᵀ + b + (x Aᵀ Bᵀ) · alpha / r`` with ``W``, ``b`` frozen; ``B = 0`` at start."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 1.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora = LoraAdapter(base.in_features, base.out_features, rank, alpha).to(base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.lora(x)

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.lora.delta_weight())
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


class LoraModel(nn.Module):
    def __init__(self, model: nn.Module, rank: int = 8, alpha: float = 1.0, target_modules: Sequence[str] = ("attn.proj",)):
        super().__init__()
        freeze_backbone(model, train_head=True)
        self.backbone_params = backbone_parameter_count(model)
        self.targets = [n for n, _ in find_linear_targets(model, target_modules)]
        for n in self.targets:
            set_submodule(model, n, LoraLinear(model.get_submodule(n), rank, alpha))
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def merge_and_unload(self) -> nn.Module:
        for n in self.targets:
            set_submodule(self.model, n, self.model.get_submodule(n).merged())
        model, self.model = self.model, None
        return model

    def trainable_parameter_count(self) -> dict[str, float]:
        lora = count_parameters(p for n, p in self.named_parameters() if "lora_" in n)
        total = count_parameters(p for p in self.parameters() if p.requires_grad)
        return {"lora": lora, "trainable": total, "backbone": self.backbone_params,
                "lora_percent": 100.0 * lora / self.backbone_params}
