"""Concept reuse across tasks: do tasks fine-tune with the same parameter clusters?

Every task has, per target layer, ``M`` concepts, each a vector over the layer's ``d_out`` parameter tokens
(its column of the concept matrix ``C``, see :mod:`gift_cl.interpret`; ``(M, d_out)`` rows here). Two
concepts are the same when their vectors point the same way.

Similarity is the cosine of the *centred* vectors by default (``center=True``: the Pearson correlation
over tokens). PaCa assignments are sigmoids, all positive, so the raw cosine of two unrelated random
assignment vectors is already ≈ 0.75; centring removes that offset (``center=False`` gives the raw cosine).
Every report also carries a chance level: the same statistic with one task's token axis shuffled.

Functions take plain tensors and dicts, so they run without a run directory::

    vectors = run.concept_vectors()                     # {layer: {task: (M, d_out)}}, gift_cl.interpret.load_run
    report = analyze(vectors, prototypes=run.prototypes, gains=gains, out_dir="concepts")

- :func:`match_clusters`: one-to-one matching (Hungarian, ``linear_sum_assignment``) of two tasks' concepts;
- :func:`reuse_matrix`: task × task mean matched similarity (symmetric);
- :func:`global_concepts`: k-means over every (task, concept) vector, ``k`` chosen by silhouette;
- :func:`agreement_matrices`: NMI / ARI between tasks' hard assignments (each token's argmax concept);
- :func:`task_dendrogram`: average-linkage hierarchy of tasks on ``1 − reuse``;
- :func:`tsne_embedding`: 2-D t-SNE of all concept vectors;
- :func:`prototype_similarity`, :func:`relate`, :func:`reuse_vs_gain`: reuse against task similarity
  (cosine of the mean frozen [CLS] prototypes used for task-id inference) and against accuracy gains;
- :func:`cross_layer_reuse`: concept reuse between depths (layer × layer, averaged over tasks);
- :func:`group_reuse`: reuse within vs between named groups of tasks, with permutation p-values;
- ``*_figure``: every figure as a ``matplotlib.figure.Figure`` (no pyplot), for notebooks; ``plot_*`` save them.

Reference levels: :func:`chance_reuse` (token axes shuffled) and, via ``analyze(control=...)``, the reuse of
the same run with untrained generator heads (``GiftRun.concept_vectors(untrained_heads=True)``), which is what
a shared trunk alone imposes.

Modules: :mod:`~gift_cl.concepts.stats` (the statistics, :func:`analyze`), :mod:`~gift_cl.concepts.tables`
(:func:`save_report`: JSON and CSV) and :mod:`~gift_cl.concepts.figures` (``*_figure``, ``plot_*``); every public
name is re-exported here.
"""
from .figures import (
    DPI,
    cross_layer_figure,
    data_range,
    dendrogram_figure,
    depth_figure,
    figure,
    global_concepts_figure,
    matrix_figure,
    plot_depth,
    plot_layer,
    plot_matrix,
    relations_figure,
    reuse_figure,
    save_figure,
    tsne_figure,
)
from .refute import (
    ABLATION_MODES,
    AblationEffect,
    AblationProbe,
    MantelResult,
    NullTest,
    PartTest,
    ablate_cluster,
    ablation_effect,
    concept_parts,
    counterparts,
    mantel_test,
    match_used,
    mean_used_reuse,
    null_test,
    pair_reuse,
    part_agreement,
    part_vocabulary_test,
    smallest_reachable_p,
    untrained_null,
    untrained_vectors,
    used_concepts,
    used_matches,
    used_reuse_matrix,
)
from .stats import (
    Match,
    Vectors,
    agreement_matrices,
    analyze,
    analyze_layer,
    chance_reuse,
    cross_layer_reuse,
    global_concepts,
    group_reuse,
    hard_assignments,
    match_clusters,
    off_diagonal_mean,
    prototype_similarity,
    relate,
    reuse_matrix,
    reuse_vs_gain,
    similarity,
    task_dendrogram,
    tsne_embedding,
    unit_vectors,
)
from .tables import save_report

__all__ = ["DPI", "figure", "save_figure", "data_range", "matrix_figure", "plot_matrix", "reuse_figure",
           "dendrogram_figure", "tsne_figure", "global_concepts_figure", "relations_figure", "depth_figure",
           "cross_layer_figure", "plot_layer", "plot_depth", "Vectors", "unit_vectors", "similarity", "Match",
           "match_clusters", "reuse_matrix", "chance_reuse", "off_diagonal_mean", "hard_assignments",
           "agreement_matrices", "global_concepts", "task_dendrogram", "tsne_embedding", "prototype_similarity",
           "relate", "reuse_vs_gain", "cross_layer_reuse", "group_reuse", "analyze_layer", "analyze", "save_report",
           "used_concepts", "match_used", "used_matches", "used_reuse_matrix", "mean_used_reuse", "pair_reuse",
           "NullTest", "null_test", "untrained_null", "untrained_vectors", "MantelResult", "mantel_test",
           "concept_parts", "part_agreement", "smallest_reachable_p", "PartTest", "part_vocabulary_test",
           "ABLATION_MODES", "ablate_cluster", "counterparts", "AblationProbe", "AblationEffect", "ablation_effect"]
