"""VPT-deep (Jia et al., "Visual Prompt Tuning"): per task, ``length`` learnable prompt tokens at the
input of every transformer block, on the frozen backbone.

Block 0 appends its prompts to the sequence; every later block replaces the previous block's prompt
outputs with its own prompts (the deep variant). Prompts go *after* the patch tokens,
``[CLS, (GIST,) patches, prompts]``: self-attention is permutation-equivariant and prompts get no
positional embedding, so this equals VPT's ``[CLS, prompts, patches]`` and leaves index 1 free for a
GIST token. Init: uniform ±sqrt(6 / (3·patch_area + D)) as in the VPT release. Per task: ``depth × length × D``
parameters (+ the classifier).

Options and their sources: ``length`` defaults to 10 (the project's choice); the official GIFT code's VPT-deep
baseline uses 5 prompts per layer, as does the VPT release's default ``MODEL.PROMPT.NUM_TOKENS``.
``dropout`` (default 0.0) is dropout on the prompts in training, applied as the VPT release applies its
``prompt_dropout`` (to every layer's prompts after they are expanded over the batch: one mask per sample); the
VPT release's default ``MODEL.PROMPT.DROPOUT`` is 0.0; runs of the release have used 0.1 (``strategy.method.dropout=0.1``).

Not a zero-initialised method: extra tokens change every attention softmax from step 0 on.
"""
from __future__ import annotations

import math
from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from .addon import check_token_pooling
from .base import HookedBackboneModel


class VptDeep(HookedBackboneModel):
    def __init__(self, backbone: nn.Module, length: int = 10, dropout: float = 0.0, addons: Optional[dict] = None):
        super().__init__(backbone)
        if length < 1:
            raise ValueError(f"VPT prompt length must be >= 1, got {length}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"VPT prompt dropout must be in [0, 1), got {dropout}")
        check_token_pooling(self.backbone, "VPT")
        self.length, self.dropout = length, dropout
        blocks = self.backbone.blocks
        assert isinstance(blocks, (nn.Sequential, nn.ModuleList))  # timm ViT: an nn.Sequential of blocks
        self.depth = len(blocks)
        # nn.Module.__getattr__ is typed Tensor | Module; timm's PatchEmbed.patch_size is a plain (h, w) tuple
        patch_embed = self.backbone.patch_embed
        assert isinstance(patch_embed, nn.Module)  # timm's PatchEmbed
        patch = cast("tuple[int, int]", patch_embed.patch_size)
        self.init_range = math.sqrt(6.0 / (3 * patch[0] * patch[1] + self.feature_dim))
        self.prompts = nn.ParameterDict()  # task -> (depth, length, D)
        for i, blk in enumerate(blocks):
            blk.register_forward_pre_hook(self._prompt_hook(i))

    def _prompt_hook(self, layer: int):
        return _PromptHook(self, layer)

    def add_task_parts(self, task: int) -> None:
        cls_token = self.backbone.cls_token
        assert isinstance(cls_token, torch.Tensor)  # timm ViT's [CLS] token parameter
        device = cls_token.device
        prompts = torch.empty(self.depth, self.length, self.feature_dim, device=device)
        self.prompts[str(task)] = nn.Parameter(prompts.uniform_(-self.init_range, self.init_range))

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return super().task_parameters(task) + [self.prompts[str(task)]]


class _PromptHook:
    """Forward pre-hook of block ``layer``: add (layer 0) or replace (later layers) the prompt tokens.
    A plain object holding the model, so ``copy.deepcopy`` of the model copies it consistently."""

    def __init__(self, model: VptDeep, layer: int):
        self.model, self.layer = model, layer

    def __call__(self, module, args):
        model = self.model
        if model.active is None:
            return None
        x = args[0]
        prompts = model.prompts[model.active][self.layer].to(x.dtype).expand(x.shape[0], -1, -1)
        if model.dropout > 0 and model.training:
            prompts = F.dropout(prompts, model.dropout, training=True)
        x = torch.cat([x if self.layer == 0 else x[:, :-model.length], prompts], dim=1)
        return (x, *args[1:])
