"""GIST (Ruan et al., "GIST: Improving Parameter Efficient Fine Tuning via Knowledge Interaction") as a
model add-on for any method (GIFT, LoRA, Adapter, VPT, BitFit, ...).

- One trainable Gist token per task, initialised U(-0.5, 0.5), inserted right after [CLS] and after the
  positional embeddings: the sequence is ``[CLS, GIST, patches]`` (VPT's prompts, if any, come last).
- Dropout on the inserted token in training (``dropout``, default 0.1 as in the GIST release's
  ``GIST.prompt_dropout``; one mask per sample, applied to the token after it is expanded over the batch);
  none in evaluation. ``dropout=0`` switches it off.
- The task's classifier head reads both the [CLS] and the Gist token, each after the final norm.
- Training loss: ``CE(cls) + w_ce·CE(gist) + w_kl·(KL(p_cls‖p_gist) + KL(p_gist‖p_cls))`` with both
  softmaxes at temperature ``T``; defaults w_ce = 0.5, w_kl = 0.75, T = 3 (the GIST release); nothing is
  detached. ``CE(cls)`` is the strategy's own criterion; this add-on adds the rest
  (``auxiliary_loss``). Batch means over the whole (possibly mixed-task) batch.
- Inference reads [CLS] only.

GIST is NOT a zero-initialised method: the extra token changes every attention softmax, so even at step 0
the [CLS] output differs from the frozen model's (it is equal when the add-on is off, e.g. in
``frozen_features``).
"""
from __future__ import annotations

from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from .addon import ModelAddon, check_token_pooling


def symmetric_kl(logits_a: torch.Tensor, logits_b: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(p_a‖p_b) + KL(p_b‖p_a) summed over classes and samples (softmaxes at ``temperature``)."""
    la = F.log_softmax(logits_a / temperature, dim=-1)
    lb = F.log_softmax(logits_b / temperature, dim=-1)
    return (la.exp() * (la - lb)).sum() + (lb.exp() * (lb - la)).sum()


class Gist(ModelAddon):
    def __init__(self, ce_weight: float = 0.5, kl_weight: float = 0.75, temperature: float = 3.0,
                 init_range: float = 0.5, dropout: float = 0.1):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"GIST temperature must be > 0, got {temperature}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"GIST token dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout
        self.ce_weight, self.kl_weight, self.temperature, self.init_range = ce_weight, kl_weight, temperature, init_range
        self.tokens = nn.ParameterDict()  # task -> (1, 1, D)
        self.dim: Optional[int] = None
        self._gist: Optional[torch.Tensor] = None  # the last forward's normed Gist token (B, D)
        self._records: list = []  # (index, cls logits, gist logits) of the current training forward

    def attach(self, vit: nn.Module) -> None:
        check_token_pooling(vit, "GIST")
        self.dim = cast(int, vit.embed_dim)  # nn.Module.__getattr__ is typed Tensor | Module; timm's ViT: an int
        if not self.mark_attached(vit, "gist"):
            return
        patch_drop, norm = vit.patch_drop, vit.norm
        assert isinstance(patch_drop, nn.Module) and isinstance(norm, nn.Module)  # timm ViT submodules
        # after pos-embed (and patch dropout), before norm_pre and the blocks
        patch_drop.register_forward_hook(self._insert)
        norm.register_forward_hook(self._capture)

    def add_task(self, task: int) -> None:
        assert self.dim is not None, "attach() before add_task()"
        token = torch.empty(1, 1, self.dim).uniform_(-self.init_range, self.init_range)
        self.tokens[str(task)] = nn.Parameter(token)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return [self.tokens[str(task)]] if str(task) in self.tokens else []

    # -------------------------------------------------------------- hooks
    def _insert(self, module, args, x):
        if self.active is None or self.active not in self.tokens:
            return x
        gist = self.tokens[self.active].to(x.dtype).expand(x.shape[0], -1, -1)
        if self.dropout > 0 and self.training:
            gist = F.dropout(gist, self.dropout, training=True)
        return torch.cat([x[:, :1], gist, x[:, 1:]], dim=1)

    def _capture(self, module, args, x):
        if self.active is not None and self.active in self.tokens:
            self._gist = x[:, 1]
        return x

    # -------------------------------------------------------------- loss
    def begin_forward(self) -> None:
        self._records = []
        self._gist = None

    def after_head(self, task, classifier, logits, index) -> None:
        gist, self._gist = self._gist, None
        if gist is None or not (self.training and torch.is_grad_enabled()):
            return
        self._records.append((index, logits, classifier(gist)))

    def auxiliary_loss(self, targets: torch.Tensor) -> torch.Tensor | float:
        if not self._records:
            return 0.0
        n = len(targets)
        total: torch.Tensor | float = 0.0
        for index, cls_logits, gist_logits in self._records:
            y = targets if index is None else targets[index]
            ce = F.cross_entropy(gist_logits, y, reduction="sum")
            kl = symmetric_kl(cls_logits, gist_logits, self.temperature)
            total = total + self.ce_weight * ce + self.kl_weight * kl
        self._records = []
        return total / n
