"""Statistics for comparing methods: paired hierarchical bootstrap over seeds and test images, Holm correction.

Two methods evaluated on the same images (same data seed) differ, per image, by c_A − c_B ∈ {−1, 0, 1}
(c = 1 when the prediction is right). The reported difference is the mean over seeds of the mean over tasks
of the per-task accuracy difference. Its uncertainty has two sources: the runs (training data, initialisation:
seeds) and the finite test set (images). :func:`paired_bootstrap` resamples both, hierarchically: seeds with
replacement, then, for every drawn seed and task, that task's test images with replacement (the same
images for both methods: the pairing is kept). When every seed has its own test images the between-seed
spread already contains test-set noise, so the interval is conservative, never optimistic.
"""
from __future__ import annotations

from typing import Mapping, Optional, Union

import numpy as np

Diffs = Mapping[object, Mapping[str, Union[np.ndarray, float]]]


def paired_bootstrap(diffs: Diffs, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> dict:
    """Bootstrap the mean paired difference.

    ``diffs[seed][task]`` is either the per-image difference vector (values in {−1, 0, 1}) or, where a run
    kept no per-image predictions, the task's accuracy difference as a float (then only seeds are resampled
    for that seed). Every seed must have the same tasks. Returns ``{"diff", "ci": (lo, hi), "p", "n_seeds",
    "n_images", "per_image"}``; ``p`` is the two-sided bootstrap p-value of "no difference" (the bootstrap
    distribution shifted to 0; at least 1 / (n_boot + 1)).
    """
    seeds = list(diffs)
    if not seeds:
        raise ValueError("paired_bootstrap: no common seed")
    tasks = sorted(diffs[seeds[0]])
    if not tasks or any(sorted(diffs[s]) != tasks for s in seeds):
        raise ValueError("paired_bootstrap: every seed needs the same, non-empty set of tasks")
    rng = np.random.default_rng(seed)
    n_s = len(seeds)
    per_seed = np.array([np.mean([np.mean(diffs[s][t]) for t in tasks]) for s in seeds])
    observed = float(per_seed.mean())
    # replicate b draws n_s seeds; pick j of replicate b gets its own image resample of every task
    picks = rng.integers(0, n_s, size=(n_boot, n_s))
    boot_seed_means = np.empty((n_boot, n_s))
    per_image = True
    for i, s in enumerate(seeds):
        task_means = np.zeros((n_boot, n_s))
        for t in tasks:
            d = diffs[s][t]
            if np.ndim(d) == 0:
                per_image = False
                task_means += float(d)
                continue
            d = np.asarray(d)
            n = len(d)
            counts = np.array([(d == -1).sum(), (d == 0).sum(), (d == 1).sum()])
            if counts.sum() != n:
                raise ValueError(f"paired_bootstrap: per-image differences must be -1, 0 or 1 (seed {s}, task {t})")
            draws = rng.multinomial(n, counts / n, size=(n_boot, n_s))
            task_means += (draws[..., 2] - draws[..., 0]) / n
        task_means /= len(tasks)
        boot_seed_means = np.where(picks == i, task_means, boot_seed_means)
    boot = boot_seed_means.mean(1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha])
    p = (1 + np.sum(np.abs(boot - observed) >= abs(observed))) / (n_boot + 1)
    n_images = sum(len(np.atleast_1d(diffs[s][t])) for s in seeds for t in tasks) if per_image else None
    return {"diff": observed, "ci": (float(lo), float(hi)), "p": float(p), "n_seeds": n_s, "n_images": n_images,
            "per_image": per_image}


def holm(pvalues: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down; family-wise error rate), in the input order."""
    m = len(pvalues)
    order = np.argsort(pvalues, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted.tolist()


def t_interval(values, level: float = 0.95) -> tuple[float, Optional[float]]:
    """Mean and the half-width of its Student-t confidence interval (None with fewer than two values)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), None
    return float(v.mean()), float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))
