"""gift_cl: continual and multi-task learning with GIFT (Generative Interpretable Fine-Tuning).

Public API (peft-style)::

    model = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=True, num_classes=10)
    gift = get_gift_model(model, GiftConfig.paca())     # or GiftConfig.linear() for the official v2 form
    deltas = gift.delta_weights()                       # {layer name: ΔW}
    clusters = gift.cluster_assignments()               # {layer name: [C per PaCa block, (d_out, M)]}
    plain = gift.merge_and_unload()                     # a stock timm model with W + ΔW
"""
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .gift import GiftConfig, GiftGenerator, ParameterToClusterAttention
    from .lora import LoraModel
    from .tuner import GiftLinear, GiftModel, get_gift_model

# The public API is imported on first use (PEP 562): importing gift_cl, or a torch-free part of it such as
# gift_cl.orchestration.cli or the sweep runner's plan and status, does not import torch.
_PUBLIC = {"GiftConfig": "gift", "GiftGenerator": "gift", "ParameterToClusterAttention": "gift",
           "LoraModel": "lora", "GiftLinear": "tuner", "GiftModel": "tuner", "get_gift_model": "tuner"}


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
        globals()[name] = value  # once: later lookups are plain attribute reads
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GiftConfig",
    "GiftGenerator",
    "GiftLinear",
    "GiftModel",
    "LoraModel",
    "ParameterToClusterAttention",
    "get_gift_model",
]
