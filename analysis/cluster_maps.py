"""Cluster maps and concept reuse of a finished GIFT run (PaCa generator).

    python analysis/cluster_maps.py outputs/gift_multitask/procedural/<time>
    python analysis/cluster_maps.py <run> --task textures --layer blocks.3.attn.proj --norm minmax

Writes into ``<run>/interpret/``:
- ``maps_<task>_<layer>.png``: test images (rows) with the most active cluster maps overlaid (columns);
- for runs with several tasks, ``concept_reuse_<layer>.png`` (task × task reuse of cluster assignments)
  and ``concept_reuse.json`` (the matrix and the concepts each task uses).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from gift_cl.checkpoint import atomic_path, write_json
from gift_cl.interpret import (
    assignment_vectors,
    cluster_maps,
    load_gift,
    normalize_maps,
    overlay,
    reuse_matrix,
    shared_concepts,
)


def save_fig(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_maps(images, maps, mean, std, title: str, path: Path, k: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pixels = (images * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]).clamp(0, 1)
    top = maps.flatten(-2).std(-1).mean(0).argsort(descending=True)[:k]  # the most contrasted clusters
    fig, axes = plt.subplots(len(images), k + 1, figsize=(1.3 * (k + 1), 1.3 * len(images)), squeeze=False)
    for i, img in enumerate(pixels.permute(0, 2, 3, 1).numpy()):
        axes[i, 0].imshow(img)
        for j, c in enumerate(top.tolist()):
            axes[i, j + 1].imshow(overlay(img, maps[i, c].numpy()))
            if i == 0:
                axes[i, j + 1].set_title(f"cluster {c}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=8)
    save_fig(fig, path)


def plot_reuse(names, r, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(0.55 * len(names) + 2.5, 0.55 * len(names) + 2))
    im = ax.imshow(r, vmin=0, vmax=1, cmap="magma")
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for (i, j), v in np.ndenumerate(r):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    save_fig(fig, path)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--task", help="task to draw maps for (default: every task)")
    p.add_argument("--layer", help="target layer (default: the last one)")
    p.add_argument("--block", type=int, default=-1, help="PaCa block whose assignment is used")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--clusters", type=int, default=8, help="cluster maps shown per image")
    p.add_argument("--norm", choices=["meanstd", "minmax"], default="meanstd")
    p.add_argument("--pre-delta", action="store_true", help="use the frozen layer's output (before ΔW)")
    a = p.parse_args()

    run = Path(a.run_dir)
    out = run / "interpret"
    gift, _, _, tasks = load_gift(run)
    layer = a.layer or list(gift.layers())[-1]
    mean, std = gift.model.pretrained_cfg.get("mean", (0.5,) * 3), gift.model.pretrained_cfg.get("std", (0.5,) * 3)
    vectors = {}
    for task in tasks:
        if a.task and task.name != a.task:
            continue
        gift, head, _, _ = load_gift(run, task.name)
        images = torch.stack([task.test[i][0] for i in range(min(a.images, len(task.test)))])
        maps = normalize_maps(cluster_maps(gift, images, layer, head, a.block, a.pre_delta), a.norm)
        plot_maps(images, maps, mean, std, f"{task.name} · {layer} · block {a.block}",
                  out / f"maps_{task.name}_{layer}.png", a.clusters)
        vectors[task.name] = assignment_vectors(gift, head, layer, a.block)
        print(f"{task.name}: {out / f'maps_{task.name}_{layer}.png'}")
    if len(vectors) > 1:
        names, r = reuse_matrix(vectors)
        plot_reuse(names, r, f"concept reuse · {layer}", out / f"concept_reuse_{layer}.png")
        concepts = shared_concepts(vectors, num_concepts=min(8, sum(len(v) for v in vectors.values())))
        write_json({"layer": layer, "tasks": names, "reuse": r.tolist(), "concepts_per_task": concepts},
                   out / "concept_reuse.json")
        print(json.dumps({"reuse_mean_off_diagonal": float(r[~np.eye(len(r), dtype=bool)].mean())}))


if __name__ == "__main__":
    main()
