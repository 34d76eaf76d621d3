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
from typing import Mapping, Optional, Sequence, Union, cast

import torch
from torch import nn

from .gift import GiftConfig, GiftGenerator
from .injection import (
    backbone_parameter_count,
    count_parameters,
    find_linear_targets,
    freeze_backbone,
    set_submodule,
)
from .residual import LowRank, Mixed, Residual, apply_residual, dense_delta, exact_fp32_matmul


class GiftLinear(nn.Module):
    """``y = x Wᵀ + b + x ΔWᵀ`` with ``W``, ``b`` frozen; the residual is *handed* to the layer (``residual``).

    ``residual`` is one of (see :mod:`gift_cl.residual`):

    - ``None``: the frozen layer;
    - a dense ``ΔW`` (d_out, d_in): ``F.linear(x, W, b) + F.linear(x, ΔW)``, the official code's unmerged form;
    - :class:`~gift_cl.residual.LowRank` ``(h, ψ)`` with ``ΔW = h ψᵀ``: ``F.linear(x, W, b) + (x ψ) hᵀ``, the
      factored form (``2·d'·d`` instead of ``d²`` per token), accumulated in place into the frozen product;
    - :class:`~gift_cl.residual.Mixed`: per-head residuals for a batch sorted by head (one frozen product,
      one residual per head group).

    Computing the residual as a second product (instead of ``x (W + ΔW)ᵀ``) keeps the output equal to the
    frozen layer's, bit for bit, whenever ΔW = 0 (ψ = 0: the factored form adds an exact zero).
    """

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        self.base.requires_grad_(False)
        self.residual: Optional[Residual] = None

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base.bias

    @property
    def delta_weight(self) -> Optional[torch.Tensor]:
        """The dense ΔW of the current single-head residual (formed from the factors if needed), or ``None``."""
        return None if self.residual is None else dense_delta(self.residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_residual(self.base, x, self.residual)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``W + ΔW`` (ΔW as currently handed to this layer)."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.device, self.base.weight.dtype)
        with torch.no_grad():
            delta = 0 if self.residual is None else dense_delta(self.residual).to(self.base.weight.dtype)
            out.weight.copy_(self.base.weight + delta)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _group_key(pattern: str, shape: tuple[int, ...], n_shapes: int) -> str:
    key = pattern.replace(".", ":")  # ModuleDict keys cannot hold dots (same convention as the official code)
    return key if n_shapes == 1 else f"{key}@{shape[0]}x{shape[1]}"


RESIDUAL_FORMS = ("auto", "factored", "dense")


def factored_is_cheaper(d_in: int, d_out: int, rank: int, folded: bool = True) -> bool:
    """Whether the factored residual costs fewer multiply-adds per token and training step than the dense one.

    Dense: ``x ΔWᵀ``, ``g ΔW`` and ``gᵀ x``, ``3·d_in·d_out``. Factored, folded (one head, exact fp32; the
    forward runs with ``W + h ψᵀ``): four thin products in the backward, ``2·d'·(d_in + d_out)``. Factored,
    additive (mixed-task batches, TF32/bf16): six, ``3·d'·(d_in + d_out)``. Both forms also pay per step for
    ``h ψᵀ`` (dense ΔW, or ``W + h ψᵀ`` when folded), so the per-token counts decide; ties go to factored.
    ``analysis/bench_speed.py --sections layer`` measures both sides of these lines."""
    factored = (2 if folded else 3) * rank * (d_in + d_out)
    return factored <= 3 * d_in * d_out


class GiftModel(nn.Module):
    """A frozen timm model whose target layers receive generated residuals.

    Use :func:`gift_cl.get_gift_model` to build one. ``forward(x, head)`` runs the model with the
    residuals of generator head ``head`` (one head per task; ``"0"`` for single-task runs).

    Residuals are generated once per forward (training: with graph, one batched generator call per shape
    group) or once per head and parameter version (no grad: cached), handed to the layers for that forward,
    and taken back. ``checkpoint_generator`` (default on) recomputes the generator's trunk in the backward
    rather than keeping its activations through the backbone's pass (one more generator forward per step,
    a few % of the step's peak memory less). ``residual`` picks their form per shape group: ``"factored"`` (``(x ψ) hᵀ``, ΔW never
    formed), ``"dense"`` (``x ΔWᵀ``, the official code's form) or ``"auto"`` (factored where it costs fewer
    multiply-adds, :func:`factored_is_cheaper`; true for every shape GIFT is meant for, d' < d/2).
    The no-grad cache is keyed by head and the residual forms of the groups.

    Mixed-task batches: ``forward(x, head=["0", "3"], sample_head=t)`` with ``t`` a LongTensor (B,) of
    indices into the head list runs the frozen backbone ONCE for the whole batch; each target layer adds
    head ``k``'s residual to the samples ``t == k`` (the batch is sorted by head internally, and the output
    returned in the input order).
    """

    def __init__(self, model: nn.Module, config: GiftConfig, heads=("0",), train_head: bool = True,
                 residual: str = "auto", checkpoint_generator: bool = True):
        super().__init__()
        if residual not in RESIDUAL_FORMS:
            raise ValueError(f"unknown residual form {residual!r}; expected one of {RESIDUAL_FORMS}")
        self.config = config
        self.residual_mode = residual
        self.checkpoint_generator = checkpoint_generator
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
                gen = GiftGenerator(config, d_in=shape[1], d_out=shape[0], heads=heads)
                self.generators[key] = gen
                gen.checkpoint = checkpoint_generator
                for n in names:
                    # get_submodule is typed Module; find_linear_targets gives nn.Linear
                    set_submodule(model, n, GiftLinear(cast(nn.Linear, model.get_submodule(n))))
                    taken.add(n)
        self._eval_cache: dict[tuple[str, tuple], tuple[tuple, dict[str, Residual]]] = {}
        self._weights_cache: dict[str, tuple[tuple, torch.Tensor]] = {}

    # ---------------------------------------------------------------- residual generation
    def _layer(self, name: str) -> GiftLinear:
        return cast(GiftLinear, self.model.get_submodule(name))  # get_submodule is typed Module; __init__ swapped it

    def _generator(self, key: str) -> GiftGenerator:
        return cast(GiftGenerator, self.generators[key])  # nn.ModuleDict is typed Module; __init__ fills it

    def layers(self) -> dict[str, GiftLinear]:
        return {n: self._layer(n) for names in self.groups.values() for n in names}

    def target_weights(self, key: str) -> torch.Tensor:
        """The frozen weights of one group, stacked as the generator's token batch (L, d_out, d_in).

        Stacked once and kept while the weights are unchanged (same storage and ``_version``): the
        generator's input is constant, so no step pays for the copy."""
        weights = [self._layer(n).base.weight for n in self.groups[key]]
        if any(w.requires_grad for w in weights):  # trainable target weights (unusual): never cache a graph
            return torch.stack(weights)
        stamp = tuple((w.data_ptr(), w._version) for w in weights)
        cached = self._weights_cache.get(key)
        if cached is None or cached[0] != stamp:
            cached = self._weights_cache[key] = (stamp, torch.stack(weights))
        return cached[1]

    def residual_form(self, key: str, mixed: bool = False) -> str:
        """``"factored"`` or ``"dense"``: the form the layers of group ``key`` receive their residual in
        (``mixed``: for a mixed-task batch, where the factored residual cannot be folded into W)."""
        if self.residual_mode != "auto":
            return self.residual_mode
        gen = self._generator(key)
        folded = not mixed and exact_fp32_matmul(gen.trunk.reduction.weight)
        return "factored" if factored_is_cheaper(gen.d_in, gen.d_out, self.config.rank, folded) else "dense"

    def delta_weights(self, head: str = "0") -> dict[str, torch.Tensor]:
        """ΔW for every target layer (dense, whatever the residual form): one batched generator call per shape group."""
        deltas: dict[str, torch.Tensor] = {}
        for key, names in self.groups.items():
            delta = self.generators[key](self.target_weights(key), head=head)
            deltas.update(zip(names, delta.unbind(0)))
        return deltas

    def generate(self, heads: Union[str, Sequence[str]] = "0", mixed: bool = False):
        """The residual of every target layer, in its :meth:`residual_form` (``LowRank`` factors or dense ΔW):
        ``{layer name: residual}`` for one head, a list of such dicts for a list of heads. One generator call
        per shape group, for all the heads at once. ``mixed``: the residuals serve a mixed-task batch."""
        single = isinstance(heads, str)
        head_list = [heads] if isinstance(heads, str) else list(heads)
        out: list[dict[str, Residual]] = [{} for _ in head_list]
        for key, names in self.groups.items():
            factored = self.residual_form(key, mixed) == "factored"
            per_head = self.generators[key](self.target_weights(key), head=head_list, factored=factored)
            for res, r in zip(out, per_head):
                if factored:
                    res.update((n, LowRank(h, r.psi)) for n, h in zip(names, r.h.unbind(0)))
                else:
                    res.update(zip(names, r.unbind(0)))
        return out[0] if single else out

    def cluster_assignments(self, head: str = "0") -> dict[str, list[torch.Tensor]]:
        """PaCa assignments ``C`` per target layer: a list over blocks of ``(d_out, M)`` tensors."""
        out = {}
        with torch.no_grad():
            for key, names in self.groups.items():
                _, assign = self.generators[key](self.target_weights(key), head=head, return_assignments=True)
                for i, n in enumerate(names):
                    out[n] = [c[i] for c in assign]
        return out

    def forget_residuals(self, head: Optional[str] = None) -> None:
        """Drop the cached no-grad residuals of ``head`` (default: every head). The cache is keyed by the
        parameters' versions; a change they do not record (a forward hook on the generator, an intervention
        such as :func:`gift_cl.concepts.ablate_cluster`) must call this before and after it."""
        for key in [k for k in self._eval_cache if head is None or k[0] == head]:
            del self._eval_cache[key]

    def _cache_key(self) -> tuple:
        # ``_version`` counts in-place updates (optimizer steps, load_state_dict), so a changed
        # parameter invalidates the cached residuals without hashing any values.
        gens = tuple((p.data_ptr(), p._version) for p in self.generators.parameters())
        weights = tuple((l.base.weight.data_ptr(), l.base.weight._version) for l in self.layers().values())
        return self.residual_mode, gens, weights

    def _residuals_for_forward(self, heads: Sequence[str], mixed: bool = False) -> list[dict[str, Residual]]:
        if torch.is_grad_enabled():
            return self.generate(list(heads), mixed)  # training: once per step, with graph
        key, cache = self._cache_key(), self._eval_cache
        forms = tuple(self.residual_form(k, mixed) for k in self.groups)  # same forms: one entry serves both
        stale = [h for h in dict.fromkeys(heads) if (h, forms) not in cache or cache[h, forms][0] != key]
        if stale:
            for h, res in zip(stale, self.generate(stale, mixed)):
                cache[h, forms] = (key, res)
        return [cache[h, forms][1] for h in heads]

    @contextlib.contextmanager
    def residuals(self, deltas: Mapping[str, Residual]):
        """Hand ``deltas`` (dense ΔW, ``LowRank`` or ``Mixed`` per layer name) to the layers for one forward
        pass; always take them back (no graph leaks)."""
        layers = self.layers()
        try:
            for n, d in deltas.items():
                layers[n].residual = d
            yield
        finally:
            for layer in layers.values():
                layer.residual = None

    def forward(
        self,
        x: torch.Tensor,
        head: Union[str, Sequence[str]] = "0",
        sample_head: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Run the model with the residuals of ``head``.

        - ``forward(x, head="3")``: every sample uses head ``"3"``.
        - ``forward(x, head=["0", "3"], sample_head=t)``: a mixed-task batch, sample ``i`` uses
          ``head[t[i]]`` (``t``: int tensor or sequence of length B, values in ``[0, len(head))``). One
          backbone pass; each target layer applies the per-head residuals to its head's samples (grouped along
          dim 0, which must be the batch dimension of every target layer's input, as in timm ViTs). Only the
          heads present in the batch are generated (with grad) or looked up (cached, no grad). Output rows are
          in the input order.
        """
        if isinstance(head, str):
            if sample_head is not None:
                raise ValueError("sample_head indexes into a list of heads; pass head=[...]")
            with self.residuals(self._residuals_for_forward([head])[0]):
                return self.model(x)
        heads = list(head)
        if sample_head is None:
            if len(heads) != 1:
                raise ValueError("a list of heads needs sample_head (the head index of every sample)")
            return self.forward(x, heads[0])
        sample_head = torch.as_tensor(sample_head, device=x.device).long().reshape(-1)
        if sample_head.numel() != x.shape[0]:
            raise ValueError(f"sample_head has {sample_head.numel()} entries for a batch of {x.shape[0]}")
        counts = torch.bincount(sample_head, minlength=len(heads)).tolist()  # errors on negative indices
        if len(counts) > len(heads):
            raise ValueError(f"sample_head indexes head {len(counts) - 1}, but only {len(heads)} heads were given")
        present = [k for k, c in enumerate(counts) if c]
        if len(present) == 1:
            return self.forward(x, heads[present[0]])
        order = None
        if not bool((sample_head[1:] >= sample_head[:-1]).all()):
            order = torch.argsort(sample_head, stable=True)
            x = x.index_select(0, order)
        bounds = [0]
        for k in present:
            bounds.append(bounds[-1] + counts[k])
        per_head = self._residuals_for_forward([heads[k] for k in present], mixed=True)
        mixed = {n: Mixed(tuple(r[n] for r in per_head), tuple(bounds)) for n in per_head[0]}
        with self.residuals(mixed):
            out = self.model(x)
        if order is not None:
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(len(order), device=order.device)
            out = out.index_select(0, inverse)
        return out

    # ---------------------------------------------------------------- bookkeeping
    def add_head(self, head: str) -> None:
        for key in self.generators:
            self._generator(key).add_head(head)

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
        # the wrapper is spent: no model left (nn.Module keeps None for a submodule); typed nn.Module for every other use
        model, self.model, self.groups = self.model, None, {}  # type: ignore[assignment]
        return model

    def merged_copy(self, head: str = "0") -> nn.Module:
        """A merged plain timm model; this wrapper stays usable."""
        return copy.deepcopy(self).merge_and_unload(head)

    def save_merged(self, path: str | os.PathLike, head: str = "0") -> None:
        """Export the merged model as a safetensors checkpoint that stock timm loads."""
        from .atomic import save_safetensors

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
