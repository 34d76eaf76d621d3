"""The concept-reuse figures (matplotlib ``Figure`` objects, made without pyplot) and their writers."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


# ---------------------------------------------------------------------- figures
# Builders return a ``matplotlib.figure.Figure`` made without pyplot: no global backend switch (a notebook
# keeps its inline backend; ``display(fig)`` or a cell ending in ``fig`` shows it), no figure registry to
# leak. ``save_figure`` writes one atomically; ``plot_*`` build and save. Colour scales span the data
# they show (a matrix's off-diagonal pairs when its diagonal is 1 by definition), never a fixed range the
# data fill a sliver of; a legend lists only what is drawn.
DPI = 150


def figure(figsize) -> "Figure":
    from matplotlib.figure import Figure

    return Figure(figsize=figsize)


def save_figure(fig, path: str | Path, dpi: int = DPI) -> None:
    from ..atomic import atomic_path

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def data_range(m: np.ndarray, diagonal: bool = True) -> tuple[float, float]:
    """The finite values' (min, max) of ``m`` (without its diagonal when ``diagonal`` is False), widened to
    a nonzero span; (0, 1) when nothing is finite."""
    values = np.asarray(m, dtype=float)
    if not diagonal and values.ndim == 2 and values.shape[0] == values.shape[1]:
        values = values[~np.eye(len(values), dtype=bool)]
    values = values[np.isfinite(values)]
    if not len(values):
        return 0.0, 1.0
    lo, hi = float(values.min()), float(values.max())
    return (lo - 0.005, hi + 0.005) if hi - lo < 0.01 else (lo, hi)


def matrix_figure(names: Sequence[str], m: np.ndarray, title: str, vmin=None, vmax=None, cmap="magma",
                  diagonal: bool = True, label: str = ""):
    """A labelled matrix with its values written in. The colour scale (sequential ``cmap``) spans
    ``vmin``..``vmax``, by default the data's range; ``diagonal=False`` leaves out (blank, unscaled) a
    diagonal that is 1 by definition (a task's reuse with itself). ``label`` names the colour bar."""
    n = len(names)
    m = np.array(m, dtype=float)
    if not diagonal:
        np.fill_diagonal(m, np.nan)
    lo, hi = data_range(m)
    vmin, vmax = lo if vmin is None else vmin, hi if vmax is None else vmax
    fig = figure((0.55 * n + 2.5, 0.55 * n + 2))
    ax = fig.subplots()
    im = ax.imshow(m, vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    if n <= 20:
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if v < vmin + 0.6 * (vmax - vmin) else "black")
    ax.set_title(title, fontsize=8)
    bar = fig.colorbar(im, ax=ax)
    bar.ax.tick_params(labelsize=7)
    if label:
        bar.set_label(label, fontsize=7)
    fig.tight_layout()
    return fig


def plot_matrix(names: Sequence[str], m: np.ndarray, title: str, path: Path, vmin=None, vmax=None, cmap="magma",
                diagonal: bool = True, label: str = "") -> None:
    save_figure(matrix_figure(names, m, title, vmin, vmax, cmap, diagonal, label), path)


def reuse_figure(rep: dict, layer: str, vmin=None, vmax=None):
    """The task × task reuse matrix of one layer's report (task pairs; a task's reuse with itself is 1),
    chance level in the title; the colour scale spans the pairs' values unless ``vmin``/``vmax`` are given
    (one scale for two matrices compared side by side)."""
    return matrix_figure(rep["tasks"], rep["reuse"],
                         f"concept reuse · {layer}\nchance {rep['chance_reuse']:.2f}", vmin=vmin, vmax=vmax,
                         diagonal=False, label="matched cosine" + (" (centred)" if rep["center"] else ""))


def dendrogram_figure(rep: dict, layer: str):
    from scipy.cluster.hierarchy import dendrogram

    names = rep["tasks"]
    fig = figure((max(3.0, 0.5 * len(names) + 1.5), 3))
    ax = fig.subplots()
    dendrogram(rep["linkage"], labels=list(names), ax=ax, leaf_rotation=60, leaf_font_size=7)
    ax.set_ylabel("1 − reuse", fontsize=7)
    ax.set_title(f"tasks by concept reuse · {layer}", fontsize=8)
    fig.tight_layout()
    return fig


def tsne_figure(rep: dict, layer: str):
    import matplotlib

    names, t = rep["tasks"], rep["tsne"]
    fig = figure((4.5, 4))
    ax = fig.subplots()
    cmap = matplotlib.colormaps["tab20" if len(names) > 10 else "tab10"]
    coords = np.asarray(t["coords"])
    for i, n in enumerate(names):
        sel = [k for k, tk in enumerate(t["task"]) if tk == n]
        if sel:  # a legend entry only for points drawn
            ax.scatter(coords[sel, 0], coords[sel, 1], s=10, color=cmap(i % cmap.N), label=n)
    ax.legend(fontsize=7, markerscale=0.8, loc="best")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(f"concept vectors (t-SNE) · {layer}", fontsize=8)
    fig.tight_layout()
    return fig


def global_concepts_figure(rep: dict, layer: str):
    g, names = rep["global"], rep["tasks"]
    fig = figure((8, 3))
    axes = fig.subplots(1, 2)
    ks = sorted(int(k) for k in g["silhouette"])
    axes[0].plot(ks, [g["silhouette"][k] for k in ks], marker="o")
    axes[0].axvline(g["k"], color="gray", ls="--")
    axes[0].set_xlabel("k"), axes[0].set_ylabel("silhouette (cosine)")
    im = axes[1].imshow(np.asarray(g["counts"]), aspect="auto", cmap="viridis")
    axes[1].set_yticks(range(len(names)), names, fontsize=7)
    axes[1].set_xlabel("global concept")
    fig.colorbar(im, ax=axes[1])
    fig.suptitle(f"global concepts · {layer} (k={g['k']})", fontsize=8)
    fig.tight_layout()
    return fig


def _fmt(v) -> str:
    return "n/a (< 3 points)" if v is None else f"{v:.2f}"


def relations_figure(rep: dict, layer: str):
    """Reuse of each task pair against task similarity, and (with gains) each task's mean reuse against
    its accuracy gain."""
    panels = [k for k in ("task_similarity", "reuse_vs_gain") if rep.get(k) is not None]
    fig = figure((4 * len(panels), 3.2))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, key in zip(axes[0], panels):
        if key == "task_similarity":
            rel = rep["reuse_vs_task_similarity"]
            iu = np.triu_indices(len(rep["tasks"]), k=1)
            ax.scatter(np.asarray(rep["task_similarity"])[iu], np.asarray(rep["reuse"])[iu], s=14)
            if np.isfinite(rep["chance_reuse"]):
                ax.axhline(rep["chance_reuse"], color="gray", ls="--", lw=0.8, label="chance")
                ax.legend(fontsize=7)
            ax.set_xlabel("task similarity (prototype cosine)", fontsize=7)
            ax.set_ylabel("concept reuse", fontsize=7)
            ax.set_title(f"task pairs · spearman {_fmt(rel['spearman'])}", fontsize=7)
        else:
            rows = [r for r in rep["reuse_vs_gain"]["per_task"] if r["gain"] is not None]
            ax.scatter([r["mean_reuse"] for r in rows], [r["gain"] for r in rows], s=14)
            for r in rows:
                ax.annotate(r["task"], (r["mean_reuse"], r["gain"]), fontsize=7)
            ax.set_xlabel("mean reuse with other tasks", fontsize=7)
            ax.set_ylabel("accuracy gain", fontsize=7)
            ax.set_title(f"tasks · spearman {_fmt(rep['reuse_vs_gain']['mean_reuse']['spearman'])}", fontsize=7)
    fig.suptitle(layer, fontsize=8)
    fig.tight_layout()
    return fig


def depth_figure(report: dict):
    depth = report["depth"]
    x = range(len(depth))
    fig = figure((max(4.0, 0.45 * len(depth) + 2), 3))
    ax = fig.subplots()
    for key, label in (("reuse", "reuse (matched cosine)"), ("control", "reuse, untrained heads"),
                       ("chance", "chance reuse"), ("within_groups", "reuse within groups"),
                       ("between_groups", "reuse between groups"), ("nmi", "NMI"), ("ari", "ARI")):
        y = np.array([np.nan if r.get(key) is None else r[key] for r in depth], dtype=float)
        if np.isfinite(y).any():  # a series with no defined value (NMI of constant assignments) has no entry
            ax.plot(x, y, marker="o", ms=3, label=label)
    ax.set_xticks(list(x), [r["layer"] for r in depth], rotation=60, ha="right", fontsize=7)
    ax.legend(fontsize=7)
    ax.set_title("concept reuse across depth (mean over task pairs)", fontsize=8)
    fig.tight_layout()
    return fig


def cross_layer_figure(report: dict):
    cl = report["cross_layer"]
    center = next(iter(report["layers"].values()))["center"]
    return matrix_figure(cl["layers"], cl["reuse"], "the same task's concepts at two depths", diagonal=False,
                         label="matched cosine" + (" (centred)" if center else ""))


def plot_layer(rep: dict, layer: str, d: Path) -> None:
    save_figure(reuse_figure(rep, layer), d / "reuse.png")
    save_figure(matrix_figure(rep["tasks"], rep["nmi"], f"NMI of hard assignments · {layer}", vmin=0.0, vmax=1.0,
                              cmap="viridis", diagonal=False, label="NMI (0–1)"), d / "nmi.png")
    if rep.get("linkage") is not None:
        save_figure(dendrogram_figure(rep, layer), d / "dendrogram.png")
    if rep.get("tsne"):
        save_figure(tsne_figure(rep, layer), d / "tsne.png")
    if rep.get("global"):
        save_figure(global_concepts_figure(rep, layer), d / "global_concepts.png")
    if rep.get("task_similarity") is not None or rep.get("reuse_vs_gain"):
        save_figure(relations_figure(rep, layer), d / "relations.png")


def plot_depth(report: dict, out: Path) -> None:
    if not report["depth"]:
        return
    save_figure(depth_figure(report), out / "depth.png")
    if len(report["cross_layer"]["layers"]) > 1:
        save_figure(cross_layer_figure(report), out / "cross_layer.png")
