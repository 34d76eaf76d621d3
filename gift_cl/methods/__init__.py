"""Task-aware models, one file per method; every protocol (independent, sequential, joint) uses them."""
from .artihippo import ArtiHippo
from .base import PAD_LOGIT, TaskAwareModel
from .bitfit import BitFit
from .finetune import FullFinetune
from .gift import GiftMethod
from .linear import LinearProbe
from .lora import LoraMethod
from .shared import SharedBackbone

__all__ = ["PAD_LOGIT", "TaskAwareModel", "ArtiHippo", "BitFit", "FullFinetune", "GiftMethod", "LinearProbe", "LoraMethod",
           "SharedBackbone"]
