"""Coeff-Tuning (learning combination coefficients of the attention maps) as a model add-on for any
method (GIFT, LoRA, Adapter, VPT, ...).

Per attention layer ℓ and task t a coefficient matrix α (heads × heads) recombines the heads' attention
maps: ``A'_h = Σ_i (α + I)_{h,i} A_i`` (after the softmax, before dropout and ``@ v``). α starts at 0, so
the model starts at the pretrained one; dropout (``dropout``) is applied to α during training. The default 0.1
is the project's choice, not a value taken from a source: the paper applies dropout to the coefficients, and its
ablation over the rate is best at 0.2; no official code was available to
compare with. Per task: ``depth × heads²`` parameters.

The recombination needs the attention maps, so a layer runs timm's explicit (non-fused) attention only
while a task with α is active; everything else (``frozen_features``, methods' other tasks, a model
without the add-on) keeps timm's ``F.scaled_dot_product_attention``.

Exactness at α = 0: ``Σ_i (0 + I)_{h,i} A_i`` adds exact zeros to ``1·A_h``, so the patched layer equals
timm's *explicit* attention path bit for bit. timm's default *fused* path (SDPA) computes the same
function with another kernel; the two agree to ~1e-6, not bitwise (tests check both).
"""
from __future__ import annotations

import types
from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from .addon import ModelAddon
from .attention import attention_with_core


def _coeff_attention_forward(attn: nn.Module, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                             is_causal: bool = False) -> torch.Tensor:
    """timm ``Attention.forward`` with the heads' maps recombined by the active task's α."""
    addon: "CoeffTuning" = attn.__dict__["_coeff_addon"]
    alpha = addon.alpha_for(attn.__dict__["_coeff_layer"])

    def recombined_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        assert alpha is not None  # passed to attention_with_core only when alpha is set
        # nn.Module.__getattr__ is typed Tensor | Module; timm's Attention: a float, an int and a Dropout
        scale, num_heads = cast(float, attn.scale), cast(int, attn.num_heads)
        attn_drop = cast(nn.Module, attn.attn_drop)
        q = q * scale
        maps = (q @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, N, N)
        mix = alpha + torch.eye(num_heads, dtype=alpha.dtype, device=alpha.device)
        maps = torch.einsum("hi,binm->bhnm", mix.to(maps.dtype), maps)
        maps = attn_drop(maps)
        return maps @ v

    return attention_with_core(
        attn, x, attn_mask, is_causal, None if alpha is None else recombined_heads,
        mask_refusal="Coeff-Tuning recombines full attention maps; this backbone passed an attention mask "
                     "(masked or causal attention), which it does not handle")


class CoeffTuning(ModelAddon):
    def __init__(self, dropout: float = 0.1):
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Coeff-Tuning dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout
        self.alphas = nn.ParameterDict()  # task -> (depth, heads, heads)
        self.depth: Optional[int] = None
        self.heads: Optional[int] = None

    def attach(self, vit: nn.Module) -> None:
        blocks = vit.blocks
        assert isinstance(blocks, (nn.Sequential, nn.ModuleList))  # timm ViT: an nn.Sequential of blocks
        # nn.Module.__getattr__ is typed Tensor | Module; timm's blocks hold an Attention with an int num_heads
        attns = [cast(nn.Module, blk.attn) for blk in blocks]
        heads = {cast(int, a.num_heads) for a in attns}
        if len(heads) != 1:
            raise ValueError(f"Coeff-Tuning needs the same number of heads in every layer, got {sorted(heads)}")
        self.depth, self.heads = len(attns), heads.pop()
        if not self.mark_attached(vit, "coeff"):
            return
        for i, attn in enumerate(attns):
            # instance-level forward and __dict__ entries: no new submodules, state-dict keys unchanged
            attn.__dict__["_coeff_addon"] = self
            attn.__dict__["_coeff_layer"] = i
            attn.forward = types.MethodType(_coeff_attention_forward, attn)

    def add_task(self, task: int) -> None:
        assert self.depth is not None and self.heads is not None, "attach() before add_task()"
        self.alphas[str(task)] = nn.Parameter(torch.zeros(self.depth, self.heads, self.heads))

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return [self.alphas[str(task)]] if str(task) in self.alphas else []

    def alpha_for(self, layer: int) -> Optional[torch.Tensor]:
        """The active task's α of ``layer`` (dropout in training), or None (fused path)."""
        if self.active is None or self.active not in self.alphas:
            return None
        return F.dropout(self.alphas[self.active][layer], self.dropout, self.training)
