"""Parallel bottleneck adapters (the Adapter/Convpass family as GIST's release runs them) on the frozen
backbone: per task and block, one adapter beside the attention branch and one beside the MLP branch,

    x = x + attn(norm1(x)) + s·up(GELU(down(norm1(x))))
    x = x + mlp(norm2(x))  + s·up(GELU(down(norm2(x))))

(the adapter reads the branch's normed input and its output joins the branch output, before the block's
layer scale / drop path, which are identities in these ViTs). Hidden size ``hidden`` (default 8),
scale ``s`` = 0.1, ``down`` Xavier-uniform with zero bias, ``up`` zero-initialised: at step 0 the model is
the frozen one, bit for bit (the hook adds an exact zero). Per task: ``depth × 2 × (2·D·h + h + D)``.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import HookedBackboneModel


class Bottleneck(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


class AdapterMethod(HookedBackboneModel):
    BRANCHES = ("attn", "mlp")

    def __init__(self, backbone: nn.Module, hidden: int = 8, scale: float = 0.1, plugins: Optional[dict] = None):
        super().__init__(backbone)
        if hidden < 1:
            raise ValueError(f"adapter hidden size must be >= 1, got {hidden}")
        self.hidden, self.scale = hidden, scale
        self.depth = len(self.backbone.blocks)
        self.adapters = nn.ModuleDict()  # task -> ModuleDict("<block>:<branch>" -> Bottleneck)
        for i, blk in enumerate(self.backbone.blocks):
            for branch in self.BRANCHES:
                getattr(blk, branch).register_forward_hook(_AdapterHook(self, f"{i}:{branch}"))
        self.record_pretrained_keys()
        self.use_plugins(plugins)

    def add_task_parts(self, task: int) -> None:
        device = self.backbone.cls_token.device
        self.adapters[str(task)] = nn.ModuleDict({
            f"{i}:{b}": Bottleneck(self.feature_dim, self.hidden) for i in range(self.depth) for b in self.BRANCHES
        }).to(device)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return super().task_parameters(task) + list(self.adapters[str(task)].parameters())


class _AdapterHook:
    """Forward hook of one branch: add the active task's adapter of the branch input."""

    def __init__(self, model: AdapterMethod, key: str):
        self.model, self.key = model, key

    def __call__(self, module, args, out):
        model = self.model
        if model.active is None:
            return None
        return out + model.scale * model.adapters[model.active][self.key](args[0])
