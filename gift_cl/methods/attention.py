"""timm's ``Attention.forward`` with one step replaced: the attention of the methods that change how the heads
attend (Coeff-Tuning's recombined maps, the prompt methods' prefix keys and values)."""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

HeadsCore = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (q, k, v) -> the heads' outputs


def attention_with_core(attn: Any, x: torch.Tensor, attn_mask: Optional[torch.Tensor], is_causal: bool,
                        core: Optional[HeadsCore], mask_refusal: str) -> torch.Tensor:
    """timm ``Attention.forward`` with the step from the heads' queries, keys and values (each (B, H, N,
    head_dim), q and k normed, q not yet scaled) to the heads' outputs (B, H, N, head_dim) done by ``core``.

    Coeff-Tuning (``coeff.py``) and the prefix prompts (``prompts.py``) change only that step; the projections,
    norms and gate around it are timm's own, so they are written once, here. ``core=None`` (the layer's part is not
    active) runs timm's forward itself. ``core`` is given no mask, so a masked or causal call raises
    ``ValueError(mask_refusal)`` rather than silently attending everywhere."""
    if core is None:
        return type(attn).forward(attn, x, attn_mask=attn_mask, is_causal=is_causal)
    if attn_mask is not None or is_causal:
        raise ValueError(mask_refusal)
    B, N, C = x.shape
    gate = attn.gate(x).sigmoid() if getattr(attn, "gate", None) is not None else None
    qkv = attn.qkv(x).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    x = core(q, k, v)
    x = x.transpose(1, 2).reshape(B, N, getattr(attn, "attn_dim", C))
    x = attn.norm(x)
    if gate is not None:
        x = x * gate
    x = attn.proj(x)
    return attn.proj_drop(x)
