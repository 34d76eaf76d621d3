"""The statistics of concept reuse: similarity and matching, hard assignments, a global clustering, the task
tree and t-SNE, reuse against other task relations, and :func:`analyze` (every statistic, every layer)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .tables import save_report

Vectors = Mapping[str, torch.Tensor]  # task -> (M, d) concept vectors


# ---------------------------------------------------------------------- similarity and matching
def unit_vectors(v: torch.Tensor, center: bool = True) -> torch.Tensor:
    """Rows centred (optional) and scaled to unit length, in float64."""
    v = torch.as_tensor(v).double()
    if center:
        v = v - v.mean(-1, keepdim=True)
    return F.normalize(v, dim=-1)


def similarity(a: torch.Tensor, b: torch.Tensor, center: bool = True) -> np.ndarray:
    """``(Ma, Mb)`` cosine between the concepts of ``a`` and ``b`` (rows)."""
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"concepts live on different token sets: d={a.shape[-1]} vs {b.shape[-1]}")
    return (unit_vectors(a, center) @ unit_vectors(b, center).T).numpy()


@dataclass
class Match:
    """``rows[i]`` of task a is matched to ``cols[i]`` of task b with cosine ``similarity[i]``."""

    rows: np.ndarray
    cols: np.ndarray
    similarity: np.ndarray

    @property
    def mean(self) -> float:
        return float(self.similarity.mean())

    def fraction(self, threshold: float) -> float:
        return float((self.similarity >= threshold).mean())


def match_clusters(a: torch.Tensor, b: torch.Tensor, center: bool = True) -> Match:
    """One-to-one matching maximising the total cosine (Hungarian algorithm). With ``Ma ≠ Mb`` only
    ``min(Ma, Mb)`` pairs are matched."""
    from scipy.optimize import linear_sum_assignment

    s = similarity(a, b, center)
    rows, cols = linear_sum_assignment(s, maximize=True)
    return Match(rows, cols, s[rows, cols])


def reuse_matrix(vectors: Vectors, center: bool = True, threshold: Optional[float] = None) -> tuple[list[str], np.ndarray]:
    """``R[a][b]``: mean cosine of the Hungarian-matched concept pairs of tasks a and b (or, with
    ``threshold``, the fraction of matched pairs with cosine ≥ threshold). Symmetric, ``R[a][a] = 1``."""
    names = list(vectors)
    r = np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            m = match_clusters(vectors[a], vectors[names[j]], center)
            r[i, j] = r[j, i] = m.mean if threshold is None else m.fraction(threshold)
    return names, r


def chance_reuse(vectors: Vectors, center: bool = True, seed: int = 0) -> float:
    """Mean off-diagonal reuse when each task's token axis is shuffled independently (no shared concepts)."""
    if len(vectors) < 2:
        return float("nan")
    g = torch.Generator().manual_seed(seed)
    shuffled = {n: v[:, torch.randperm(v.shape[-1], generator=g)] for n, v in vectors.items()}
    return off_diagonal_mean(reuse_matrix(shuffled, center)[1])


def off_diagonal_mean(m: np.ndarray) -> float:
    """Mean over task pairs, ignoring undefined (NaN) entries."""
    vals = m[~np.eye(len(m), dtype=bool)]
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if len(vals) else float("nan")


# ---------------------------------------------------------------------- hard assignments
def hard_assignments(v: torch.Tensor) -> np.ndarray:
    """Each parameter token's concept: argmax over the ``M`` concepts of ``(M, d)`` → ``(d,)``."""
    return torch.as_tensor(v).argmax(0).numpy()


def agreement_matrices(vectors: Vectors) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Task × task NMI and ARI between the hard assignments of the parameter tokens (label-permutation
    invariant, so no matching is needed). ``NaN`` where a task puts every token in one concept: agreement
    with a single-cluster partition is undefined (sklearn would report NMI 1 for two of them)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    names = list(vectors)
    labels = {n: hard_assignments(v) for n, v in vectors.items()}
    nmi, ari = np.eye(len(names)), np.eye(len(names))
    for i, a in enumerate(names):
        for j in range(i + 1, len(names)):
            la, lb = labels[a], labels[names[j]]
            if len(np.unique(la)) < 2 or len(np.unique(lb)) < 2:
                nmi[i, j] = nmi[j, i] = ari[i, j] = ari[j, i] = np.nan
                continue
            nmi[i, j] = nmi[j, i] = normalized_mutual_info_score(la, lb)
            ari[i, j] = ari[j, i] = adjusted_rand_score(la, lb)
    return names, nmi, ari


# ---------------------------------------------------------------------- a global clustering of concepts
def _stack(vectors: Vectors, center: bool) -> tuple[np.ndarray, list[str], list[int]]:
    names = list(vectors)
    x = torch.cat([unit_vectors(vectors[n], center) for n in names]).numpy()
    task_of = [n for n in names for _ in range(len(vectors[n]))]
    index_of = [i for n in names for i in range(len(vectors[n]))]
    return x, task_of, index_of


def global_concepts(vectors: Vectors, k_range: Sequence[int] = range(2, 17), center: bool = True,
                    seed: int = 0) -> dict:
    """K-means on every (task, concept) unit vector, for each ``k`` in ``k_range`` (clipped to
    ``2 ≤ k ≤ n − 1``); the ``k`` with the best cosine silhouette wins. Returns ``k``, the silhouette of
    every tried ``k``, each concept's global label per task, and the task × k usage counts."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x, task_of, _ = _stack(vectors, center)
    names = list(vectors)
    ks = [k for k in k_range if 2 <= k <= len(x) - 1]
    if not ks:
        raise ValueError(f"{len(x)} concept vectors are too few for a silhouette (need ≥ 3)")
    scores: dict[int, float] = {}
    fits: dict[int, np.ndarray] = {}
    for k in ks:
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
        if len(set(labels)) < 2:
            continue
        scores[k], fits[k] = float(silhouette_score(x, labels, metric="cosine")), labels
    if not scores:
        raise ValueError("k-means found a single concept for every k tried")
    k = max(scores, key=scores.__getitem__)
    labels = fits[k]
    per_task: dict[str, list[int]] = {}
    counts = np.zeros((len(names), k), dtype=int)
    for (t, lab) in zip(task_of, labels):
        per_task.setdefault(t, []).append(int(lab))
        counts[names.index(t), lab] += 1
    shared = int(((counts > 0).sum(0) > 1).sum())
    return {"k": int(k), "silhouette": scores, "labels": per_task, "counts": counts.tolist(), "tasks": names,
            "shared_concepts": shared}


# ---------------------------------------------------------------------- tasks as a tree, concepts in 2-D
def task_dendrogram(names: Sequence[str], reuse: np.ndarray) -> np.ndarray:
    """Average-linkage hierarchy (scipy ``linkage`` format) of tasks on the distance ``1 − reuse``."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    if len(names) < 2:
        raise ValueError("a dendrogram needs at least two tasks")
    d = np.clip(1.0 - (reuse + reuse.T) / 2, 0.0, None)
    np.fill_diagonal(d, 0.0)
    return linkage(squareform(d, checks=False), method="average")


def tsne_embedding(vectors: Vectors, center: bool = True, seed: int = 0, perplexity: Optional[float] = None) -> dict:
    """2-D t-SNE (cosine metric) of every concept vector: ``coords`` (n, 2), ``task`` and ``concept`` per row."""
    from sklearn.manifold import TSNE

    x, task_of, index_of = _stack(vectors, center)
    if len(x) < 4:
        raise ValueError("t-SNE needs at least 4 concept vectors")
    perplexity = perplexity or float(min(30.0, max(2.0, (len(x) - 1) / 3)))
    coords = TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity,
                  random_state=seed).fit_transform(x)
    return {"coords": coords, "task": task_of, "concept": index_of, "perplexity": perplexity}


# ---------------------------------------------------------------------- reuse against other task relations
def prototype_similarity(prototypes: Mapping[str, torch.Tensor], names: Optional[Sequence[str]] = None) -> np.ndarray:
    """Task × task cosine of the mean frozen [CLS] prototypes (``model.prototypes``, task-id inference)."""
    names = list(names or prototypes)
    p = F.normalize(torch.stack([torch.as_tensor(prototypes[n]).double().flatten() for n in names]), dim=-1)
    return (p @ p.T).numpy()


def _correlation(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> dict:
    from scipy.stats import pearsonr, spearmanr

    xs, ys = np.asarray(x, float), np.asarray(y, float)
    out: dict[str, Optional[float]] = {"n": int(len(xs)), "pearson": None, "spearman": None}
    if len(xs) >= 3 and np.ptp(xs) > 0 and np.ptp(ys) > 0:
        out["pearson"] = float(pearsonr(xs, ys)[0])
        out["spearman"] = float(spearmanr(xs, ys)[0])
    return out


def relate(a: np.ndarray, b: np.ndarray) -> dict:
    """Correlation between two task × task matrices over the task pairs (upper triangle)."""
    iu = np.triu_indices(len(a), k=1)
    return {**_correlation(a[iu], b[iu]), "pairs": [[int(i), int(j)] for i, j in zip(*iu)]}


def reuse_vs_gain(names: Sequence[str], reuse: np.ndarray, gains: Mapping[str, float]) -> dict:
    """Per task: mean reuse with the other tasks, and the best reuse of an earlier task (stream order = the
    order of ``names``), against the task's accuracy gain (e.g. over the linear probe)."""
    rows: list[dict[str, Any]] = []
    for i, n in enumerate(names):
        others = [reuse[i, j] for j in range(len(names)) if j != i]
        rows.append({"task": n, "gain": gains.get(n), "mean_reuse": float(np.mean(others)) if others else None,
                     "max_reuse_earlier": float(max(reuse[i, :i])) if i else None})
    with_gain = [r for r in rows if r["gain"] is not None]
    earlier = [r for r in with_gain if r["max_reuse_earlier"] is not None]
    return {
        "per_task": rows,
        "mean_reuse": _correlation([r["mean_reuse"] for r in with_gain], [r["gain"] for r in with_gain]),
        "max_reuse_earlier": _correlation([r["max_reuse_earlier"] for r in earlier], [r["gain"] for r in earlier]),
    }


def cross_layer_reuse(vectors_by_layer: Mapping[str, Vectors], center: bool = True) -> tuple[list[str], np.ndarray]:
    """Layer × layer: mean over tasks of the matched-concept reuse between a task's concepts at two depths
    (only layers with the same ``d_out``). ``NaN`` where the token sets differ or no task has both."""
    layers = list(vectors_by_layer)
    r = np.full((len(layers), len(layers)), np.nan)
    for i, la in enumerate(layers):
        for j, lb in enumerate(layers):
            vals = [match_clusters(vectors_by_layer[la][t], vectors_by_layer[lb][t], center).mean
                    for t in vectors_by_layer[la] if t in vectors_by_layer[lb]
                    and vectors_by_layer[la][t].shape[-1] == vectors_by_layer[lb][t].shape[-1]]
            if vals:
                r[i, j] = float(np.mean(vals))
    return layers, r


def _label_test(pairs_reuse: np.ndarray, iu, labels: np.ndarray, max_exact: int, n_perm: int, seed: int) -> dict:
    """Mean reuse of same-label pairs vs the other pairs, and a one-sided permutation p-value of the
    difference (labels shuffled; exact over every distinct relabelling when ``len(labels) <= max_exact``)."""
    import itertools

    def split(lab) -> tuple[float, float]:
        same = lab[iu[0]] == lab[iu[1]]
        w, o = pairs_reuse[same], pairs_reuse[~same]
        return (float(w.mean()) if len(w) else float("nan")), (float(o.mean()) if len(o) else float("nan"))

    same, other = split(labels)
    observed = same - other
    if not np.isfinite(observed):  # no pair inside a group, or none across: nothing to test
        return {"same": same, "other": other, "difference": None, "p_value": None, "min_p": None,
                "exact": None, "n_relabellings": 0}
    exact = len(labels) <= max_exact
    if exact:  # every distinct relabelling once; the observed one is among them
        diffs = np.array([np.subtract(*split(np.array(p))) for p in set(itertools.permutations(labels.tolist()))])
        p, min_p = float(np.mean(diffs >= observed - 1e-12)), float(1 / len(diffs))
    else:
        rng = np.random.default_rng(seed)
        diffs = np.array([np.subtract(*split(rng.permutation(labels))) for _ in range(n_perm)])
        p, min_p = float((np.sum(diffs >= observed - 1e-12) + 1) / (n_perm + 1)), float(1 / (n_perm + 1))
    return {"same": same, "other": other, "difference": float(observed), "p_value": p, "min_p": min_p,
            "exact": exact, "n_relabellings": int(len(diffs))}


def group_reuse(names: Sequence[str], reuse: np.ndarray, groups: Mapping[str, Sequence[str]],
                max_exact: int = 8, n_perm: int = 20000, seed: int = 0) -> dict:
    """Do tasks of the same group (e.g. symbol-like or texture-like domains) reuse each other's concepts
    more than other task pairs do?

    - ``within``: mean reuse over the pairs inside a group (pooled over groups); ``per_group``: per group;
    - ``between``: mean over pairs of grouped tasks in different groups; ``ungrouped``: mean over pairs
      with at least one task outside every group; ``others``: every pair that is not within a group;
    - ``p_between``: one-sided permutation test of ``within − between`` (group labels shuffled among the
      grouped tasks, sizes kept). With few grouped tasks it cannot be small: ``min_p_between`` is its
      smallest possible value (0.1 for groups of 3 and 2);
    - ``p_others``: the same for ``within − others``, labels shuffled over every task (ungrouped tasks
      are singletons).

    Exact over every distinct relabelling when at most ``max_exact`` tasks are shuffled, else ``n_perm``
    random relabellings."""
    index = {n: i for i, n in enumerate(names)}
    groups = {g: [t for t in ts if t in index] for g, ts in groups.items()}
    groups = {g: ts for g, ts in groups.items() if ts}
    members = [t for ts in groups.values() for t in ts]
    if len(set(members)) != len(members):
        raise ValueError("a task belongs to more than one group")
    group_of = {t: g for g, ts in groups.items() for t in ts}
    idx = np.array([index[t] for t in members], dtype=int)
    iu = np.triu_indices(len(members), k=1)
    between = _label_test(reuse[idx[iu[0]], idx[iu[1]]], iu, np.array([group_of[t] for t in members]),
                          max_exact, n_perm, seed)
    iu_all = np.triu_indices(len(names), k=1)
    labels_all = np.array([group_of.get(n, f"\0solo {n}") for n in names])
    others = _label_test(reuse[iu_all], iu_all, labels_all, max_exact, n_perm, seed)
    ungrouped = [reuse[i, j] for i, j in zip(*iu_all) if names[int(i)] not in group_of or names[int(j)] not in group_of]
    return {
        "groups": groups, "within": others["same"], "between": between["other"], "others": others["other"],
        "ungrouped": float(np.mean(ungrouped)) if ungrouped else None,
        "per_group": {g: off_diagonal_mean(reuse[np.ix_([index[t] for t in ts], [index[t] for t in ts])])
                      if len(ts) > 1 else None for g, ts in groups.items()},
        "p_between": between["p_value"], "min_p_between": between["min_p"],
        "p_others": others["p_value"], "min_p_others": others["min_p"],
    }


# ---------------------------------------------------------------------- one layer, every layer
def analyze_layer(vectors: Vectors, prototypes: Optional[Mapping[str, torch.Tensor]] = None,
                  gains: Optional[Mapping[str, float]] = None, center: bool = True, threshold: float = 0.5,
                  k_range: Sequence[int] = range(2, 17), seed: int = 0, tsne: bool = True,
                  control: Optional[Vectors] = None, groups: Optional[Mapping[str, Sequence[str]]] = None) -> dict:
    """Every statistic for one layer. Matrices are numpy arrays; :func:`save_report` writes them out.
    ``control``: the same tasks' concept vectors under a reference condition (e.g. untrained heads,
    ``GiftRun.concept_vectors(untrained_heads=True)``): its reuse matrix is ``control_reuse``.
    ``groups``: ``{group: [task, ...]}`` for :func:`group_reuse` (on the reuse and on the control)."""
    names, r = reuse_matrix(vectors, center)
    out: dict = {"tasks": names, "center": center, "threshold": threshold, "reuse": r,
                 "reuse_fraction": reuse_matrix(vectors, center, threshold)[1],
                 "reuse_off_diagonal": off_diagonal_mean(r), "chance_reuse": chance_reuse(vectors, center, seed),
                 "num_concepts": {n: int(len(v)) for n, v in vectors.items()},
                 # how many concepts own at least one token under the hard (argmax) assignment
                 "concepts_used": {n: int(len(np.unique(hard_assignments(v)))) for n, v in vectors.items()}}
    out["matches"] = {f"{a}|{b}": {"rows": m.rows.tolist(), "cols": m.cols.tolist(), "cosine": m.similarity.tolist()}
                      for i, a in enumerate(names) for b in names[i + 1:]
                      for m in [match_clusters(vectors[a], vectors[b], center)]}
    _, out["nmi"], out["ari"] = agreement_matrices(vectors)
    out["nmi_off_diagonal"], out["ari_off_diagonal"] = off_diagonal_mean(out["nmi"]), off_diagonal_mean(out["ari"])
    n_vectors = sum(len(v) for v in vectors.values())
    out["global"] = global_concepts(vectors, k_range, center, seed) if n_vectors >= 3 and len(k_range) else None
    out["linkage"] = task_dendrogram(names, r) if len(names) >= 2 else None
    out["tsne"] = tsne_embedding(vectors, center, seed) if tsne and n_vectors >= 4 else None
    if prototypes and all(n in prototypes for n in names) and len(names) >= 2:
        out["task_similarity"] = prototype_similarity(prototypes, names)
        out["reuse_vs_task_similarity"] = relate(r, out["task_similarity"])
    if gains:
        out["reuse_vs_gain"] = reuse_vs_gain(names, r, gains)
    if control is not None:
        out["control_reuse"] = reuse_matrix({n: control[n] for n in names}, center)[1]
        out["control_reuse_off_diagonal"] = off_diagonal_mean(out["control_reuse"])
    if groups:
        out["groups"] = group_reuse(names, r, groups, seed=seed)
        if control is not None:
            out["control_groups"] = group_reuse(names, out["control_reuse"], groups, seed=seed)
    return out


def analyze(vectors_by_layer: Mapping[str, Vectors], prototypes: Optional[Mapping[str, torch.Tensor]] = None,
            gains: Optional[Mapping[str, float]] = None, out_dir: Optional[str | Path] = None, center: bool = True,
            threshold: float = 0.5, k_range: Sequence[int] = range(2, 17), seed: int = 0, tsne: bool = True,
            figures: bool = True, control: Optional[Mapping[str, Vectors]] = None,
            groups: Optional[Mapping[str, Sequence[str]]] = None) -> dict:
    """:func:`analyze_layer` for every layer plus the depth profile (per-layer summaries and the layer ×
    layer reuse). ``control``: ``{layer: {task: vectors}}`` of a reference condition (see
    :func:`analyze_layer`). With ``out_dir``, writes everything (see :func:`save_report`)."""
    layers = {layer: analyze_layer(v, prototypes, gains, center, threshold, k_range, seed, tsne,
                                   control[layer] if control else None, groups)
              for layer, v in vectors_by_layer.items()}
    order, cross = cross_layer_reuse(vectors_by_layer, center)
    depth = [{"layer": layer, "reuse": rep["reuse_off_diagonal"], "chance": rep["chance_reuse"],
              "nmi": rep["nmi_off_diagonal"], "ari": rep["ari_off_diagonal"],
              "concepts_used": float(np.mean(list(rep["concepts_used"].values()))),
              "global_k": rep["global"]["k"] if rep["global"] else None,
              "shared_concepts": rep["global"]["shared_concepts"] if rep["global"] else None,
              "reuse_vs_task_similarity": (rep.get("reuse_vs_task_similarity") or {}).get("spearman"),
              **({"control": rep["control_reuse_off_diagonal"]} if "control_reuse" in rep else {}),
              **({"within_groups": rep["groups"]["within"], "between_groups": rep["groups"]["between"]}
                 if "groups" in rep else {})}
             for layer, rep in layers.items()]
    report = {"layers": layers, "depth": depth, "cross_layer": {"layers": order, "reuse": cross}}
    names = next(iter(layers.values()))["tasks"] if layers else []
    if layers and all(rep["tasks"] == names for rep in layers.values()):
        report["tasks"] = names
        report["reuse"] = np.mean([rep["reuse"] for rep in layers.values()], axis=0)  # averaged over depth
    if out_dir is not None:
        save_report(report, out_dir, figures=figures)
    return report

