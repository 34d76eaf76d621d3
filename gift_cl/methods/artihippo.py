"""ArtiHippo's import path among the methods: the method is the package :mod:`gift_cl.artihippo` (its model,
search, sampling and report); this module re-exports the model's names."""
from ..artihippo.arch import ADAPTS, NEW_INITS, OPS, PRETRAINED, SEARCH, Arch, source_key
from ..artihippo.model import ArtiHippo, ExpertPool

__all__ = ["ADAPTS", "NEW_INITS", "OPS", "PRETRAINED", "SEARCH", "Arch", "ArtiHippo", "ExpertPool", "source_key"]
