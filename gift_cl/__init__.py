"""gift_cl: continual and multi-task learning with GIFT (Generative Interpretable Fine-Tuning).

Public API (peft-style)::

    model = timm.create_model("vit_base_patch16_224.augreg_in21k", pretrained=True, num_classes=10)
    gift = get_gift_model(model, GiftConfig.paca())     # or GiftConfig.linear() for the official v2 form
    deltas = gift.delta_weights()                       # {layer name: ΔW}
    clusters = gift.cluster_assignments()               # {layer name: [C per PaCa block, (d_out, M)]}
    plain = gift.merge_and_unload()                     # a stock timm model with W + ΔW
"""
from .gift import GiftConfig, GiftGenerator, ParameterToClusterAttention
from .lora import LoraModel
from .tuner import GiftLinear, GiftModel, get_gift_model

__all__ = [
    "GiftConfig",
    "GiftGenerator",
    "GiftLinear",
    "GiftModel",
    "LoraModel",
    "ParameterToClusterAttention",
    "get_gift_model",
]
