"""ArtiHippo's search (similarity-guided sampling, supernet, evolution) and its report; the model itself is
:class:`gift_cl.methods.artihippo.ArtiHippo`."""
from .sampling import HierarchicalSampler
from .search import SearchConfig, search_task

__all__ = ["HierarchicalSampler", "SearchConfig", "search_task"]
