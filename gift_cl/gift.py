"""GIFT — Generative Interpretable Fine-Tuning: the whole math of the generator in one file.

Notation (SPEC §2). A frozen linear layer computes ``y = x Wᵀ + b`` with ``W ∈ R^{d_out × d_in}``.
The rows of ``W`` are *parameter tokens*: ``d_out`` tokens of dimension ``d_in``. The ``L`` target
layers that share a shape are one batch ``X ∈ R^{L × d_out × d_in}`` and the generator maps it to
residuals of the same shape::

    h  = X φᵀ (+ P)                         dimension reduction d_in → d'  (+ positional encoding)
    h  = h + Mixer(n(h)) ;  h = h + MLP(n(h))   × depth, pre-norm with parameter-free L2 norm n(·)
    ΔW = h ψᵀ                               dimension recovery d' → d_in, ψ initialised to ZERO

so ``ΔW ≡ 0`` at initialisation and the wrapped model is the frozen model, bit for bit.

Parameter-to-Cluster Attention (PaCa), linear in the number of tokens N = d_out::

    x = n(h)
    C = sigmoid(x W_c + b_c)        N × M   soft, independent membership of each token in M clusters
    Z = n(Cᵀ x / N)                 M × d'  cluster tokens
    out = softmax_M(x W_q (Z W_k)ᵀ · scale) (Z W_v) W_o

The layers apply the residual in factored form, ``x ΔWᵀ = (x ψ) hᵀ`` (``gift_cl/residual.py``): ΔW has
rank d' and is only formed to merge or export.

With ``depth=0`` and no positional encoding the generator is the official v2 code's
``ΔW = (W φᵀ) ψᵀ`` (rank r = d'), evaluated in the same order.

The generator is split the way multi-task learning needs it: a :class:`GeneratorTrunk` (φ, P, the
blocks' attention/MLP weights) that tasks may share, and a :class:`GeneratorHead` (ψ and the PaCa
cluster-assignment layers) that is per task, so each task has its own assignments to analyse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union, cast

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from einops import rearrange
from torch import nn

from .residual import LowRank

L2_EPS = 1e-12


class _L2Normalize(torch.autograd.Function):
    """``y = x / max(‖x‖, eps)`` over the last dim, the values of ``F.normalize`` bit for bit, with the closed-form
    backward ``∂x = (g − y ⟨y, g⟩) / max(‖x‖, eps)`` (``g / eps`` where the norm is clamped): three elementwise
    passes instead of the eight or so autograd records for norm, clamp and division (3× faster on CPU)."""

    @staticmethod
    def forward(ctx, x):
        n = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(L2_EPS)
        y = x / n
        ctx.save_for_backward(y, n)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        y, n = ctx.saved_tensors
        dot = (y * g).sum(-1, keepdim=True).masked_fill_(n <= L2_EPS, 0.0)
        return (g - y * dot).div_(n)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """The generator's norm: parameter-free, because its inputs are weights, not activations."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _L2Normalize.apply(x)
    return F.normalize(x, p=2.0, dim=-1, eps=L2_EPS)


@dataclass
class GiftConfig:
    """Everything that defines a GIFT generator; one field per constructor argument.

    ``target_modules`` are module-name suffixes (``"attn.proj"`` matches ``blocks.3.attn.proj``).
    Layers of the same shape form one group with one generator, evaluated in one batched call.
    """

    target_modules: Sequence[str] = ("attn.proj",)
    rank: int = 48  # d'
    depth: int = 4  # number of hyper-transformer blocks
    block: str = "paca"  # token mixer: paca | attention | mlp (MLP-only blocks)
    num_clusters: int = 64  # M
    num_heads: int = 1
    mlp_ratio: float = 2.0
    positional_encoding: bool = True

    def __post_init__(self):
        self.target_modules = tuple(self.target_modules)
        if self.block not in TOKEN_MIXERS:
            raise ValueError(f"unknown GIFT block {self.block!r}; expected one of {sorted(TOKEN_MIXERS)}")
        if self.rank <= 0 or self.depth < 0:
            raise ValueError(f"GIFT rank must be > 0 and depth >= 0, got rank={self.rank}, depth={self.depth}")
        if self.depth and self.rank % self.num_heads:
            raise ValueError(f"rank {self.rank} is not divisible by num_heads {self.num_heads}")

    @classmethod
    def paca(cls, **overrides) -> "GiftConfig":
        """The v1 paper form: d'=48, 4 PaCa blocks, positional encoding."""
        return cls(**{**dict(rank=48, depth=4, block="paca", positional_encoding=True), **overrides})

    @classmethod
    def linear(cls, **overrides) -> "GiftConfig":
        """The v2 official form: ΔW = (W φᵀ) ψᵀ with rank 16."""
        return cls(**{**dict(rank=16, depth=0, positional_encoding=False), **overrides})


class ClusterAssignment(nn.Module):
    """``C = sigmoid(x W_c + b_c)``. Sigmoid, not softmax: softmax over clusters makes the
    assignments nearly uniform (the paper's finding). Its parameters get no weight decay
    (the optimizer groups exempt every name containing ``cluster``)."""

    def __init__(self, dim: int, num_clusters: int):
        super().__init__()
        self.cluster = nn.Linear(dim, num_clusters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.cluster(x))


class ParameterToClusterAttention(nn.Module):
    """Tokens attend to M cluster tokens instead of to each other: O(N·M) instead of O(N²)."""

    def __init__(self, dim: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, assign: ClusterAssignment) -> tuple[torch.Tensor, torch.Tensor]:
        num_tokens = x.shape[-2]
        c = assign(x)  # (L, N, M)
        z = l2_normalize(c.transpose(-2, -1) @ x / num_tokens)  # (L, M, d)
        k = self.k(z) * self.scale  # the scale on the M keys, not on the N×M logits
        v = self.v(z)
        if self.num_heads == 1:
            # One head: fold W_q into the keys and W_o, b_o into the values, products over the M ≪ N cluster
            # tokens instead of the N parameter tokens (the same function, up to float rounding):
            #   (x W_qᵀ + b_q) kᵀ = x (k W_q)ᵀ + (k b_q)ᵀ,    softmax(·) v W_oᵀ + b_o = softmax(·) (v W_oᵀ + b_o)
            # (the rows of a softmax sum to 1).
            logits = torch.baddbmm((k @ self.q.bias).unsqueeze(-2), x, (k @ self.q.weight).transpose(-2, -1))
            attn = torch.softmax(logits, dim=-1)
            return attn @ F.linear(v, self.proj.weight, self.proj.bias), c
        q = rearrange(self.q(x), "l n (h d) -> l h n d", h=self.num_heads)
        k = rearrange(k, "l m (h d) -> l h m d", h=self.num_heads)
        v = rearrange(v, "l m (h d) -> l h m d", h=self.num_heads)
        attn = torch.softmax(q @ k.transpose(-2, -1), dim=-1)
        out = rearrange(attn @ v, "l h n d -> l n (h d)")
        return self.proj(out), c


class TokenSelfAttention(nn.Module):
    """Vanilla multi-head self-attention over the parameter tokens (quadratic in d_out)."""

    def __init__(self, dim: int, num_heads: int = 1):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, assign: None = None) -> tuple[torch.Tensor, None]:
        q, k, v = rearrange(self.qkv(x), "l n (three h d) -> three l h n d", three=3, h=self.num_heads)
        attn = torch.softmax(q @ k.transpose(-2, -1) * self.scale, dim=-1)
        return self.proj(rearrange(attn @ v, "l h n d -> l n (h d)")), None


class Mlp(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


# The registry behind ``GiftConfig.block``; ``None`` means an MLP-only block.
TOKEN_MIXERS = {"paca": ParameterToClusterAttention, "attention": TokenSelfAttention, "mlp": None}


class GeneratorBlock(nn.Module):
    """``h = h + Mixer(n(h)); h = h + MLP(n(h))`` — a pre-norm transformer block over parameter tokens."""

    def __init__(self, dim: int, block: str, num_heads: int, mlp_ratio: float):
        super().__init__()
        mixer_cls = TOKEN_MIXERS[block]
        self.mixer = mixer_cls(dim, num_heads) if mixer_cls is not None else None
        self.mlp = Mlp(dim, mlp_ratio)

    def forward(self, h: torch.Tensor, assign: Optional[ClusterAssignment] = None):
        c = None
        if self.mixer is not None:
            out, c = self.mixer(l2_normalize(h), assign)
            h = h + out
        h = h + self.mlp(l2_normalize(h))
        return h, c


class GeneratorTrunk(nn.Module):
    """The part of the generator tasks may share: reduction φ, positional encoding P, the blocks."""

    def __init__(self, config: GiftConfig, d_in: int, d_out: int):
        super().__init__()
        self.reduction = nn.Linear(d_in, config.rank, bias=False)  # φ
        if config.positional_encoding:
            self.pos_embed: Optional[nn.Parameter] = nn.Parameter(torch.zeros(d_out, config.rank))
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        else:
            self.pos_embed = None
        self.blocks = nn.ModuleList(
            GeneratorBlock(config.rank, config.block, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )


class GeneratorHead(nn.Module):
    """The per-task part: recovery ψ (zero-initialised) and one cluster assignment per PaCa block."""

    def __init__(self, config: GiftConfig, d_in: int):
        super().__init__()
        self.recovery = nn.Linear(config.rank, d_in, bias=False)  # ψ
        nn.init.zeros_(self.recovery.weight)
        n_assign = config.depth if config.block == "paca" else 0
        self.clusters = nn.ModuleList(ClusterAssignment(config.rank, config.num_clusters) for _ in range(n_assign))


class GiftGenerator(nn.Module):
    """Generates ΔW for a batch of same-shape frozen weights ``(L, d_out, d_in)`` in one call."""

    def __init__(self, config: GiftConfig, d_in: int, d_out: int, heads: Sequence[str] = ("0",)):
        super().__init__()
        self.config = config
        self.d_in, self.d_out = d_in, d_out
        self.trunk = GeneratorTrunk(config, d_in, d_out)
        self.heads = nn.ModuleDict()
        for name in heads:
            self.add_head(name)

    def add_head(self, name: str) -> GeneratorHead:
        head = GeneratorHead(self.config, self.d_in)
        self.heads[name] = head
        return head

    def trunk_input(self, weights: torch.Tensor) -> torch.Tensor:
        """``X φᵀ (+ P)`` (L, d_out, d'): the head-independent start of the trunk."""
        if weights.shape[-2:] != (self.d_out, self.d_in):
            raise ValueError(
                f"generator built for weights of shape ({self.d_out}, {self.d_in}), got {tuple(weights.shape[-2:])}"
            )
        # The generator's input is weights, not data: keep it out of autocast, like the official code.
        with torch.autocast(device_type=weights.device.type, enabled=False):
            h = F.linear(weights.float(), self.trunk.reduction.weight)
            if self.trunk.pos_embed is not None:
                h = h + self.trunk.pos_embed
        return h

    def trunk_blocks(self, h: torch.Tensor, head: str = "0") -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The blocks on ``h`` with ``head``'s cluster assignments: the trunk output and the assignments per block."""
        task_head = cast(GeneratorHead, self.heads[head])  # nn.ModuleDict is typed Module; add_head holds these
        assignments = []
        with torch.autocast(device_type=h.device.type, enabled=False):
            for i, block in enumerate(self.trunk.blocks):
                assign = task_head.clusters[i] if len(task_head.clusters) else None
                h, c = block(h, assign)
                if c is not None:
                    assignments.append(c)
        return h, assignments

    def trunk_output(self, weights: torch.Tensor, head: str = "0") -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``h`` (L, d_out, d'), the trunk's output before the recovery, and the PaCa assignments per block."""
        return self.trunk_blocks(self.trunk_input(weights), head)

    def forward(
        self,
        weights: torch.Tensor,
        head: Union[str, Sequence[str]] = "0",
        return_assignments: bool = False,
        factored: bool = False,
    ):
        """``weights``: (L, d_out, d_in) frozen weights. Returns ΔW of the same shape and, on request,
        the cluster assignments, one ``(L, d_out, M)`` tensor per PaCa block.

        ``factored=True`` returns the factors :class:`~gift_cl.residual.LowRank` ``(h, ψ)`` instead of
        ``ΔW = h ψᵀ`` (``h``: (L, d_out, d') in fp32, ``ψ``: (d_in, d')): the layers apply them as
        ``(x ψ) hᵀ`` and ΔW is never formed.

        ``head`` may be a list of heads: the result is then a list, one entry per head, from one call; heads
        without their own cluster assignments share one trunk evaluation (only their ψ differs)."""
        if isinstance(head, str):
            return self._forward_heads(weights, [head], return_assignments, factored)[0]
        return self._forward_heads(weights, list(head), return_assignments, factored)

    # Recompute the trunk in the backward instead of keeping its activations (torch.utils.checkpoint): one more
    # forward of the blocks per step, and their graph is not alive at the backbone's activation peak (the
    # generator's backward runs last, after the backbone's activations are freed). With several trunk evaluations
    # (heads with their own clusters) the reduction X φᵀ runs once and only the blocks are recomputed. GiftModel
    # sets it.
    checkpoint: bool = False

    def _checkpointing(self, return_assignments: bool) -> bool:
        return self.checkpoint and bool(self.trunk.blocks) and not return_assignments and torch.is_grad_enabled()

    def _blocks(self, h0, weights, name, return_assignments):
        if not self._checkpointing(return_assignments):
            return self.trunk_blocks(h0 if h0 is not None else self.trunk_input(weights), name)
        if h0 is None:  # one trunk evaluation: recompute it whole; its input is the (cached) frozen weights
            fn = lambda w: self.trunk_output(w, name)[0]  # noqa: E731
            return torch.utils.checkpoint.checkpoint(fn, weights, use_reentrant=False), []
        fn = lambda h: self.trunk_blocks(h, name)[0]  # noqa: E731
        return torch.utils.checkpoint.checkpoint(fn, h0, use_reentrant=False), []

    def _forward_heads(self, weights, heads, return_assignments, factored):
        """The trunk input once for all heads; the blocks once per head with its own cluster assignments, once
        for all heads without."""
        outs, shared = [], None
        own = [len(self.heads[name].clusters) > 0 for name in heads]
        n_trunks = sum(own) + (not all(own))
        shared_input = n_trunks > 1 or not self._checkpointing(return_assignments)
        h0 = self.trunk_input(weights) if shared_input else None
        for name, own_trunk in zip(heads, own):
            if own_trunk or shared is None:
                h, assignments = self._blocks(h0, weights, name, return_assignments)
                if not own_trunk:
                    shared = (h, assignments)
            else:
                h, assignments = shared
            psi = self.heads[name].recovery.weight
            if factored:
                out = LowRank(h, psi)
            else:
                with torch.autocast(device_type=weights.device.type, enabled=False):
                    out = F.linear(h, psi).to(weights.dtype)
            outs.append((out, assignments) if return_assignments else out)
        return outs
