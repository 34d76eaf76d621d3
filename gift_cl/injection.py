"""Finding target layers in a timm model and swapping them for adapted layers (shared by GIFT and LoRA)."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import nn


def matches(name: str, patterns: Sequence[str]) -> bool:
    """A module name matches a pattern when it equals it or ends with ``"." + pattern``."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def find_linear_targets(model: nn.Module, patterns: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    """All ``nn.Linear`` modules whose names match; a clear error when none do."""
    found = [(n, m) for n, m in model.named_modules() if matches(n, patterns)]
    bad = [n for n, m in found if type(m) is not nn.Linear]
    if bad:
        raise TypeError(f"target modules must be nn.Linear; {bad[:3]} are {type(dict(found)[bad[0]]).__name__}")
    if not found:
        linear_names = sorted({n.split(".", 2)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(f"no nn.Linear matches target_modules={list(patterns)}; linear layers here: {linear_names}")
    return found


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def classifier_names(model: nn.Module) -> list[str]:
    """Parameter names of the classifier head (timm's ``get_classifier``)."""
    get_classifier = getattr(model, "get_classifier", None)  # a timm model's method; nn.Module has none
    head = get_classifier() if get_classifier is not None else None
    if head is None or not isinstance(head, nn.Module):
        return []
    ids = {id(p) for p in head.parameters()}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def freeze_backbone(model: nn.Module, train_head: bool = True) -> None:
    """Freeze every parameter; the classifier head stays trainable when ``train_head``."""
    heads = set(classifier_names(model)) if train_head else set()
    for n, p in model.named_parameters():
        p.requires_grad_(n in heads)


def count_parameters(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() for p in params)


def backbone_parameter_count(model: nn.Module) -> int:
    """Parameters of the backbone without its classifier head: the denominator of 'trainable %'."""
    heads = set(classifier_names(model))
    return sum(p.numel() for n, p in model.named_parameters() if n not in heads)
