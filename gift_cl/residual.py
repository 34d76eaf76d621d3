"""The residual a GIFT layer adds, in factored form: ``x ΔWᵀ = (x ψ) hᵀ``.

The generator's last step is the dimension recovery ``ΔW = F.linear(h, ψ) = h ψᵀ`` with the trunk output
``h ∈ R^{d_out × d'}`` (one layer) and ``ψ ∈ R^{d_in × d'}`` (``recovery.weight``). So ``ΔW ∈ R^{d_out × d_in}``
has rank ≤ d', and for tokens ``x ∈ R^{n × d_in}``::

    x ΔWᵀ = x (h ψᵀ)ᵀ = x ψ hᵀ = (x ψ) hᵀ        u = x ψ ∈ R^{n × d'}

costs ``n·d'·(d_in + d_out)`` multiply-adds instead of ``n·d_in·d_out`` (plus the ``L·d_out·d_in·d'`` it takes
to form ΔW at all). Backward, with ``g = ∂L/∂y`` and ``gh = g h``::

    ∂L/∂x = g W + gh ψᵀ       ∂L/∂h = gᵀ u       ∂L/∂ψ = xᵀ gh

:func:`factored_linear` computes ``y = x Wᵀ + b + (x ψ) hᵀ`` as one autograd node with a hand-written
backward. ``ψ = 0`` reproduces the frozen layer bit for bit in both of its strategies (see
:class:`_FactoredLinear`):

- *folded* (one head, exact fp32 matmuls, the training default on CPU): the forward uses ``W⁺ = W + h ψᵀ``,
  formed once per layer and step, so it costs exactly what the frozen forward costs; the backward adds four
  thin products (``g h``, ``xᵀ(g h)``, ``x ψ``, ``gᵀ(x ψ)``), the same structure as LoRA's with d' for r.
- *additive* (mixed-task batches, TF32/bf16/fp16): ``y = F.linear(x, W, b)``, then ``(x ψ) hᵀ`` accumulated
  into it in place (``addmm_``): no ``(n, d_out)`` temporaries; two thin products forward, four backward.

*Mixed-task batches.* Samples ``bounds[k]:bounds[k+1]`` (along dim 0 of ``x``) use head ``k``'s factors
(``hs[k]``, ``psis[k]``): one frozen product for the whole batch, one pair of thin products per head group,
and each head's gradients come from its own rows only.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn.functional as F


class LowRank(NamedTuple):
    """The factors of one layer's residual ``ΔW = h ψᵀ``: ``h`` (d_out, d'), ``psi`` (d_in, d')."""

    h: torch.Tensor
    psi: torch.Tensor

    def dense(self) -> torch.Tensor:
        """``ΔW = F.linear(h, ψ)``, evaluated exactly as the generator's dense path does."""
        return F.linear(self.h, self.psi)


Part = Union[torch.Tensor, LowRank]  # a dense ΔW or its factors


class Mixed(NamedTuple):
    """Per-head residuals for a batch sorted by head: samples ``bounds[k]:bounds[k+1]`` use ``parts[k]``."""

    parts: tuple
    bounds: tuple


Residual = Union[torch.Tensor, LowRank, Mixed]


def _rows(bounds: Optional[Sequence[int]], k: int, per_sample: int) -> slice:
    if bounds is None:
        return slice(None)
    return slice(bounds[k] * per_sample, bounds[k + 1] * per_sample)


class _FactoredLinear(torch.autograd.Function):
    """``y = x Wᵀ + b + (x ψ) hᵀ`` per head group, with a hand-written backward. Two forward strategies:

    - *additive* (any number of head groups, any precision): ``y = F.linear(x, W, b)`` for the whole batch,
      then ``y[rows_k] += (x[rows_k] ψ_k) h_kᵀ`` in place. Six thin products per layer (2 forward, 4 backward).
    - *folded* (one head, full-precision fp32/fp64 matmuls): ``W⁺ = W + h ψᵀ`` (``d_out·d_in·d'``, once per
      layer and step), ``y = F.linear(x, W⁺, b)`` and ``∂L/∂x = g W⁺``. Four thin products per layer (all in
      the backward: ``g h``, ``xᵀ(g h)``, ``x ψ``, ``gᵀ(x ψ)``), the forward costs what the frozen layer's does.
      ``ψ = 0`` gives ``W⁺ = W`` bit for bit. Rounding ``W + ΔW`` loses the part of ΔW below half an ulp of W,
      which is the size of the error the frozen product itself makes in exact fp32, but not with TF32 or
      bf16/fp16 matmuls (10 or fewer mantissa bits): those use the additive form.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, bounds, fold, *factors):
        k_heads = len(factors) // 2
        hs, psis = factors[:k_heads], factors[k_heads:]
        ctx.bounds, ctx.k_heads, ctx.fold = bounds, k_heads, fold
        ctx.has_bias = bias is not None
        ctx.factor_dtypes = tuple(f.dtype for f in factors)
        if fold:
            w_plus = torch.addmm(weight, hs[0].to(weight.dtype), psis[0].to(weight.dtype).t())
            y = F.linear(x, w_plus, bias)
            ctx.per_sample = 1
            # W⁺ is formed again in the backward rather than kept: d_out·d_in·d' multiply-adds against d_out·d_in
            # bytes held per layer through the whole pass (more than LoRA's saved activations at small batches).
            ctx.save_for_backward(x, weight, hs[0].to(y.dtype), psis[0].to(y.dtype))
            return y
        y = F.linear(x, weight, bias)
        d_in, d_out = x.shape[-1], y.shape[-1]
        x2, y2 = x.reshape(-1, d_in), y.view(-1, d_out)
        per_sample = 1 if bounds is None else x2.shape[0] // x.shape[0]
        dtype = y.dtype
        hs = tuple(h.to(dtype) for h in hs)
        psis = tuple(p.to(dtype) for p in psis)
        for k in range(k_heads):
            rows = _rows(bounds, k, per_sample)
            y2[rows].addmm_(x2[rows].to(dtype) @ psis[k], hs[k].t())
        ctx.per_sample = per_sample
        ctx.save_for_backward(x, weight, *hs, *psis)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, *rest = ctx.saved_tensors
        k_heads, bounds, per_sample = ctx.k_heads, ctx.bounds, ctx.per_sample
        hs, psis = rest[:k_heads], rest[k_heads : 2 * k_heads]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_f = ctx.needs_input_grad[5:]
        d_in, d_out = x.shape[-1], weight.shape[0]
        g2 = gy.reshape(-1, d_out)
        x2 = x.reshape(-1, d_in)
        gx2 = None
        if need_x:
            w_x = torch.addmm(weight, hs[0].to(weight.dtype), psis[0].to(weight.dtype).t()) if ctx.fold else weight
            gx2 = g2.mm(w_x.to(g2.dtype))
        grad_h, grad_psi = [None] * k_heads, [None] * k_heads
        for k in range(k_heads):
            need_h, need_psi = need_f[k], need_f[k_heads + k]
            if not (need_h or need_psi or (need_x and not ctx.fold)):
                continue
            rows = _rows(bounds, k, per_sample)
            gk, xk = g2[rows], x2[rows].to(g2.dtype)
            if need_psi or (need_x and not ctx.fold):
                gh = gk.mm(hs[k])  # (n, d')
                if need_x and not ctx.fold:
                    gx2[rows].addmm_(gh, psis[k].t())
                if need_psi:
                    grad_psi[k] = xk.t().mm(gh).to(ctx.factor_dtypes[k_heads + k])
            if need_h:
                grad_h[k] = gk.t().mm(xk.mm(psis[k])).to(ctx.factor_dtypes[k])
        grad_x = gx2.view(x.shape).to(x.dtype) if need_x else None
        grad_w = g2.t().mm(x2.to(g2.dtype)).to(weight.dtype) if need_w else None
        grad_b = g2.sum(0) if need_b and ctx.has_bias else None
        return (grad_x, grad_w, grad_b, None, None, *grad_h, *grad_psi)


def exact_fp32_matmul(x: torch.Tensor) -> bool:
    """Whether products of ``x`` run in full fp32/fp64 precision (no autocast, no TF32): folding ΔW into W is
    then as exact as the frozen product itself (see :class:`_FactoredLinear`)."""
    if x.dtype not in (torch.float32, torch.float64) or torch.is_autocast_enabled(x.device.type):
        return False
    if x.device.type == "cuda":
        return not torch.backends.cuda.matmul.allow_tf32 and torch.get_float32_matmul_precision() == "highest"
    return x.device.type == "cpu" and (x.dtype == torch.float64 or torch.get_float32_matmul_precision() == "highest")


def factored_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    hs: Sequence[torch.Tensor],
    psis: Sequence[torch.Tensor],
    bounds: Optional[Sequence[int]] = None,
    fold: Optional[bool] = None,
) -> torch.Tensor:
    """``F.linear(x, W, b) + (x ψ) hᵀ``, per head group when ``bounds`` (K+1 sample offsets along dim 0) is given.

    ``hs[k]``: (d_out, d'), ``psis[k]``: (d_in, d'). Without ``bounds`` there is one head (``len(hs) == 1``).
    ``fold``: compute the forward with ``W + h ψᵀ`` (one head only); default: when :func:`exact_fp32_matmul`.
    """
    if len(hs) != len(psis) or (bounds is None and len(hs) != 1):
        raise ValueError("factored_linear: one (h, psi) pair per head; bounds needed for more than one head")
    if bounds is not None:
        bounds = tuple(int(b) for b in bounds)
        if len(bounds) != len(hs) + 1 or x.dim() < 2 or bounds[0] != 0 or bounds[-1] != x.shape[0]:
            raise ValueError(f"bounds {bounds} do not split a batch of {x.shape[0]} samples into {len(hs)} groups")
    if fold is None:
        fold = bounds is None and exact_fp32_matmul(x)
    elif fold and bounds is not None:
        raise ValueError("fold=True needs a single head (no bounds)")
    return _FactoredLinear.apply(x, weight, bias, bounds, bool(fold), *hs, *psis)


def dense_linear_mixed(base: torch.nn.Linear, x: torch.Tensor, parts: Sequence[torch.Tensor], bounds) -> torch.Tensor:
    """The dense form for a mixed batch: ``y[s_k:e_k] = F.linear(x, W, b)[s_k:e_k] + x[s_k:e_k] ΔW_kᵀ``."""
    y = base(x)
    return torch.cat([y[s:e] + F.linear(x[s:e], d) for d, s, e in zip(parts, bounds[:-1], bounds[1:])])


def _observed(module: torch.nn.Module) -> bool:
    """Whether hooks watch ``module`` (e.g. cluster maps read the frozen layer's output): then it must be called."""
    from torch.nn.modules import module as m

    return bool(
        module._forward_hooks or module._forward_pre_hooks or m._global_forward_hooks or m._global_forward_pre_hooks
    )


def _lowrank_out_of_place(x: torch.Tensor, parts: Sequence[LowRank], bounds: Optional[Sequence[int]]) -> torch.Tensor:
    if bounds is None:
        return (x @ parts[0].psi.to(x.dtype)) @ parts[0].h.to(x.dtype).transpose(-2, -1)
    return torch.cat([
        (x[s:e] @ p.psi.to(x.dtype)) @ p.h.to(x.dtype).transpose(-2, -1) for p, s, e in zip(parts, bounds[:-1], bounds[1:])
    ])


def apply_residual(base: torch.nn.Linear, x: torch.Tensor, residual: Optional[Residual]) -> torch.Tensor:
    """``base(x)`` plus ``residual``: ``None`` (frozen layer), a dense ΔW, :class:`LowRank` factors or :class:`Mixed`.

    When hooks watch ``base`` (its output must stay the frozen output), the factored residual is added out of
    place after calling ``base``; otherwise it goes through the fused :func:`factored_linear`."""
    if residual is None:
        return base(x)
    if isinstance(residual, torch.Tensor):
        return base(x) + F.linear(x, residual)  # the official unmerged form
    if _observed(base) and isinstance(residual, (LowRank, Mixed)):
        if isinstance(residual, LowRank):
            return base(x) + _lowrank_out_of_place(x, [residual], None)
        if all(isinstance(p, LowRank) for p in residual.parts):
            return base(x) + _lowrank_out_of_place(x, residual.parts, residual.bounds)
    if isinstance(residual, LowRank):
        return factored_linear(x, base.weight, base.bias, (residual.h,), (residual.psi,))
    if isinstance(residual, Mixed):
        if all(isinstance(p, LowRank) for p in residual.parts):
            return factored_linear(
                x, base.weight, base.bias, [p.h for p in residual.parts], [p.psi for p in residual.parts], residual.bounds
            )
        parts = [p.dense() if isinstance(p, LowRank) else p for p in residual.parts]
        return dense_linear_mixed(base, x, parts, residual.bounds)
    raise TypeError(f"unknown residual type {type(residual).__name__}")


def dense_delta(residual: Residual) -> torch.Tensor:
    """ΔW of a single-head residual (dense or factored); a TypeError for a mixed-head one."""
    if isinstance(residual, LowRank):
        return residual.dense()
    if isinstance(residual, torch.Tensor):
        return residual
    raise TypeError(f"a mixed-head residual has no single ΔW (got {type(residual).__name__})")


__all__ = ["LowRank", "Mixed", "Residual", "apply_residual", "dense_delta", "factored_linear"]
