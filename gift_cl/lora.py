"""LoRA (Hu et al.) as the official GIFT code runs it: loralib-style, alpha=1 so scaling = 1/r, A
Kaiming-initialised, B zero, on ``attn.proj`` by default; mergeable into a plain timm model.

:class:`LoraLinear` is the one LoRA layer (peft's layout): a frozen ``nn.Linear`` and a dict of adapters keyed
by name (a task), ``active`` naming the one applied. :class:`LoraModel` wraps a timm model with one adapter
per target layer; the continual-learning method (:class:`gift_cl.methods.LoraMethod`) adds one per task."""
from __future__ import annotations

import math
from typing import Optional, Sequence, cast

import torch
from torch import nn

from .injection import backbone_parameter_count, count_parameters, find_linear_targets, freeze_backbone, set_submodule
from .selective import TaskSelective


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


class LoraLinear(TaskSelective, nn.Module):
    """``y = x Wᵀ + b + (x Aᵀ Bᵀ) · alpha / r`` with ``W``, ``b`` frozen and ``A``, ``B`` those of the adapter
    named by ``active`` (``None``: the frozen layer alone). Adapters live in ``adapters[name]``
    (state-dict keys ``adapters.<name>.lora_A`` / ``.lora_B``); each starts with ``B = 0``."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 1.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.adapters = nn.ModuleDict()
        self.active: Optional[str] = None

    def add_adapter(self, name: str) -> None:
        adapter = LoraAdapter(self.base.in_features, self.base.out_features, self.rank, self.alpha)
        self.adapters[name] = adapter.to(self.base.weight.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        return y if self.active is None else y + self.adapters[self.active](x)

    def merged(self, name: Optional[str] = None) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``W + ΔW`` of adapter ``name`` (default: the active one)."""
        name = self.active if name is None else name
        if name is None:
            raise ValueError("LoraLinear.merged: no adapter named and none active")
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.device, self.base.weight.dtype)
        adapter = cast(LoraAdapter, self.adapters[name])  # nn.ModuleDict is typed Module; add_adapter holds these
        with torch.no_grad():
            out.weight.copy_(self.base.weight + adapter.delta_weight())
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


class LoraModel(nn.Module):
    """A timm model with one LoRA adapter (named :attr:`ADAPTER`) on every target layer; the head trains."""

    ADAPTER = "default"  # peft's name for a model's single adapter

    def __init__(self, model: nn.Module, rank: int = 8, alpha: float = 1.0, target_modules: Sequence[str] = ("attn.proj",)):
        super().__init__()
        freeze_backbone(model, train_head=True)
        self.backbone_params = backbone_parameter_count(model)
        self.targets = [n for n, _ in find_linear_targets(model, target_modules)]
        for n in self.targets:
            layer = LoraLinear(cast(nn.Linear, model.get_submodule(n)), rank, alpha)  # find_linear_targets: nn.Linear
            layer.add_adapter(self.ADAPTER)
            layer.active = self.ADAPTER
            set_submodule(model, n, layer)
        self.model: Optional[nn.Module] = model  # None once merge_and_unload has handed it out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self.model is not None, "LoraModel: merge_and_unload() has handed the model out"
        return self.model(x)

    def merge_and_unload(self) -> nn.Module:
        assert self.model is not None, "LoraModel: merge_and_unload() has handed the model out"
        for n in self.targets:
            layer = cast(LoraLinear, self.model.get_submodule(n))  # get_submodule is typed Module
            set_submodule(self.model, n, layer.merged())
        model, self.model = self.model, None
        return model

    def trainable_parameter_count(self) -> dict[str, float]:
        lora = count_parameters(p for n, p in self.named_parameters() if "lora_" in n)
        total = count_parameters(p for p in self.parameters() if p.requires_grad)
        return {"lora": lora, "trainable": total, "backbone": self.backbone_params,
                "lora_percent": 100.0 * lora / self.backbone_params}
