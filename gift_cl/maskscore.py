"""Cluster maps scored against ground-truth object masks: does a GIFT concept find the object?

A cluster map (``Y C``, :func:`gift_cl.interpret.grid_maps`) gives one value per ViT patch token. The
procedural generators know, per pixel, what is object (``generate(..., masks=True)``,
:func:`gift_cl.data.procedural.object_mask`). Everything here is a pure function of arrays; nothing
needs a run directory.

**Pixels to tokens** (:func:`object_tokens`): a token is *object* when more than half of the image area
its patch covers is object pixels (fraction > 0.5; exactly half is background). The fraction is the
exact area overlap of the patch cell with each pixel, so it holds for any image and grid sizes (an image
resized for the model covers the same grid).

**Scores per cluster**, each with a sign (a cluster that is high on the background and low on the object
separates them just as well, so every cluster is two candidate detectors, ``+map`` and ``−map``):

- *AUROC*: token scores against object tokens, pooled over all images (images without an object
  contribute negatives only); the Mann–Whitney form with average ranks for ties, which equals
  ``sklearn.metrics.roc_auc_score``. ``AUROC(−map) = 1 − AUROC(map)``: choosing the sign on validation
  images is choosing ``max(AUROC, 1 − AUROC)`` there; on test images the val-chosen sign is kept, so a test
  AUROC can fall below 0.5 and the chance level stays 0.5.
- *IoU*: per image, the ``k`` highest-scoring tokens are predicted object, ``k`` = that image's number of
  object tokens; IoU with the object tokens, averaged over the images that have an object. The rule needs
  no threshold on an arbitrary map scale and, like AUROC, depends only on the ranking within each image; it
  takes the object's size from the mask, never its place. Ties in a map are broken by token order.

**Selection** (:func:`select_and_score`): the (cluster, sign) with the best score on validation images
is the one reported, scored on test images; the test images never influence the choice. Reporting the
best of ``M`` clusters on the same images would reward many noisy maps; the nulls below go through the
identical selection, so a concept beats them only by transferring to unseen images.

**Nulls and references**, each scored with the same selection:

- :func:`concept_null`: ``Y`` fixed, ``C`` drawn ≥ 20 times from a callable (random matrices of the
  same shape, :func:`random_concepts`, or e.g. untrained generator heads,
  :func:`gift_cl.interpret.untrained_head`); :func:`null_distribution` is the general form (any maps
  per draw, e.g. untrained heads with their own ``Y``);
- :func:`kmeans_reference`: k-means of the frozen patch tokens, ``k`` = the number of clusters, each
  centroid's map the negative squared distance of every token to it; fitted on validation tokens only;
- :func:`attention_reference`: the frozen model's [CLS] attention (:func:`gift_cl.interpret.cls_attention`),
  one map, so only its sign is chosen.

:func:`summarize` turns test scores over seeds and a null into one table row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

METRICS = ("auroc", "iou")
OBJECT_FRACTION = 0.5  # a token is object when MORE than this fraction of its patch is object pixels
MIN_NULL_DRAWS = 20  # fewer draws cannot place the 2.5 % and 97.5 % quantiles

Maps = Union[np.ndarray, torch.Tensor]  # (B, M, gh, gw): one value per patch token, M maps per image


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------- pixels to tokens
def _area_weights(pixels: int, cells: int) -> np.ndarray:
    """``(cells, pixels)``: the fraction of cell ``j`` that pixel ``i`` covers (rows sum to 1). Cell ``j``
    spans ``[j, j + 1) · pixels / cells`` in pixel units; a pixel cut by a cell border counts in part."""
    edges = np.arange(cells + 1) * (pixels / cells)
    lo, hi = edges[:-1, None], edges[1:, None]
    i = np.arange(pixels)[None, :]
    overlap = np.clip(np.minimum(hi, i + 1) - np.maximum(lo, i), 0.0, None)
    return overlap / (pixels / cells)


def object_fractions(masks, grid: Sequence[int]) -> np.ndarray:
    """``(B, gh, gw)``: the fraction of each patch's area that is object pixels. ``masks``: boolean object
    masks ``(B, H, W)`` (:func:`gift_cl.data.procedural.object_mask`); label masks are refused, since
    their value 1 means *distractor*, not object."""
    m = _numpy(masks)
    if m.dtype != np.bool_ or m.ndim != 3:
        raise TypeError(f"object masks must be a boolean (B, H, W) array, got {m.dtype} {m.shape}; "
                        "label masks go through gift_cl.data.procedural.object_mask first")
    gh, gw = (int(g) for g in grid)
    rows, cols = _area_weights(m.shape[1], gh), _area_weights(m.shape[2], gw)
    return np.einsum("ph,bhw,qw->bpq", rows, m.astype(np.float64), cols)


def object_tokens(masks, grid: Sequence[int]) -> np.ndarray:
    """``(B, gh, gw)`` bool: tokens whose patch is more than half object (:data:`OBJECT_FRACTION`)."""
    return object_fractions(masks, grid) > OBJECT_FRACTION


# ---------------------------------------------------------------------- scores
def _check(maps, tokens) -> tuple[np.ndarray, np.ndarray]:
    m, t = _numpy(maps).astype(np.float64), _numpy(tokens)
    if m.ndim != 4 or t.dtype != np.bool_ or t.shape != (m.shape[0],) + m.shape[2:]:
        raise ValueError(f"maps must be (B, M, gh, gw) and object tokens boolean (B, gh, gw); got {m.shape} and "
                         f"{t.dtype} {t.shape}")
    if not np.isfinite(m).all():
        raise ValueError("maps contain NaN or infinite values")
    return m, t


def aurocs(maps, tokens) -> np.ndarray:
    """``(M,)``: each map's AUROC of token scores against object tokens, pooled over images (module
    docstring). Needs both object and background tokens."""
    m, t = _check(maps, tokens)
    y = t.reshape(-1)
    pos = int(y.sum())
    neg = y.size - pos
    if pos == 0 or neg == 0:
        raise ValueError(f"AUROC needs object and background tokens; got {pos} object and {neg} background tokens")
    from scipy.stats import rankdata

    scores = m.transpose(1, 0, 2, 3).reshape(m.shape[1], -1)  # (M, B·gh·gw)
    ranks = rankdata(scores, axis=1)  # average ranks for ties, as roc_auc_score counts a tie as one half
    return (ranks[:, y].sum(axis=1) - pos * (pos + 1) / 2) / (pos * neg)


def ious(maps, tokens) -> np.ndarray:
    """``(M,)``: per map, the mean over images with an object of the IoU between the object tokens and the
    map's top-``k`` tokens, ``k`` = the image's number of object tokens (module docstring)."""
    m, t = _check(maps, tokens)
    has = t.reshape(len(t), -1).any(axis=1)
    if not has.any():
        raise ValueError("IoU needs at least one image with object tokens")
    m, t = m[has].reshape(int(has.sum()), m.shape[1], -1), t[has].reshape(int(has.sum()), -1)
    k = t.sum(axis=1)  # (B,)
    order = np.argsort(-m, axis=-1, kind="stable")  # (B, M, T): tokens by falling score
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(order.shape[-1])[None, None, :], axis=-1)
    predicted = rank < k[:, None, None]
    inter = (predicted & t[:, None, :]).sum(axis=-1)
    return (inter / (2 * k[:, None] - inter)).mean(axis=0)


def signed_scores(maps, tokens, metric: str = "auroc") -> np.ndarray:
    """``(2, M)``: row 0 scores ``+map`` (high on the object), row 1 ``−map`` (high on the background)."""
    if metric == "auroc":
        up = aurocs(maps, tokens)
        return np.stack([up, 1.0 - up])
    if metric == "iou":
        m = _numpy(maps)
        return np.stack([ious(m, tokens), ious(-m, tokens)])
    raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


@dataclass(frozen=True)
class Selection:
    """The (cluster, sign) chosen on validation images and its score on test images."""

    metric: str
    cluster: int
    sign: int  # +1: the map is high on the object; -1: high on the background
    val: float  # its score on the validation images, where it was chosen
    test: float  # its score on the test images: the number to report


def select_and_score(val_maps, val_tokens, test_maps, test_tokens, metric: str = "auroc") -> Selection:
    """Choose the best (cluster, sign) by ``metric`` on the validation images, score it on the test images.
    Ties go to the lower cluster, then to the positive sign. The test arguments are read only after the
    choice is made."""
    val = signed_scores(val_maps, val_tokens, metric)
    row, cluster = np.unravel_index(int(np.argmax(val)), val.shape)
    sign = 1 if row == 0 else -1
    test_map = sign * _numpy(test_maps)[:, cluster:cluster + 1].astype(np.float64)
    test = signed_scores(test_map, test_tokens, metric)[0, 0]
    return Selection(metric, int(cluster), sign, float(val[row, cluster]), float(test))


# ---------------------------------------------------------------------- maps from tokens
def concept_maps(patches, c) -> np.ndarray:
    """``(B, M, gh, gw)`` maps ``Y C`` from patch tokens ``(B, gh, gw, d)``
    (:func:`gift_cl.interpret.patch_grid`) and a concept matrix ``(d, M)``."""
    y, c = _numpy(patches).astype(np.float64), _numpy(c).astype(np.float64)
    if y.ndim != 4 or c.ndim != 2 or y.shape[-1] != c.shape[0]:
        raise ValueError(f"patch tokens (B, gh, gw, d) and a concept matrix (d, M) needed; got {y.shape}, {c.shape}")
    return np.einsum("bhwd,dm->bmhw", y, c)


def random_concepts(d: int, m: int) -> Callable[[int], np.ndarray]:
    """A seeded draw of ``(d, M)`` standard-normal concept matrices, for :func:`concept_null`: concepts
    with no relation to the object, of the shape of the real ones. (A map is linear in ``C``, so scaling
    ``C`` changes no score: the distribution's scale does not matter.)"""

    def draw(seed: int) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((d, m))

    return draw


def kmeans_maps(fit_patches, patches, k: int, seed: int = 0) -> np.ndarray:
    """``(B, k, gh, gw)``: k-means (``k`` clusters, seed ``seed``) fitted on the tokens of ``fit_patches``
    ``(B', gh, gw, d)``; each centroid's map over ``patches`` is minus the squared distance of every token
    to that centroid (high = close), so it can be ranked like a concept map."""
    from sklearn.cluster import KMeans

    fit = _numpy(fit_patches).astype(np.float64)
    y = _numpy(patches).astype(np.float64)
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(fit.reshape(-1, fit.shape[-1]))
    centres = km.cluster_centers_  # (k, d)
    # |y - c|^2 expanded: never materialises (B, gh, gw, k, d)
    dist = (y**2).sum(-1)[..., None] - 2.0 * y @ centres.T + (centres**2).sum(-1)  # (B, gh, gw, k)
    return -dist.transpose(0, 3, 1, 2)


# ---------------------------------------------------------------------- nulls and references
def null_distribution(draw_maps: Callable[[int], tuple[Maps, Maps]], val_tokens, test_tokens,
                      metric: str = "auroc", n_draws: int = MIN_NULL_DRAWS, first_seed: int = 0) -> np.ndarray:
    """``(n_draws,)``: the test score of the val-selected cluster (:func:`select_and_score`) for maps drawn
    by ``draw_maps(seed) -> (val_maps, test_maps)``, seeds ``first_seed, first_seed + 1, ...``."""
    if n_draws < MIN_NULL_DRAWS:
        raise ValueError(f"a null needs at least {MIN_NULL_DRAWS} draws, got {n_draws}")
    out = np.empty(n_draws)
    for i in range(n_draws):
        val_maps, test_maps = draw_maps(first_seed + i)
        out[i] = select_and_score(val_maps, val_tokens, test_maps, test_tokens, metric).test
    return out


def concept_null(draw_concepts: Callable[[int], object], val_patches, val_tokens, test_patches, test_tokens,
                 metric: str = "auroc", n_draws: int = MIN_NULL_DRAWS, first_seed: int = 0) -> np.ndarray:
    """The null of concept matrices: the patch tokens ``Y`` stay fixed, ``C = draw_concepts(seed)``
    (``(d, M)``, e.g. :func:`random_concepts` or an untrained head's ``concept_matrix``) varies; returns
    the selected-on-val, scored-on-test statistic per draw (:func:`null_distribution`)."""

    def draw_maps(seed: int):
        c = draw_concepts(seed)
        return concept_maps(val_patches, c), concept_maps(test_patches, c)

    return null_distribution(draw_maps, val_tokens, test_tokens, metric, n_draws, first_seed)


def kmeans_reference(val_patches, val_tokens, test_patches, test_tokens, k: int, metric: str = "auroc",
                     seeds: Sequence[int] = range(MIN_NULL_DRAWS)) -> np.ndarray:
    """Per k-means seed, the selected-on-val, scored-on-test statistic of :func:`kmeans_maps` fitted on
    the validation tokens (no test token shapes the centroids)."""
    return np.array([
        select_and_score(kmeans_maps(val_patches, val_patches, k, s), val_tokens,
                         kmeans_maps(val_patches, test_patches, k, s), test_tokens, metric).test
        for s in seeds
    ])


def attention_reference(val_attention, val_tokens, test_attention, test_tokens, metric: str = "auroc") -> Selection:
    """The [CLS] attention map ``(B, gh, gw)`` (:func:`gift_cl.interpret.cls_attention`) as a single
    cluster: only its sign is chosen on validation images."""
    return select_and_score(_numpy(val_attention)[:, None], val_tokens, _numpy(test_attention)[:, None],
                            test_tokens, metric)


def summarize(test_scores: Sequence[float], null: Optional[Sequence[float]] = None, level: float = 0.95) -> dict:
    """One table row: the mean test score over seeds with its Student-t ``level`` confidence interval
    (``ci_low``/``ci_high`` None with one seed), and the null's 2.5 %, 50 % and 97.5 % quantiles and mean (pass all
    null draws, pooled over seeds, as one array)."""
    from .stats import t_interval

    scores = np.asarray(test_scores, dtype=float)
    if scores.ndim != 1 or not len(scores):
        raise ValueError("summarize needs a non-empty 1-D sequence of test scores, one per seed")
    mean, half = t_interval(scores, level)
    low, high = (None, None) if half is None else (mean - half, mean + half)
    row = {"mean": mean, "ci_low": low, "ci_high": high, "n_seeds": len(scores)}
    if null is not None:
        draws = np.asarray(null, dtype=float).reshape(-1)
        if len(draws) < MIN_NULL_DRAWS:
            raise ValueError(f"a null needs at least {MIN_NULL_DRAWS} draws, got {len(draws)}")
        q = np.quantile(draws, [0.025, 0.5, 0.975])
        row |= {"null_q025": float(q[0]), "null_median": float(q[1]), "null_q975": float(q[2]),
                "null_mean": float(draws.mean()), "n_null": len(draws)}
    return row
