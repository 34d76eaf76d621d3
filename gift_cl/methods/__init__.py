"""Task-aware models, one file per method; every protocol (independent, sequential, joint,
class_incremental) uses them.
ArtiHippo, a method with a search of its own, is a sub-package (:mod:`gift_cl.methods.artihippo`: its model,
search plugin, sampling and report)."""
from .adapter import AdapterMethod, GistAdapterMethod
from .addon import ModelAddon
from .artihippo import ArtiHippo
from .base import PAD_LOGIT, TaskAwareModel
from .bitfit import BitFit
from .coeff import CoeffTuning
from .finetune import FullFinetune
from .gift import GiftMethod
from .gift_aper import GiftAper
from .gist import Gist
from .inflora import InfLoRA
from .linear import LinearProbe
from .lora import LoraMethod
from .prompts import L2P, CodaPrompt, DualPrompt
from .ranpac import RanPAC
from .shared import SharedBackbone
from .simplecil import SimpleCIL
from .vpt import VptDeep

__all__ = ["PAD_LOGIT", "TaskAwareModel", "AdapterMethod", "ArtiHippo", "BitFit", "CodaPrompt", "CoeffTuning",
           "DualPrompt", "FullFinetune", "GiftAper", "GiftMethod", "Gist", "GistAdapterMethod", "InfLoRA", "L2P",
           "LinearProbe", "LoraMethod", "ModelAddon", "RanPAC", "SharedBackbone", "SimpleCIL", "VptDeep"]

