"""Fine-tuning methods by name: each turns a fresh timm backbone into the model a strategy trains.

A method is a callable ``(backbone) -> nn.Module``; its Hydra config (``strategy.method``) carries
only the method's own arguments, so ``strategy=gift|lora|linear|finetune`` swap one node.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .gift import GiftConfig
from .injection import backbone_parameter_count, count_parameters, freeze_backbone
from .lora import LoraModel
from .tuner import GiftModel


class PlainModel(nn.Module):
    """A timm model whose trainable set is chosen by freezing (linear probe, full fine-tuning)."""

    def __init__(self, model: nn.Module, train_backbone: bool):
        super().__init__()
        freeze_backbone(model, train_head=True)
        if train_backbone:
            model.requires_grad_(True)
        self.backbone_params = backbone_parameter_count(model)
        self.model = model

    def forward(self, x):
        return self.model(x)

    def merge_and_unload(self) -> nn.Module:
        return self.model

    def trainable_parameter_count(self) -> dict[str, float]:
        total = count_parameters(p for p in self.parameters() if p.requires_grad)
        return {"trainable": total, "backbone": self.backbone_params}


def gift(backbone: nn.Module, config: GiftConfig) -> GiftModel:
    return GiftModel(backbone, config)


def lora(backbone: nn.Module, rank: int = 8, alpha: float = 1.0, target_modules: Sequence[str] = ("attn.proj",)) -> LoraModel:
    return LoraModel(backbone, rank=rank, alpha=alpha, target_modules=target_modules)


def linear_probe(backbone: nn.Module) -> PlainModel:
    return PlainModel(backbone, train_backbone=False)


def finetune(backbone: nn.Module) -> PlainModel:
    return PlainModel(backbone, train_backbone=True)
