"""GIFT as a tuner, in the shape of peft: the layer that does the math and the wrapper that injects it.

``GiftLinear`` is a frozen ``nn.Linear`` that adds a residual it is *handed*; it never generates one.
``GiftModel`` owns the generators, generates every ΔW in one batched call per shape group per step
(and once per eval, cached until a generator parameter or target weight changes), hands the residuals
to the layers for the duration of one forward pass, and can merge them into a plain timm model.
"""
from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import asdict
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .gift import GiftConfig, GiftGenerator
from .injection import (
    backbone_parameter_count,
    count_parameters,
    find_linear_targets,
    freeze_backbone,
    set_submodule,
)


class GiftLinear(nn.Module):
    """``y = x Wᵀ + b + x ΔWᵀ`` with ``W``, ``b`` frozen — the official code's unmerged form.

    Computing the residual as a second product (instead of ``x (W + ΔW)ᵀ``) keeps the output equal
    to the frozen layer's, bit for bit, whenever ΔW = 0, and matches the official numerics.
    """

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.delta_weight: Optional[torch.Tensor] = None

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.delta_weight is not None:
            y = y + F.linear(x, self.delta_weight)
        return y

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + ΔW`` (ΔW as currently handed to this layer)."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            delta = 0 if self.delta_weight is None else self.delta_weight.to(self.base.weight.dtype)
            out.weight.copy_(self.base.weight + delta)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _group_key(pattern: str, shape: tuple[int, int], n_shapes: int) -> str:
    key = pattern.replace(".", ":")  # ModuleDict keys cannot hold dots (same convention as the official code)
    return key if n_shapes == 1 else f"{key}@{shape[0]}x{shape[1]}"


class GiftModel(nn.Module):
    """A frozen timm model whose target layers receive generated residuals.

    Use :func:`gift_cl.get_gift_model` to build one. ``forward(x, head)`` runs the model with the
    residuals of generator head ``head`` (one head per task; ``"0"`` for single-task runs).
    """

    def __init__(self, model: nn.Module, config: GiftConfig, heads=("0",), train_head: bool = True):
        super().__init__()
        self.config = config
        freeze_backbone(model, train_head=train_head)
        self.backbone_params = backbone_parameter_count(model)
        self.model = model
        self.generators = nn.ModuleDict()
        self.groups: dict[str, list[str]] = {}  # generator key -> target layer names, in block order
        taken = set()
        for pattern in config.target_modules:
            targets = [(n, m) for n, m in find_linear_targets(model, [pattern]) if n not in taken]
            shapes = sorted({tuple(m.weight.shape) for _, m in targets})
            for shape in shapes:
                key = _group_key(pattern, shape, len(shapes))
                names = [n for n, m in targets if tuple(m.weight.shape) == shape]
                self.groups[key] = names
                self.generators[key] = GiftGenerator(config, d_in=shape[1], d_out=shape[0], heads=heads)
                for n in names:
                    set_submodule(model, n, GiftLinear(model.get_submodule(n)))
                    taken.add(n)
        self._eval_cache: dict[str, tuple[tuple, dict[str, torch.Tensor]]] = {}

    # ---------------------------------------------------------------- residual generation
    def layers(self) -> dict[str, GiftLinear]:
        return {n: self.model.get_submodule(n) for names in self.groups.values() for n in names}

    def target_weights(self, key: str) -> torch.Tensor:
        """The frozen weights of one group, stacked as the generator's token batch (L, d_out, d_in)."""
        return torch.stack([self.model.get_submodule(n).base.weight for n in self.groups[key]])

    def delta_weights(self, head: str = "0") -> dict[str, torch.Tensor]:
        """ΔW for every target layer: one batched generator call per shape group."""
        deltas = {}
        for key, names in self.groups.items():
            delta = self.generators[key](self.target_weights(key), head=head)
            deltas.update(zip(names, delta.unbind(0)))
        return deltas

    def cluster_assignments(self, head: str = "0") -> dict[str, list[torch.Tensor]]:
        """PaCa assignments ``C`` per target layer: a list over blocks of ``(d_out, M)`` tensors."""
        out = {}
        with torch.no_grad():
            for key, names in self.groups.items():
                _, assign = self.generators[key](self.target_weights(key), head=head, return_assignments=True)
                for i, n in enumerate(names):
                    out[n] = [c[i] for c in assign]
        return out

    def _cache_key(self, head: str) -> tuple:
        # ``_version`` counts in-place updates (optimizer steps, load_state_dict), so a changed
        # parameter invalidates the cached residuals without hashing any values.
        gens = tuple((p.data_ptr(), p._version) for p in self.generators.parameters())
        weights = tuple((l.base.weight.data_ptr(), l.base.weight._version) for l in self.layers().values())
        return head, gens, weights

    def _residuals_for_forward(self, head: str) -> dict[str, torch.Tensor]:
        if torch.is_grad_enabled():
            return self.delta_weights(head)  # training: once per step, with graph
        key = self._cache_key(head)
        cached = self._eval_cache.get(head)
        if cached is None or cached[0] != key:
            self._eval_cache[head] = (key, self.delta_weights(head))
        return self._eval_cache[head][1]

    @contextlib.contextmanager
    def residuals(self, deltas: dict[str, torch.Tensor]):
        """Hand ``deltas`` to the layers for one forward pass; always take them back (no graph leaks)."""
        layers = self.layers()
        try:
            for n, d in deltas.items():
                layers[n].delta_weight = d
            yield
        finally:
            for layer in layers.values():
                layer.delta_weight = None

    def forward(self, x: torch.Tensor, head: str = "0") -> torch.Tensor:
        with self.residuals(self._residuals_for_forward(head)):
            return self.model(x)

    # ---------------------------------------------------------------- bookkeeping
    def add_head(self, head: str) -> None:
        for gen in self.generators.values():
            gen.add_head(head)

    def trainable_parameter_count(self) -> dict[str, float]:
        gift = count_parameters(p for p in self.generators.parameters() if p.requires_grad)
        total = count_parameters(p for p in self.parameters() if p.requires_grad)
        return {
            "gift": gift,
            "trainable": total,
            "backbone": self.backbone_params,
            "gift_percent": 100.0 * gift / self.backbone_params,
        }

    # ---------------------------------------------------------------- merge and export
    def merge_and_unload(self, head: str = "0") -> nn.Module:
        """Write ``W + ΔW`` into the weights and return the plain timm model (the wrapper is spent)."""
        with torch.no_grad(), self.residuals(self.delta_weights(head)):
            for name, layer in self.layers().items():
                set_submodule(self.model, name, layer.merged())
        model, self.model, self.groups = self.model, None, {}
        return model

    def merged_copy(self, head: str = "0") -> nn.Module:
        """A merged plain timm model; this wrapper stays usable."""
        return copy.deepcopy(self).merge_and_unload(head)

    def save_merged(self, path: str | os.PathLike, head: str = "0") -> None:
        """Export the merged model as a safetensors checkpoint that stock timm loads."""
        from .checkpoint import save_safetensors

        merged = self.merged_copy(head)
        save_safetensors({k: v.detach() for k, v in merged.state_dict().items()}, path)


def get_gift_model(model: nn.Module, config: Optional[GiftConfig] = None, **kwargs) -> GiftModel:
    """Wrap a timm model with GIFT (peft's ``get_peft_model``): the backbone is frozen, the head trains."""
    return GiftModel(model, config or GiftConfig(), **kwargs)


def gift_config_dict(config: GiftConfig) -> dict:
    d = asdict(config)
    d["target_modules"] = list(d["target_modules"])
    return d


__all__ = ["GiftLinear", "GiftModel", "get_gift_model", "gift_config_dict"]
