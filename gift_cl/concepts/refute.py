"""Concept reuse as a claim that can fail: which concepts a task uses, nulls with a distribution, a Mantel
test between task relations, a designed part-vocabulary experiment, and a causal check by ablation.

Each function states the rule it applies and its default; everything but the ablation takes plain tensors and
arrays, so it runs without a run directory.

- :func:`used_concepts`, :func:`match_used`, :func:`used_matches`, :func:`used_reuse_matrix`,
  :func:`mean_used_reuse`, :func:`pair_reuse`: reuse restricted to the concepts a task uses;
- :func:`untrained_vectors`, :func:`untrained_null`: any statistic against ≥ 20 untrained-head draws;
- :func:`mantel_test`: correlation of two task × task matrices, tasks permuted;
- :func:`concept_parts`, :func:`part_agreement`, :func:`smallest_reachable_p`, :func:`part_vocabulary_test`:
  do matched concepts find the same object part where the tasks share a part vocabulary?
- :func:`ablate_cluster`, :func:`counterparts`, :func:`ablation_effect`: remove one PaCa cluster from one task's
  generator and measure what the task loses.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import Callable, Collection, Iterator, Mapping, Optional, Sequence, TypeVar, Union, cast

import numpy as np
import torch
from torch import nn

from ..gift import GeneratorBlock, GeneratorHead, GiftGenerator, ParameterToClusterAttention, l2_normalize
from ..interpret.maps import eval_mode
from ..tuner import GiftModel
from .stats import Match, Vectors, hard_assignments, match_clusters, off_diagonal_mean

Pair = tuple[str, str]
Indices = Union[Sequence[int], np.ndarray]  # concept indices
T = TypeVar("T")

MIN_NULL_DRAWS = 20  # fewer draws cannot place a 95 % interval, nor give p < 0.05


# ---------------------------------------------------------------------- used concepts and their matching
def used_concepts(vectors: torch.Tensor, min_share: Optional[float] = None) -> np.ndarray:
    """Indices (ascending) of the concepts a task uses.

    Rule: every token (a column of the ``(M, n)`` matrix) votes for its argmax concept
    (:func:`~gift_cl.concepts.stats.hard_assignments`); a concept is *used* when it wins at least ``min_share`` of
    the tokens. Default ``min_share = 1 / (2M)``: half the share every concept would win if the tokens were
    spread evenly. The tokens are the ``d_out`` parameter tokens for concept vectors (assignment columns), or
    image tokens for cluster maps flattened to ``(M, B·gh·gw)``."""
    v = torch.as_tensor(vectors)
    m = v.shape[0]
    share = np.bincount(hard_assignments(v), minlength=m) / v.shape[-1]
    threshold = 1.0 / (2 * m) if min_share is None else min_share
    return np.flatnonzero(share >= threshold)


def match_used(a: torch.Tensor, b: torch.Tensor, used_a: Optional[Indices] = None,
               used_b: Optional[Indices] = None, center: bool = True) -> Match:
    """Hungarian matching (:func:`~gift_cl.concepts.stats.match_clusters`) of the concepts BOTH tasks use;
    ``rows``/``cols`` are indices into the full ``a``/``b``. ``used_*`` default to :func:`used_concepts`.
    An empty match when either task uses no concept."""
    ua = used_concepts(a) if used_a is None else np.asarray(used_a, dtype=int)
    ub = used_concepts(b) if used_b is None else np.asarray(used_b, dtype=int)
    if len(ua) == 0 or len(ub) == 0:
        empty = np.zeros(0, dtype=int)
        return Match(empty, empty.copy(), np.zeros(0))
    m = match_clusters(torch.as_tensor(a)[ua], torch.as_tensor(b)[ub], center)
    return Match(ua[m.rows], ub[m.cols], m.similarity)


def used_matches(vectors: Vectors, min_share: Optional[float] = None, center: bool = True) -> dict[Pair, Match]:
    """:func:`match_used` for every task pair ``(a, b)``, ``a`` before ``b`` in the order of ``vectors``."""
    names = list(vectors)
    used = {n: used_concepts(vectors[n], min_share) for n in names}
    return {(a, b): match_used(vectors[a], vectors[b], used[a], used[b], center)
            for i, a in enumerate(names) for b in names[i + 1:]}


def used_reuse_matrix(vectors: Vectors, min_share: Optional[float] = None,
                      center: bool = True) -> tuple[list[str], np.ndarray]:
    """Task × task mean cosine of the matched USED concepts (:func:`used_matches`); ``NaN`` where a task uses
    none, 1 on the diagonal."""
    names = list(vectors)
    r = np.eye(len(names))
    for (a, b), m in used_matches(vectors, min_share, center).items():
        i, j = names.index(a), names.index(b)
        r[i, j] = r[j, i] = m.mean if len(m.rows) else np.nan
    return names, r


def mean_used_reuse(vectors: Vectors) -> float:
    """The mean over task pairs of :func:`used_reuse_matrix` (defaults): a statistic for :func:`untrained_null`."""
    return off_diagonal_mean(used_reuse_matrix(vectors)[1])


def pair_reuse(a: str, b: str, min_share: Optional[float] = None, center: bool = True) -> Callable[[Vectors], float]:
    """The statistic "mean matched cosine of the used concepts of tasks ``a`` and ``b``" (``NaN`` if one uses none)."""

    def statistic(vectors: Vectors) -> float:
        m = match_used(vectors[a], vectors[b], used_concepts(vectors[a], min_share),
                       used_concepts(vectors[b], min_share), center)
        return m.mean if len(m.rows) else float("nan")

    return statistic


# ---------------------------------------------------------------------- the untrained-head null, with its distribution
@dataclass(frozen=True)
class NullTest:
    """An observed statistic against its null draws.

    ``p_value = (1 + #{null ≥ observed}) / (1 + n)`` (one-sided, ties count against the claim); ``min_p`` its
    smallest possible value ``1 / (1 + n)``. ``null_low``/``null_high``: the central ``level`` percentile interval
    of the draws. ``excess = observed − mean(null)`` with ``excess_low``/``excess_high``, its bootstrap
    percentile interval (draws resampled with replacement: how precisely ``n`` draws pin the null's mean)."""

    observed: float
    null: np.ndarray
    p_value: float
    min_p: float
    null_low: float
    null_high: float
    excess: float
    excess_low: float
    excess_high: float
    level: float


def null_test(observed: float, null: Sequence[float], level: float = 0.95, n_boot: int = 2000,
              seed: int = 0) -> NullTest:
    """:class:`NullTest` of a value against given null draws (at least :data:`MIN_NULL_DRAWS`, all finite)."""
    draws = np.asarray(null, dtype=float).reshape(-1)
    if len(draws) < MIN_NULL_DRAWS:
        raise ValueError(f"a null needs at least {MIN_NULL_DRAWS} draws, got {len(draws)}")
    if not (np.isfinite(observed) and np.isfinite(draws).all()):
        raise ValueError("the observed statistic or a null draw is not finite (a task that uses no concept?)")
    tail = (1.0 - level) / 2
    low, high = np.quantile(draws, [tail, 1.0 - tail])
    means = np.random.default_rng(seed).choice(draws, size=(n_boot, len(draws))).mean(axis=1)
    boot_low, boot_high = np.quantile(observed - means, [tail, 1.0 - tail])
    exceed = int(np.sum(draws >= observed - 1e-12))  # float noise must not turn a tie into a win
    return NullTest(float(observed), draws, (1 + exceed) / (1 + len(draws)), 1 / (1 + len(draws)), float(low),
                    float(high), float(observed - draws.mean()), float(boot_low), float(boot_high), level)


def untrained_null(statistic: Callable[[T], float], data: T, draw: Callable[[int], T],
                   n_draws: int = MIN_NULL_DRAWS, first_seed: int = 0, level: float = 0.95, n_boot: int = 2000,
                   seed: int = 0) -> NullTest:
    """``statistic(data)`` against ``statistic(draw(s))`` for seeds ``first_seed … first_seed + n_draws − 1``.

    Generic over the statistic and what it reads; for concept reuse ``data`` is ``{task: (M, d)}`` and ``draw``
    :func:`untrained_vectors`, e.g.::

        draws = {t.name: untrained_concepts(t.gift, layer, t.head) for t in run}
        test = untrained_null(mean_used_reuse, vectors[layer], untrained_vectors(draws))"""
    null = [statistic(draw(first_seed + i)) for i in range(n_draws)]
    return null_test(statistic(data), null, level, n_boot, seed)


def untrained_vectors(draws: Mapping[str, Callable[[int], torch.Tensor]]) -> Callable[[int], dict[str, torch.Tensor]]:
    """Per-task draws of an untrained head's concept MATRIX ``C`` (``d × M``, what
    :func:`gift_cl.interpret.untrained_concepts` returns) as one draw of ``{task: (M, d)}`` concept vectors.

    Draw ``s`` gives task ``i`` (order of ``draws``) the seed ``s · n_tasks + i``: every task of every draw has a
    head of its own. One seed for all tasks would give identical heads wherever the trunk is shared, and reuse 1."""
    names = list(draws)

    def draw(seed: int) -> dict[str, torch.Tensor]:
        return {n: draws[n](seed * len(names) + i).T.contiguous() for i, n in enumerate(names)}

    return draw


# ---------------------------------------------------------------------- Mantel test
def _permutations(n: int, exact: bool, n_perm: int, seed: int) -> tuple[np.ndarray, bool]:
    """Every permutation of ``n`` tasks (``exact``, identity first), else ``n_perm`` random ones: ``(K, n)``."""
    if exact:
        return np.array(list(itertools.permutations(range(n)))), True
    rng = np.random.default_rng(seed)
    return rng.permuted(np.tile(np.arange(n), (n_perm, 1)), axis=1), False


@dataclass(frozen=True)
class MantelResult:
    r: float  # correlation of the upper triangles
    p: float  # permutation p-value
    n_perm: int  # permutations the p-value counts (every one of the n! when exact)
    exact: bool


def _checked_matrix(m: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(m, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 3:
        raise ValueError(f"{name} must be a square task × task matrix of at least 3 tasks, got shape {m.shape}")
    iu = np.triu_indices(len(m), k=1)
    if not np.allclose(m, m.T, equal_nan=True) or not np.isfinite(m[iu]).all():
        raise ValueError(f"{name} must be symmetric with finite off-diagonal entries")
    return m


def _rank_matrix(m: np.ndarray) -> np.ndarray:
    """The symmetric matrix of the average ranks of the upper-triangle entries. Permuting tasks permutes the
    entries among themselves, so ranking once is ranking every permutation."""
    from scipy.stats import rankdata

    iu = np.triu_indices(len(m), k=1)
    out = np.zeros_like(m)
    out[iu] = rankdata(m[iu])
    return out + out.T


def _permuted_correlations(a: np.ndarray, b: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """Pearson r of ``a``'s upper triangle with that of ``b[p][:, p]``, for every row ``p`` of ``perms``."""
    i, j = np.triu_indices(len(a), k=1)
    x = a[i, j] - a[i, j].mean()
    y = b[perms[:, i], perms[:, j]]
    y = y - y.mean(axis=1, keepdims=True)
    return (y @ x) / np.sqrt((y**2).sum(axis=1) * (x**2).sum())


def mantel_test(a, b, n_perm: int = 9999, seed: int = 0, method: str = "pearson",
                alternative: str = "greater") -> MantelResult:
    """Mantel test: ``r`` is the ``method`` (``"pearson"`` or ``"spearman"``) correlation of the upper triangles
    (diagonal excluded) of two symmetric task × task matrices; the p-value permutes the rows and columns of
    ``b`` jointly (a relabelling of its tasks).

    Exact when ``n_tasks! ≤ n_perm``: every permutation once, identity included, ``p = #{r_π ≥ r} / n!``
    (a multiple of ``1/n!``; 4 tasks: of 1/24). Otherwise ``n_perm`` random permutations (seed ``seed``),
    ``p = (1 + #{r_π ≥ r}) / (1 + n_perm)``. ``alternative="greater"`` (default, one-sided: the matrices agree)
    or ``"two-sided"`` (``|r_π| ≥ |r|``)."""
    if method not in ("pearson", "spearman"):
        raise ValueError(f"unknown method {method!r}; expected 'pearson' or 'spearman'")
    if alternative not in ("greater", "two-sided"):
        raise ValueError(f"unknown alternative {alternative!r}; expected 'greater' or 'two-sided'")
    a, b = _checked_matrix(a, "a"), _checked_matrix(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"the matrices cover different task sets: {a.shape} vs {b.shape}")
    if method == "spearman":
        a, b = _rank_matrix(a), _rank_matrix(b)
    n = len(a)
    if np.ptp(a[np.triu_indices(n, k=1)]) == 0 or np.ptp(b[np.triu_indices(n, k=1)]) == 0:
        raise ValueError("a matrix is constant over the task pairs: its correlation is undefined")
    r = float(_permuted_correlations(a, b, np.arange(n)[None])[0])
    perms, exact = _permutations(n, math.factorial(n) <= n_perm, n_perm, seed)
    null = _permuted_correlations(a, b, perms)
    stat, ref = (null, r) if alternative == "greater" else (np.abs(null), abs(r))
    hits = int(np.sum(stat >= ref - 1e-12))
    p = hits / len(perms) if exact else (1 + hits) / (1 + len(perms))
    return MantelResult(r, float(p), int(len(perms)), exact)


# ---------------------------------------------------------------------- the part-vocabulary experiment
def concept_parts(maps, label_masks, part_names: Sequence[str], metric: str = "auroc",
                  concepts: Optional[Indices] = None, min_score: Optional[float] = None) -> dict[int, str]:
    """``{concept: part}``: the object part each concept's token map aligns with best.

    ``maps``: ``(B, M, gh, gw)`` concept maps on the token grid (:func:`gift_cl.interpret.grid_maps`);
    ``label_masks``: ``(B, H, W)`` label masks from ``generate(..., masks=True)``; ``part_names``: that domain's
    ``MASK_LABELS`` (values ≥ ``OBJECT`` are parts). Per part, its tokens are those more than half covered by the
    part (:func:`gift_cl.maskscore.object_tokens`), and every map is scored against them with
    :func:`gift_cl.maskscore.signed_scores` (``metric``: ``"auroc"`` or ``"iou"``), the better of its two signs
    kept, as maskscore does. A part with no token, or only part tokens, on the grid is left out. Each concept
    (``concepts``, default all) gets the part with the highest score; with ``min_score`` a concept whose best
    score is lower gets none."""
    from ..data.procedural import OBJECT
    from ..maskscore import object_tokens, signed_scores

    m = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else np.asarray(maps)
    labels = np.asarray(label_masks)
    grid = m.shape[-2:]
    parts, scores = [], []
    for value in range(OBJECT, len(part_names)):
        tokens = object_tokens(labels == value, grid)
        if tokens.all() or not tokens.any():
            continue
        parts.append(part_names[value])
        scores.append(signed_scores(m, tokens, metric).max(axis=0))
    if not parts:
        raise ValueError("no object part covers a token of the grid: the grid is too coarse for these masks")
    table = np.stack(scores)  # (parts, M)
    out = {}
    for c in range(m.shape[1]) if concepts is None else concepts:
        best = int(np.argmax(table[:, c]))
        if min_score is None or table[best, c] >= min_score:
            out[int(c)] = parts[best]
    return out


def part_agreement(parts_a: Mapping[int, str], parts_b: Mapping[int, str], match: Match) -> float:
    """The fraction of matched concept pairs ``(rows[i], cols[i])`` that align with the same part, over the pairs
    where both concepts have a part; ``NaN`` if none has."""
    same = [parts_a[r] == parts_b[c] for r, c in zip(match.rows.tolist(), match.cols.tolist())
            if r in parts_a and c in parts_b]
    return float(np.mean(same)) if same else float("nan")


def _oriented(matches: Mapping[Pair, Match], a: str, b: str) -> Match:
    if (a, b) in matches:
        return matches[a, b]
    if (b, a) in matches:
        m = matches[b, a]
        return Match(m.cols, m.rows, m.similarity)
    raise KeyError(f"no match between tasks {a!r} and {b!r}")


def _design(sharing: Collection[Pair], not_sharing: Collection[Pair]) -> tuple[list[str], np.ndarray]:
    """The tasks (order of first appearance) and their label matrix: 1 sharing, 0 not, NaN undeclared."""
    both = {frozenset(p) for p in sharing} & {frozenset(p) for p in not_sharing}
    if both:
        raise ValueError(f"pairs declared both sharing and not sharing: {[tuple(p) for p in both]}")
    if any(a == b for a, b in [*sharing, *not_sharing]):
        raise ValueError("a task paired with itself")
    tasks = list(dict.fromkeys(t for p in [*sharing, *not_sharing] for t in p))
    labels = np.full((len(tasks), len(tasks)), np.nan)
    for value, pairs in ((1.0, sharing), (0.0, not_sharing)):
        for a, b in pairs:
            i, j = tasks.index(a), tasks.index(b)
            labels[i, j] = labels[j, i] = value
    return tasks, labels


def _p_value(hits: int, n: int, exact: bool) -> float:
    return hits / n if exact else (1 + hits) / (1 + n)


def _unchanged(labels: np.ndarray, perms: np.ndarray) -> np.ndarray:
    """Which relabellings leave the label of every pair where it was (NaN = NaN)."""
    i, j = np.triu_indices(len(labels), k=1)
    moved, kept = labels[perms[:, i], perms[:, j]], labels[i, j]
    return ((moved == kept) | (np.isnan(moved) & np.isnan(kept))).all(axis=1)


def _min_p(labels: np.ndarray, perms: np.ndarray, exact: bool) -> float:
    """The relabellings that map every declared label onto itself tie with the observed statistic whatever the
    data, so no p-value falls below their share (the observed one counted once, as the p-value does)."""
    ties = int(_unchanged(labels, perms).sum())
    return _p_value(ties, len(perms), exact)


def smallest_reachable_p(sharing: Collection[Pair], not_sharing: Collection[Pair], max_exact: int = 8,
                         n_perm: int = 9999, seed: int = 0) -> float:
    """The smallest p-value :func:`part_vocabulary_test` can give for this design, whatever the data:
    ``#{relabellings fixing every declared label} / n!`` (exact), ``(1 + #{such among the draws}) / (1 + n_perm)``
    (Monte Carlo, the same draws as the test with the same ``seed``). See :func:`part_vocabulary_test` for the
    counts designs need. Check a design with it before running the experiment."""
    tasks, labels = _design(sharing, not_sharing)
    perms, exact = _permutations(len(tasks), len(tasks) <= max_exact, n_perm, seed)
    return _min_p(labels, perms, exact)


def _group_difference(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per row of pair ``labels`` ``(K, pairs)``: mean value of the sharing pairs − that of the non-sharing
    pairs, over pairs whose value is defined; NaN where a group has none."""
    defined = np.isfinite(values)
    v = np.where(defined, values, 0.0)

    def mean(mask: np.ndarray) -> np.ndarray:
        mask = mask & defined
        count = mask.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, (mask * v).sum(axis=1) / count, np.nan)

    return mean(labels == 1.0) - mean(labels == 0.0)


@dataclass(frozen=True)
class PartTest:
    """The part-vocabulary test: ``sharing``/``other`` are the mean :func:`part_agreement` over the declared
    sharing and non-sharing pairs, ``difference`` their difference, ``p_value`` its one-sided permutation
    p-value, ``min_p`` the smallest the design allows (:func:`smallest_reachable_p`)."""

    tasks: list[str]
    agreement: dict[Pair, float]
    sharing: float
    other: float
    difference: float
    p_value: float
    min_p: float
    n_relabellings: int
    exact: bool


def part_vocabulary_test(parts: Mapping[str, Mapping[int, str]], matches: Mapping[Pair, Match],
                         sharing: Collection[Pair], not_sharing: Collection[Pair], max_exact: int = 8,
                         n_perm: int = 9999, seed: int = 0) -> PartTest:
    """Prediction: matched concepts align with the same object part MORE often in task pairs that share a part
    vocabulary (``sharing``, e.g. two aircraft tasks) than in pairs that do not (``not_sharing``).

    ``parts``: ``{task: {concept: part}}`` (:func:`concept_parts` of each task's used concepts); ``matches``:
    ``{(a, b): Match}`` (:func:`used_matches`), every declared pair present in either order. The statistic is
    ``mean agreement(sharing) − mean agreement(not sharing)`` over the pairs where agreement is defined.

    Part names must be comparable across ALL tasks (one common vocabulary the tasks' parts are mapped to, e.g.
    by a declared correspondence): names that only one vocabulary has cannot agree, so non-sharing pairs would
    score 0 by construction and the test would only ask whether sharing pairs agree at all.

    Permutation scheme: the TASKS are relabelled, not the pairs. The agreement of every pair stays with the
    pair, and the pair ``(a, b)`` takes the label declared for ``(π a, π b)`` (undeclared pairs drop out). Pairs
    that share a task are not independent, so shuffling pair labels freely would be anti-conservative; under
    relabelling the dependence is kept. Exact over all ``n!`` relabellings when ``n_tasks ≤ max_exact``, else
    ``n_perm`` random ones; ``p`` counts ties against the claim.

    How many pairs p < 0.05 needs. Relabellings that fix the declared labels tie with the observed one, so the
    smallest p is ``#{fixing relabellings} / n!`` (``min_p``). With every pair of ``n`` tasks declared and tasks
    in vocabulary groups of sizes ``g``, that is ``Π g! · Π_s c_s! / n!`` (``c_s`` groups of size ``s``):
    4 tasks (6 pairs) reach at best 1/6, 5 tasks (10 pairs) 1/15; p < 0.05 needs 6 tasks (15 pairs), e.g.
    groups {2, 2, 1, 1} (2 sharing pairs: 1/45) or {3, 2, 1} (4 sharing pairs: 1/60), while {2, 2, 2} gives
    1/15 and {3, 1, 1, 1} exactly 0.05. 8 tasks in 4 sharing pairs (28 pairs) reach 1/105."""
    tasks, labels = _design(sharing, not_sharing)
    agreement = {(a, b): part_agreement(parts.get(a, {}), parts.get(b, {}), _oriented(matches, a, b))
                 for a, b in [*sharing, *not_sharing]}
    values = np.full((len(tasks), len(tasks)), np.nan)
    for (a, b), value in agreement.items():
        values[tasks.index(a), tasks.index(b)] = values[tasks.index(b), tasks.index(a)] = value
    i, j = np.triu_indices(len(tasks), k=1)
    pair_values, pair_labels = values[i, j], labels[i, j]
    sharing_values = pair_values[(pair_labels == 1.0) & np.isfinite(pair_values)]
    other_values = pair_values[(pair_labels == 0.0) & np.isfinite(pair_values)]
    if not (len(sharing_values) and len(other_values)):
        raise ValueError("no sharing or no non-sharing pair has a defined part agreement")
    observed = float(sharing_values.mean() - other_values.mean())
    perms, exact = _permutations(len(tasks), len(tasks) <= max_exact, n_perm, seed)
    null = _group_difference(pair_values, labels[perms[:, i], perms[:, j]])
    hits = int(np.sum(null >= observed - 1e-12))  # NaN (a group left without a defined pair) is never ≥
    return PartTest(tasks, agreement, float(sharing_values.mean()), float(other_values.mean()), observed,
                    _p_value(hits, len(perms), exact), _min_p(labels, perms, exact), int(len(perms)), exact)


# ---------------------------------------------------------------------- causal check: ablating one cluster
ABLATION_MODES = ("share", "drop")


def _locate(gift: GiftModel, layer: str) -> tuple[GiftGenerator, int]:
    """The generator of ``layer`` and the layer's index in its token batch."""
    for key, names in gift.groups.items():
        if layer in names:
            return cast(GiftGenerator, gift.generators[key]), names.index(layer)
    raise KeyError(f"{layer!r} is not a GIFT target layer; targets: {list(gift.layers())}")


def _heads_last(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``(tokens, heads·dh)`` → ``(heads, tokens, dh)``."""
    return t.view(t.shape[0], heads, -1).transpose(0, 1)


def _heads_first(t: torch.Tensor) -> torch.Tensor:
    """``(heads, tokens, dh)`` → ``(tokens, heads·dh)``, the order PaCa concatenates its heads in."""
    return t.transpose(0, 1).reshape(t.shape[1], -1)


def _logits_and_values(mixer: ParameterToClusterAttention, x: torch.Tensor,
                       c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """PaCa's attention logits ``(heads, N, M)`` and cluster values ``(heads, M, dh)`` for one layer's normed tokens
    ``x`` ``(N, d')`` and its assignments ``c`` ``(N, M)``, as :class:`~gift_cl.gift.ParameterToClusterAttention`
    computes them (its one-head path folds ``W_q`` into the keys: the same function)."""
    z = l2_normalize(c.transpose(0, 1) @ x / x.shape[0])
    heads = mixer.num_heads
    q = _heads_last(mixer.q(x), heads)
    k = _heads_last(mixer.k(z) * mixer.scale, heads)
    return q @ k.transpose(-2, -1), _heads_last(mixer.v(z), heads)


def _without_cluster(mixer: ParameterToClusterAttention, x: torch.Tensor, c: torch.Tensor, out: torch.Tensor,
                     cluster: int, mode: str) -> torch.Tensor:
    """One layer's PaCa output ``out`` ``(N, d')`` without cluster ``cluster`` (see :func:`ablate_cluster`)."""
    logits, v = _logits_and_values(mixer, x, c)
    if mode == "share":
        term = logits.softmax(-1)[..., cluster, None] * v[:, cluster, None, :]  # (heads, N, dh)
        return out - _heads_first(term) @ mixer.proj.weight.T  # W_o is linear; its bias is no cluster's
    logits[..., cluster] = -torch.inf
    return mixer.proj(_heads_first(logits.softmax(-1) @ v))


@contextlib.contextmanager
def ablate_cluster(gift: GiftModel, layer: str, cluster: int, head: str = "0", block: int = 0,
                   mode: str = "share") -> Iterator[GiftModel]:
    """Inside the block, generator head ``head`` (one task) generates ``layer``'s ΔW without PaCa cluster
    ``cluster`` of block ``block`` (default 0, the block whose assignments :func:`gift_cl.interpret.concept_vectors`
    reads); on exit the model is exactly as before (hook removed, cached residuals dropped).

    ΔW does NOT decompose additively over clusters: ``ΔW = h ψᵀ`` with ``h`` the trunk output, and every block
    after the PaCa attention (its MLP, later blocks) is non-linear in it. The one place that is a sum over
    clusters is the PaCa output of a block, per token ``i``::

        out_i = b_o + Σ_m softmax_m(q_i · k_m) · v_m W_oᵀ      (k_m, v_m from the cluster token Z_m = n(C_mᵀ x / N))

    so the intervention is made there, for ``layer``'s tokens only, and the generator continues from it:

    - ``mode="share"`` (default): cluster ``m``'s term ``softmax_m(q_i · k_m) · v_m W_oᵀ`` is subtracted from every
      token's output; the attention weights of the other clusters stay as they were (not renormalised);
    - ``mode="drop"``: cluster ``m`` is taken out of the softmax (its logit −∞), so the tokens attend to the other
      ``M − 1`` clusters, renormalised: the block as if it had been built without that cluster.

    Zeroing the assignment column ``C[:, m]`` would not remove the cluster: ``Z_m = n(0) = 0`` still yields a
    key ``b_k`` and a value ``b_v`` that the tokens attend to. The returned assignments (``return_assignments``)
    are left unchanged. Other layers of the group, other blocks' clusters and every other head are untouched:
    the hook acts only when the block's attention runs with this head's cluster assignment, on this layer's slice
    of the token batch, so other tasks' residuals are bit-identical (per-task heads)."""
    if mode not in ABLATION_MODES:
        raise ValueError(f"unknown ablation mode {mode!r}; expected one of {ABLATION_MODES}")
    gen, index = _locate(gift, layer)
    config = gen.config
    if config.block != "paca" or config.depth == 0:
        raise ValueError(f"the {config.block!r} generator with depth {config.depth} has no PaCa clusters to ablate")
    if not -config.depth <= block < config.depth:
        raise IndexError(f"block {block} out of range for depth {config.depth}")
    if not 0 <= cluster < config.num_clusters or (mode == "drop" and config.num_clusters < 2):
        raise IndexError(f"cluster {cluster} cannot be ablated from {config.num_clusters} clusters (mode {mode!r})")
    target = cast(GeneratorHead, gen.heads[head]).clusters[block]
    mixer = cast(ParameterToClusterAttention, cast(GeneratorBlock, gen.trunk.blocks[block]).mixer)

    def hook(module: nn.Module, args: tuple, output: tuple[torch.Tensor, torch.Tensor]):
        x, assign = args
        if assign is not target:  # another task's head: leave its output alone
            return None
        out, c = output
        out = out.clone()
        out[index] = _without_cluster(mixer, x[index], c[index], out[index], cluster, mode)
        return out, c

    handle = mixer.register_forward_hook(hook)
    gift.forget_residuals(head)  # a hook leaves the parameters' versions unchanged
    try:
        yield gift
    finally:
        handle.remove()
        gift.forget_residuals(head)  # a hook leaves the parameters' versions unchanged


def counterparts(vectors: Vectors, task: str, cluster: int, min_share: Optional[float] = None,
                 center: bool = True) -> dict[str, tuple[int, float]]:
    """``{other task: (its concept, cosine)}``: the used concept of every other task that :func:`match_used`
    matches to concept ``cluster`` of ``task``. Tasks where it is not matched (it uses fewer concepts) are left
    out. Which of them *share* the concept is the caller's threshold on the cosine."""
    used = {n: used_concepts(v, min_share) for n, v in vectors.items()}
    if cluster not in used[task]:
        raise ValueError(f"concept {cluster} is not used by task {task!r} (used: {used[task].tolist()})")
    out = {}
    for other in vectors:
        if other == task:
            continue
        m = match_used(vectors[task], vectors[other], used[task], used[other], center)
        hit = np.flatnonzero(m.rows == cluster)
        if len(hit):
            out[other] = (int(m.cols[hit[0]]), float(m.similarity[hit[0]]))
    return out


@dataclass
class AblationProbe:
    """One task of :func:`ablation_effect`: its generator head, the cluster to ablate (its counterpart of the
    concept, :func:`counterparts`), images and labels, and ``classify`` (images → that task's logits; default
    ``gift(images, head=head)``, e.g. :attr:`gift_cl.interpret.TaskView.classifier`)."""

    head: str
    cluster: int
    images: torch.Tensor
    labels: torch.Tensor
    classify: Optional[Callable[[torch.Tensor], torch.Tensor]] = None


@dataclass(frozen=True)
class AblationEffect:
    """Per task ``accuracy``, ``ablated`` accuracy and ``drop`` (their difference), and the same for the mean
    log-probability of the true class (``logprob``, ``ablated_logprob``, ``logprob_drop``: continuous, so it sees
    an ablation too small to flip a prediction); the mean drops of the tasks that share the concept and of the
    others, and the differences sharing − other (``NaN`` for an empty group)."""

    per_task: dict[str, dict[str, float]]
    sharing_drop: float
    other_drop: float
    difference: float
    sharing_logprob_drop: float
    other_logprob_drop: float
    logprob_difference: float


@torch.no_grad()
def _accuracy(classify: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, labels: torch.Tensor,
              batch_size: int) -> tuple[float, float]:
    """Accuracy and the mean log-probability of the true class."""
    correct, logprob = 0, 0.0
    for s in range(0, len(images), batch_size):
        logits, y = classify(images[s:s + batch_size]).float(), labels[s:s + batch_size]
        correct += int((logits.argmax(-1) == y).sum())
        logprob += float(logits.log_softmax(-1).gather(1, y[:, None]).sum())
    return correct / len(images), logprob / len(images)


def _head_logits(gift: GiftModel, head: str) -> Callable[[torch.Tensor], torch.Tensor]:
    def classify(images: torch.Tensor) -> torch.Tensor:
        return gift(images, head=head)

    return classify


def ablation_effect(gift: GiftModel, layer: str, probes: Mapping[str, AblationProbe], sharing: Collection[str],
                    block: int = 0, mode: str = "share", batch_size: int = 256) -> AblationEffect:
    """The accuracy each task loses when its own counterpart of a concept is ablated (:func:`ablate_cluster` on
    its head, ``layer``, ``block``, ``mode``), on its given images, in eval mode; compared between the tasks in
    ``sharing`` (those whose counterpart matches the concept, e.g. cosine ≥ a threshold in :func:`counterparts`)
    and the others (whose ablated cluster is their best but poor match, or any control cluster). Reuse predicts
    a larger drop where the concept is shared."""
    per_task: dict[str, dict[str, float]] = {}
    with eval_mode(gift):
        for name, probe in probes.items():
            classify = probe.classify or _head_logits(gift, probe.head)
            before, logprob = _accuracy(classify, probe.images, probe.labels, batch_size)
            with ablate_cluster(gift, layer, probe.cluster, probe.head, block, mode):
                after, ablated_logprob = _accuracy(classify, probe.images, probe.labels, batch_size)
            per_task[name] = {"accuracy": before, "ablated": after, "drop": before - after,
                              "logprob": logprob, "ablated_logprob": ablated_logprob,
                              "logprob_drop": logprob - ablated_logprob, "sharing": float(name in sharing)}

    def mean_drop(shared: bool, key: str = "drop") -> float:
        drops = [r[key] for n, r in per_task.items() if (n in sharing) == shared]
        return float(np.mean(drops)) if drops else float("nan")

    return AblationEffect(per_task, mean_drop(True), mean_drop(False), mean_drop(True) - mean_drop(False),
                          mean_drop(True, "logprob_drop"), mean_drop(False, "logprob_drop"),
                          mean_drop(True, "logprob_drop") - mean_drop(False, "logprob_drop"))
