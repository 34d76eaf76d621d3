"""Interpretability: cluster maps on images for every GIFT generator, and loading a finished run.

**Concept matrix** ``C`` (``d_out × M``) of a target layer: one column per "cluster" over the layer's
``d_out`` parameter tokens (the rows of ``W``). Its source (``source=``):

- ``"assignment"``: the PaCa cluster assignment ``sigmoid(n(h) W_c + b_c)`` of one generator block
  (SPEC §2, the v1 paper's maps, ``M`` = number of clusters);
- ``"projection"``: ``W φᵀ``, the first linear layer's output, one column per rank (``M = r``). This is
  what the official visualiser (``gift/vis_utils.py``, ``ClusterVisualizer.cluster_hook`` on
  ``in_projections``) uses for every block type; for the linear (v2) generator it is the only choice;
- ``"hidden"``: the generator's token states ``h`` after one block (``M = d'``), for attention/MLP
  generators that have no assignment;
- ``"auto"``: ``assignment`` when the generator has PaCa blocks, else ``projection``.

**Which block** (``block=``, default 0: the first). The first block's assignments read the weight tokens
themselves, which differ (pairwise cosine ≈ 0.05 on the shipped backbone); its residual branch adds a component
common to every token, so from the second block on the tokens are nearly parallel (cosine > 0.999) and their
assignments nearly constant over the tokens: every cluster map is then the same map. ``block=-1`` (the last) is
still there for comparison.

**Cluster maps** (SPEC §2): the layer's output tokens ``Y`` on an image (patches only, ``N_p × d_out``)
give ``maps = Y C`` (``N_p × M``), reshaped to the patch grid and upsampled bilinearly to the image.

**Post- and pre-delta, and which task.** Maps are computed in ONE forward pass of the adapted model
with the residuals of the requested generator head (task). ``Y`` post-delta is the layer's output
``x Wᵀ + b + x ΔWᵀ``. ``Y`` pre-delta is ``x Wᵀ + b`` on the SAME input ``x``, i.e. the frozen layer applied
to what the layer receives *inside the adapted model* (earlier layers keep their residuals). This is
the official visualiser's definition: its pre-delta hook sits on ``GIFTLinear.pre_delta_identity``
inside the adapted forward. It is not the frozen model's output at that layer (from the second target
layer on the two differ). The concept matrix is that head's too: everything belongs to one task.

:func:`load_run` is the only function that knows the run-directory format.

Modules: :mod:`~gift_cl.interpret.maps` (concept matrices, cluster maps), :mod:`~gift_cl.interpret.figures`
(maps over images) and :mod:`~gift_cl.interpret.runs` (:func:`load_run`, ``results.json``); every public name is
re-exported here.
"""
from .figures import cluster_map_figure, overlay, to_pixels
from .maps import (
    NULL_PARTS,
    SOURCES,
    cls_attention,
    cluster_maps,
    cluster_maps_by_layer,
    concept_matrix,
    concept_vectors,
    frozen_patch_tokens,
    grid_maps,
    layer_outputs,
    maps_from_outputs,
    most_contrasted,
    normalize_maps,
    null_part,
    patch_grid,
    resolve_source,
    untrained_concepts,
    untrained_head,
    untrained_trunk,
)
from .runs import GiftRun, TaskView, accuracy_gains, load_run, read_results, task_accuracies

__all__ = ["overlay", "to_pixels", "cluster_map_figure", "SOURCES", "resolve_source", "concept_matrix",
           "concept_vectors", "untrained_head", "untrained_trunk", "NULL_PARTS", "null_part", "untrained_concepts", "layer_outputs", "patch_grid", "grid_maps",
           "maps_from_outputs", "frozen_patch_tokens", "cls_attention", "cluster_maps_by_layer", "cluster_maps",
           "normalize_maps", "most_contrasted", "TaskView", "GiftRun", "load_run", "read_results", "task_accuracies",
           "accuracy_gains"]
