"""Task-aware models, one file per method; every protocol (independent, sequential, joint) uses them."""
from .adapter import AdapterMethod, GistAdapterMethod
from .artihippo import ArtiHippo
from .base import PAD_LOGIT, TaskAwareModel
from .bitfit import BitFit
from .coeff import CoeffTuning
from .finetune import FullFinetune
from .gift import GiftMethod
from .gist import Gist
from .linear import LinearProbe
from .lora import LoraMethod
from .plugin import ModelPlugin
from .shared import SharedBackbone
from .vpt import VptDeep

__all__ = ["PAD_LOGIT", "TaskAwareModel", "AdapterMethod", "ArtiHippo", "BitFit", "CoeffTuning", "FullFinetune",
           "GiftMethod", "Gist", "GistAdapterMethod", "LinearProbe", "LoraMethod", "ModelPlugin", "SharedBackbone", "VptDeep"]
