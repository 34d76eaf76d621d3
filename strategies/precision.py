"""Mixed precision and ``torch.compile`` for :class:`strategies.TaskAwareStrategy`.

``precision``:
- ``fp32`` (default): no autocast, no scaler — the strategy computes exactly what it did before;
- ``bf16``: the model's forward (training and evaluation) under ``torch.autocast(dtype=bfloat16)`` on the
  strategy's device type, CUDA or CPU (CPU autocast bf16 is supported and tested; it is slow on CPUs
  without native bf16);
- ``fp16``: autocast float16 plus a ``GradScaler`` (``scale(loss).backward()``, ``step``, ``update``);
  float16 autocast on CPU works with torch >= 2.3, but is only meant for testing the path.

What stays fp32: parameters and optimizer state (autocast casts per op, never the weights), the GIFT
generator (``GiftGenerator.forward`` disables autocast: ΔW is generated in fp32 and the layer's residual
product follows autocast, as in the official code), the logits handed to the loss (cast back to fp32),
the loss and the model's penalty, and the frozen [CLS] features of task-id inference.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import nn

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast and (fp16) loss scaling for one strategy."""

    def __init__(self, precision: str = "fp32", device_type: str = "cpu"):
        if precision not in DTYPES:
            raise ValueError(f"precision={precision!r}: must be one of {', '.join(DTYPES)}")
        self.precision, self.dtype, self.device_type = precision, DTYPES[precision], device_type
        self.scaler: Optional[torch.amp.GradScaler] = None
        self.reset()

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def reset(self) -> None:
        """A fresh loss scale (every experience starts a fresh optimizer, and with it a fresh scaler)."""
        self.scaler = torch.amp.GradScaler(self.device_type) if self.precision == "fp16" else None

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    def output(self, out):
        """Logits back to fp32 for the loss and the metrics (identity in fp32)."""
        if self.enabled and torch.is_tensor(out) and out.is_floating_point():
            return out.float()
        return out

    def backward(self, loss: torch.Tensor, retain_graph: bool = False) -> None:
        if self.scaler is not None:
            loss = self.scaler.scale(loss)
        loss.backward(retain_graph=retain_graph)

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
            return
        self.scaler.step(optimizer)  # unscales; skips the step when a gradient is inf/NaN
        self.scaler.update()

    def state_dict(self) -> Optional[dict]:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: Optional[dict]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def compile_backbones(model: nn.Module, **kwargs) -> int:
    """``torch.compile`` every timm ViT inside ``model`` in place (``Module.compile``: state-dict keys and
    module identity stay as they are, so checkpoints and plugins see the same model). Backbones a method
    adds later (e.g. a fine-tuned copy per task) are compiled on the next call. Returns how many were
    compiled now. The task-aware wrapper itself is not compiled: its per-task dispatch would recompile for
    every task."""
    from timm.models.vision_transformer import VisionTransformer

    count = 0
    for module in model.modules():
        if isinstance(module, VisionTransformer) and getattr(module, "_compiled_call_impl", None) is None:
            module.compile(**kwargs)
            count += 1
    return count
