"""ArtiHippo (Savadikar, Dai, Wu; arXiv 2303.08250) in one package: the model that grows experts in every
``attn.proj`` (:mod:`.model`), its vocabulary (:mod:`.arch`), the similarity-guided sampling
(:mod:`.sampling`), the supernet and evolutionary search with the Avalanche plugin that runs it per task
(:mod:`.search`), and the run's report (:mod:`.report`)."""
from .arch import OPS, PRETRAINED, Arch
from .model import ArtiHippo, ExpertPool
from .sampling import HierarchicalSampler
from .search import ArtiHippoSearch, SearchConfig, search_task

__all__ = ["OPS", "PRETRAINED", "Arch", "ArtiHippo", "ArtiHippoSearch", "ExpertPool", "HierarchicalSampler",
           "SearchConfig", "search_task"]
