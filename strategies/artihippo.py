"""ArtiHippo's search as an Avalanche plugin, among the strategies' plugins: it lives with the search in
:mod:`gift_cl.artihippo.search`; this module re-exports it."""
from gift_cl.artihippo.search import ArtiHippoSearch

__all__ = ["ArtiHippoSearch"]
