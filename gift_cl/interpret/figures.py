"""Cluster maps drawn over their images, as the official visualiser blends them (matplotlib, no pyplot)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .maps import most_contrasted, normalize_maps


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``alpha`` · jet(heat) + (1 − alpha) · image, both in [0, 1], as the official visualiser blends."""
    import matplotlib

    rng = heat.max() - heat.min()
    h = (heat - heat.min()) / (rng if rng > 0 else 1.0)
    cam = alpha * matplotlib.colormaps["jet"](h)[..., :3] + (1 - alpha) * image
    return (cam - cam.min()) / max(cam.max() - cam.min(), 1e-12)


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised ``(B, 3, H, W)`` inputs back to ``(B, H, W, 3)`` pixels in [0, 1]."""
    m, s = torch.tensor(mean, dtype=images.dtype)[:, None, None], torch.tensor(std, dtype=images.dtype)[:, None, None]
    return (images * s + m).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def cluster_map_figure(images: torch.Tensor, raw_maps: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                       norm: str = "meanstd", k: int = 8, title: str = "", size: float = 1.3):
    """Test images (rows) and the ``k`` clusters whose raw maps vary most across the image (columns),
    normalised with ``norm`` and overlaid as in the official visualiser. A ``matplotlib.figure.Figure``
    built without pyplot (save it with ``fig.savefig``; in a notebook a cell ending in ``fig`` shows it)."""
    from matplotlib.figure import Figure

    top = most_contrasted(raw_maps, k).tolist()  # on the raw maps: normalised maps all have std 1
    maps = normalize_maps(raw_maps, norm)
    fig = Figure(figsize=(size * (len(top) + 1), size * len(images) + (0.3 if title else 0)))
    axes = fig.subplots(len(images), len(top) + 1, squeeze=False)
    for i, img in enumerate(to_pixels(images, mean, std)):
        axes[i, 0].imshow(img, interpolation="nearest")
        for j, c in enumerate(top):
            axes[i, j + 1].imshow(overlay(img, maps[i, c].numpy()), interpolation="nearest")
            if i == 0:
                axes[i, j + 1].set_title(f"cluster {c}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig
