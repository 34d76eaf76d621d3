"""Interpretability: PaCa cluster maps on images, and concept reuse across tasks.

Cluster maps (SPEC §2): for a target layer, its output tokens on an image ``Y`` (patches only,
``N_p × d_out``) and the layer's cluster assignment ``C`` (``d_out × M``) of one PaCa block give
``maps = Y C`` (``N_p × M``): each column shows which image regions a parameter cluster responds to.

Concept reuse: every task has its own assignments. Two clusters are the same concept when their
assignment vectors over the ``d_out`` parameter tokens point the same way; the reuse of task a in
task b is the mean over a's clusters of the best cosine match among b's clusters.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from omegaconf import OmegaConf
from torch import nn

from .tuner import GiftModel


# ---------------------------------------------------------------------- loading a finished run
def load_gift(run_dir: str | Path, task: Optional[str] = None) -> tuple[GiftModel, str, nn.Module, list]:
    """Rebuild a finished run's model. Returns ``(gift, head, classifier_model, tasks)``: the
    :class:`GiftModel`, the generator head of ``task`` (default: the first task), a module mapping
    images to the task's logits, and the run's tasks.

    Only this project's classes are instantiated from the run's saved configuration, and checkpoints load
    with ``weights_only=True``: a run directory from elsewhere cannot make this call run code."""
    from safetensors.torch import load_file

    from .backbones import create_backbone
    from .checkpoint import load_run_checkpoint
    from .config import safe_instantiate
    from .methods import GiftMethod

    run_dir = Path(run_dir)
    cfg = OmegaConf.load(run_dir / "config_resolved.yaml")
    tasks = safe_instantiate(cfg.benchmark, where="benchmark")
    names = [t.name for t in tasks]
    task = task or names[0]
    if task not in names:
        raise KeyError(f"task {task!r} is not in this run; tasks: {names}")
    idx = names.index(task)
    backbone = create_backbone(num_classes=0, **OmegaConf.to_container(cfg.model, resolve=True))
    model = safe_instantiate(cfg.strategy.method, backbone, where="strategy.method")
    if not isinstance(model, GiftMethod):
        raise TypeError(f"{cfg.strategy.name} has no GIFT generator to interpret")
    if cfg.strategy.protocol == "independent":
        model.add_task(idx, tasks[idx].num_classes)
        state = load_file(run_dir / "checkpoints" / f"{task}.safetensors")
    else:
        ckpt = load_run_checkpoint(run_dir / "checkpoints" / "last.pt")
        for t, n in sorted(ckpt["tasks"].items()):
            model.add_task(int(t), n)
        state = ckpt["model"]
    model.load_state_dict(state, strict=False)
    return model.gift, str(idx), _TaskForward(model, idx).eval(), tasks


# ---------------------------------------------------------------------- cluster maps
@torch.no_grad()
def cluster_maps(gift: GiftModel, images: torch.Tensor, layer: str, head: str = "0", block: int = -1,
                 pre_delta: bool = False) -> torch.Tensor:
    """``(B, M, H, W)`` maps ``Y C`` of ``layer`` upsampled bilinearly to the image size.
    ``pre_delta``: use the frozen layer's output ``x Wᵀ + b`` instead of the adapted one."""
    assignments = gift.cluster_assignments(head)[layer]
    if not assignments:
        raise ValueError("this generator has no PaCa blocks (generator=linear has no cluster assignments)")
    c = assignments[block]  # (d_out, M)
    target = gift.model.get_submodule(layer)
    captured = {}
    hook_module = target.base if pre_delta else target
    handle = hook_module.register_forward_hook(lambda m, i, o: captured.__setitem__("y", o))
    try:
        gift.eval()(images)
    finally:
        handle.remove()
    backbone = gift.model
    y = captured["y"][:, getattr(backbone, "num_prefix_tokens", 1):]  # patches only
    gh, gw = backbone.patch_embed.grid_size
    maps = rearrange(y @ c, "b (h w) m -> b m h w", h=gh, w=gw)
    return F.interpolate(maps, size=images.shape[-2:], mode="bilinear", align_corners=False)


def normalize_maps(maps: torch.Tensor, mode: str = "meanstd") -> torch.Tensor:
    """Per map: ``meanstd`` (the paper) or ``minmax`` then values ≤ 0.5 set to 0 (the official code)."""
    flat = maps.flatten(-2)
    if mode == "meanstd":
        out = (flat - flat.mean(-1, keepdim=True)) / flat.std(-1, keepdim=True).clamp_min(1e-12)
    elif mode == "minmax":
        lo, hi = flat.min(-1, keepdim=True).values, flat.max(-1, keepdim=True).values
        out = (flat - lo) / (hi - lo).clamp_min(1e-12)
        out = torch.where(out > 0.5, out, torch.zeros_like(out))
    else:
        raise ValueError(f"unknown normalisation {mode!r}; expected 'meanstd' or 'minmax'")
    return out.view_as(maps)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """``alpha`` · jet(heat) + (1 − alpha) · image, both in [0, 1], as the official visualiser blends."""
    import matplotlib

    rng = heat.max() - heat.min()
    h = (heat - heat.min()) / (rng if rng > 0 else 1.0)
    cam = alpha * matplotlib.colormaps["jet"](h)[..., :3] + (1 - alpha) * image
    return (cam - cam.min()) / max(cam.max() - cam.min(), 1e-12)


# ---------------------------------------------------------------------- concept reuse
def assignment_vectors(gift: GiftModel, head: str, layer: str, block: int = -1) -> torch.Tensor:
    """``(M, d_out)``: each cluster as its assignment over the parameter tokens, unit length."""
    return F.normalize(gift.cluster_assignments(head)[layer][block].T, dim=-1)


def reuse_matrix(vectors: dict[str, torch.Tensor]) -> tuple[list[str], np.ndarray]:
    """``R[a][b]`` = mean over task a's clusters of the best cosine match among task b's clusters."""
    names = list(vectors)
    r = np.zeros((len(names), len(names)))
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            r[i, j] = (vectors[a] @ vectors[b].T).max(-1).values.mean().item()
    return names, r


def shared_concepts(vectors: dict[str, torch.Tensor], num_concepts: int = 8, seed: int = 0) -> dict:
    """K-means over every task's cluster vectors: which concepts each task uses (cluster counts)."""
    from sklearn.cluster import KMeans

    names = list(vectors)
    stacked = torch.cat([vectors[n] for n in names]).numpy()
    labels = KMeans(n_clusters=num_concepts, n_init=10, random_state=seed).fit_predict(stacked)
    out, start = {}, 0
    for n in names:
        m = len(vectors[n])
        out[n] = np.bincount(labels[start : start + m], minlength=num_concepts).tolist()
        start += m
    return out
