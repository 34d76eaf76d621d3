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
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .tuner import GiftModel

SOURCES = ("auto", "assignment", "projection", "hidden")


# ---------------------------------------------------------------------- concept matrices
def _group_of(gift: GiftModel, layer: str) -> tuple[str, int]:
    for key, names in gift.groups.items():
        if layer in names:
            return key, names.index(layer)
    raise KeyError(f"{layer!r} is not a GIFT target layer; targets: {list(gift.layers())}")


def resolve_source(gift: GiftModel, layer: str, source: str = "auto") -> str:
    """The concrete source ``auto`` stands for at ``layer``."""
    if source not in SOURCES:
        raise ValueError(f"unknown concept source {source!r}; expected one of {SOURCES}")
    if source != "auto":
        return source
    cfg = gift.generators[_group_of(gift, layer)[0]].config
    return "assignment" if cfg.block == "paca" and cfg.depth > 0 else "projection"


@torch.no_grad()
def concept_matrix(gift: GiftModel, layer: str, head: str = "0", source: str = "auto", block: int = 0) -> torch.Tensor:
    """``C`` (``d_out × M``) of ``layer`` under generator head ``head`` (see the module docstring)."""
    source = resolve_source(gift, layer, source)
    key, idx = _group_of(gift, layer)
    gen = gift.generators[key]
    weights = gift.target_weights(key)
    if source == "projection":
        return F.linear(weights[idx].float(), gen.trunk.reduction.weight.float())
    if source == "assignment":
        if not (gen.config.block == "paca" and gen.config.depth > 0):
            raise ValueError(f"the {gen.config.block!r} generator with depth {gen.config.depth} has no PaCa cluster "
                             "assignments: use source='projection' (W φᵀ, the official visualiser's) or 'hidden'")
        _, assignments = gen(weights, head=head, return_assignments=True)
        return assignments[block][idx].float()
    # hidden: the token states after one block, captured from the generator's own forward
    if gen.config.depth == 0:
        raise ValueError("a generator without blocks has no hidden states: use source='projection'")
    captured = {}
    handle = gen.trunk.blocks[block].register_forward_hook(lambda m, i, o: captured.__setitem__("h", o[0]))
    try:
        gen(weights, head=head)
    finally:
        handle.remove()
    return captured["h"][idx].float()


def concept_vectors(gift: GiftModel, layer: str, head: str = "0", source: str = "auto", block: int = 0) -> torch.Tensor:
    """``(M, d_out)``: each concept (cluster) as a vector over the parameter tokens, not normalised.
    The input of :mod:`gift_cl.concepts`."""
    return concept_matrix(gift, layer, head, source, block).T.contiguous()


@contextlib.contextmanager
def untrained_head(gift: GiftModel, head: str = "0", seed: int = 0):
    """Inside the block, generator head ``head`` (its cluster assignments and recovery ψ) is replaced by
    a freshly initialised one, drawn from ``seed``; the trained head is put back afterwards. The shared
    trunk stays trained. The control for concept reuse: what the trunk alone imposes on the concepts."""
    saved = {key: gen.heads[head] for key, gen in gift.generators.items()}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for key, gen in gift.generators.items():
                gen.heads[head] = type(saved[key])(gen.config, gen.d_in).to(next(saved[key].parameters()).device)
        yield gift
    finally:
        for key, gen in gift.generators.items():
            gen.heads[head] = saved[key]


def untrained_concepts(gift: GiftModel, layer: str, head: str = "0", source: str = "auto",
                       block: int = 0) -> Callable[[int], torch.Tensor]:
    """``seed -> C`` of ``layer`` with head ``head`` freshly initialised from ``seed`` (:func:`untrained_head`):
    the draws of the untrained-head null of :func:`gift_cl.maskscore.concept_null`."""

    def draw(seed: int) -> torch.Tensor:
        with untrained_head(gift, head, seed):
            return concept_matrix(gift, layer, head, source, block)

    return draw


# ---------------------------------------------------------------------- cluster maps
@contextlib.contextmanager
def _eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def layer_outputs(gift: GiftModel, images: torch.Tensor, layers: Sequence[str], head: str = "0",
                  pre_delta: bool = False) -> dict[str, torch.Tensor]:
    """Every ``layer``'s output tokens ``(B, N, d_out)`` from ONE forward pass of the model adapted with
    head ``head``'s residuals. ``pre_delta``: the frozen part ``x Wᵀ + b`` on the input the layer gets in
    that adapted forward (the official visualiser's pre-delta)."""
    captured, handles = {}, []
    for layer in layers:
        target = gift.model.get_submodule(layer)
        module = target.base if pre_delta else target
        handles.append(module.register_forward_hook(lambda m, i, o, n=layer: captured.__setitem__(n, o)))
    try:
        with _eval_mode(gift):
            gift(images, head=head)
    finally:
        for h in handles:
            h.remove()
    return captured


def patch_grid(y: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """A layer's output tokens ``(B, N, d)`` as the patch grid ``(B, gh, gw, d)``: the prefix tokens
    ([CLS], registers) dropped, the rest laid out row by row as the patch embedding emits them."""
    y = y[:, getattr(backbone, "num_prefix_tokens", 1):]  # patches only
    gh, gw = backbone.patch_embed.grid_size
    return rearrange(y, "b (h w) d -> b h w d", h=gh, w=gw)


def grid_maps(y: torch.Tensor, c: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """``Y C`` on the patch grid, one value per patch token, before any upsampling: ``(B, M, gh, gw)``.
    What :mod:`gift_cl.maskscore` scores against object masks brought down to the same grid."""
    return rearrange(patch_grid(y, backbone).float() @ c.float(), "b h w m -> b m h w")


def maps_from_outputs(y: torch.Tensor, c: torch.Tensor, backbone: nn.Module, size: Sequence[int]) -> torch.Tensor:
    """``Y C`` on the patch grid, upsampled bilinearly (``align_corners=False``) to ``size``: ``(B, M, H, W)``."""
    return F.interpolate(grid_maps(y, c, backbone), size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def frozen_patch_tokens(model: nn.Module, images: torch.Tensor, layer: Optional[str] = None) -> torch.Tensor:
    """Patch tokens ``(B, gh, gw, d)`` of a plain timm ViT: the output of module ``layer`` (e.g.
    ``"blocks.3"``), or with ``layer=None`` the final normed tokens of ``forward_features``. The frozen
    model's own representation, the reference a concept map has to beat (:mod:`gift_cl.maskscore`)."""
    with _eval_mode(model):
        if layer is None:
            return patch_grid(model.forward_features(images), model)
        captured = {}
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.__setitem__("y", o))
        try:
            model.forward_features(images)
        finally:
            handle.remove()
    return patch_grid(captured["y"], model)


@torch.no_grad()
def cls_attention(model: nn.Module, images: torch.Tensor, block: int = -1) -> torch.Tensor:
    """How much the [CLS] query attends to each patch in ``model.blocks[block]`` (a timm ViT), averaged over
    heads: ``(B, gh, gw)``. The attention weights are recomputed from the input the block's attention
    receives (timm's fused kernel never materialises them), exactly as timm's unfused path computes them."""
    attn = model.blocks[block].attn
    captured = {}
    handle = attn.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0]))
    try:
        with _eval_mode(model):
            model.forward_features(images)
    finally:
        handle.remove()
    x = captured["x"]
    b, n, _ = x.shape
    q, k, _ = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    weights = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, N)
    return patch_grid(weights.mean(dim=1).transpose(1, 2), model)[..., 0].float()


@torch.no_grad()
def cluster_maps_by_layer(gift: GiftModel, images: torch.Tensor, layers: Sequence[str], head: str = "0",
                          block: int = 0, pre_delta: bool = False, source: str = "auto",
                          center: bool = False) -> dict[str, torch.Tensor]:
    """:func:`cluster_maps` for several layers from one forward pass."""
    outputs = layer_outputs(gift, images, layers, head, pre_delta)
    maps = {}
    for layer in layers:
        c = concept_matrix(gift, layer, head, source, block)
        maps[layer] = maps_from_outputs(outputs[layer], c - c.mean(0, keepdim=True) if center else c, gift.model,
                                        images.shape[-2:])
    return maps


def cluster_maps(gift: GiftModel, images: torch.Tensor, layer: str, head: str = "0", block: int = 0,
                 pre_delta: bool = False, source: str = "auto", center: bool = False) -> torch.Tensor:
    """``(B, M, H, W)`` maps ``Y C`` of ``layer`` for the task whose generator head is ``head``: ``Y`` from
    the model adapted with that head's residuals, ``C`` that head's concept matrix (module docstring).

    ``center``: each column of ``C`` minus its mean over the parameter tokens. Sigmoid assignments that
    vary little over the tokens (``C ≈ c·1``) give maps that are all ``≈ c · Σ_j Y_j``, the same image for
    every cluster; centring keeps what distinguishes the clusters (as the centred cosine of
    :mod:`gift_cl.concepts` does). Off by default: the paper's and the official visualiser's maps are raw."""
    return cluster_maps_by_layer(gift, images, [layer], head, block, pre_delta, source, center)[layer]


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


def most_contrasted(maps: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` clusters whose RAW maps vary most across the image (spatial std, averaged
    over the images). Must be given un-normalised maps: after mean/std every map has std 1."""
    return maps.flatten(-2).std(-1).mean(0).argsort(descending=True)[:k]


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


# ---------------------------------------------------------------------- a finished run
@dataclass
class TaskView:
    """One task of a run: its :class:`GiftModel` and generator head, and a module mapping images to its logits."""

    name: str
    index: int
    data: Any  # the benchmark's task (``.test``, ``.train``, ``.num_classes``)
    gift: GiftModel
    head: str
    classifier: nn.Module

    def cluster_maps(self, images: torch.Tensor, layer: str, **kw) -> torch.Tensor:
        return cluster_maps(self.gift, images, layer, self.head, **kw)

    def concept_vectors(self, layer: str, source: str = "auto", block: int = 0) -> torch.Tensor:
        return concept_vectors(self.gift, layer, self.head, source, block)

    def test_images(self, n: int = 4) -> torch.Tensor:
        """The first ``n`` test images of the task, normalised as the model sees them: ``(n, 3, H, W)``."""
        test = self.data.test
        return torch.stack([test[i][0] for i in range(min(n, len(test)))])


@dataclass
class GiftRun:
    """A finished (or checkpointed) run, loaded once: its benchmark tasks, per-task views, and the task
    prototypes (mean frozen [CLS] feature per task, used for task-id inference) where the run has them."""

    run_dir: Path
    config: Any
    tasks: list  # the benchmark's tasks, in benchmark order
    prototypes: dict[str, torch.Tensor]
    _view: Callable[[str], TaskView] = field(repr=False)
    _cache: dict = field(default_factory=dict, repr=False)
    shared_model: bool = False  # one model for every task (multi-task run) vs one model per task

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: Optional[str] = None) -> TaskView:
        """The view of task ``name`` (default: the first). Independent runs keep one task model at a time."""
        name = name or self.names[0]
        if name not in self.names:
            raise KeyError(f"task {name!r} is not in this run; tasks: {self.names}")
        if name not in self._cache:
            if not self.shared_model:
                self._cache.clear()  # one ViT per task: do not hold them all
            self._cache[name] = self._view(name)
        return self._cache[name]

    def __iter__(self) -> Iterator[TaskView]:
        return (self.task(n) for n in self.names)

    def layers(self) -> list[str]:
        return list(self.task().gift.layers())

    @property
    def normalisation(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` the run normalised its inputs with (to draw images back as pixels)."""
        src = self.config.benchmark if "mean" in self.config.benchmark else self.config.model
        return [float(v) for v in src.get("mean", (0.5,) * 3)], [float(v) for v in src.get("std", (0.5,) * 3)]

    @property
    def results(self) -> Optional[dict]:
        """The run's ``results.json`` (``None`` if the run wrote none yet)."""
        return read_results(self.run_dir)

    def concept_vectors(self, layers: Optional[Sequence[str]] = None, source: str = "auto", block: int = 0,
                        tasks: Optional[Sequence[str]] = None, untrained_heads: bool = False,
                        seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
        """``{layer: {task: (M, d_out)}}`` for :func:`gift_cl.concepts.analyze`. ``untrained_heads``: every
        task's generator head freshly initialised (seed ``seed + task index``) on the trained trunk, the
        reference level of reuse the shared trunk alone gives (:func:`untrained_head`)."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for name in tasks or self.names:
            view = self.task(name)
            ctx = untrained_head(view.gift, view.head, seed + view.index) if untrained_heads else contextlib.nullcontext()
            with ctx:
                for layer in layers or list(view.gift.layers()):
                    out.setdefault(layer, {})[name] = view.concept_vectors(layer, source, block)
        return out


def _gift_of(model: nn.Module) -> GiftModel:
    if isinstance(model, GiftModel):
        return model
    gift = getattr(model, "gift", None)
    if isinstance(gift, GiftModel):
        return gift
    raise TypeError(f"{type(model).__name__} has no GIFT generator to interpret")


def load_run(run_dir: str | Path) -> GiftRun:
    """Load a run directory once (config, benchmark, checkpoints). ALL knowledge of the run-directory format
    lives here: ``config_resolved.yaml``; sequential and joint runs keep one model in ``checkpoints/last.pt``;
    independent runs keep ``checkpoints/<task>.safetensors`` per task (docs/guide/runs.md, "Run directory").

    The saved configuration is checked whole before anything is built (:func:`gift_cl.config.load_saved_config`:
    only the constructors the shipped configs name, at their places, with their own arguments of the right type
    and range, only this project's resolvers; else one :class:`~gift_cl.config.ConfigError` naming the file and
    the key), and checkpoints load with ``weights_only=True``: a run directory from elsewhere cannot make this
    call run code."""
    from omegaconf import OmegaConf

    from .backbones import create_backbone
    from .checkpoint import load_run_checkpoint
    from .config import load_saved_config, safe_instantiate
    from .protocols import get_protocol
    from .rng import seed_everything

    run_dir = Path(run_dir)
    cfg = load_saved_config(run_dir / "config_resolved.yaml")
    tasks = safe_instantiate(cfg.benchmark, where="benchmark")  # the benchmark is read once per run
    names = [t.name for t in tasks]
    model_kw = OmegaConf.to_container(cfg.model, resolve=True)

    def build() -> nn.Module:
        # The run seeded right before building its backbone: a randomly initialised (test/smoke) backbone
        # is only rebuilt identically under the same seed (its frozen weights are not checkpointed).
        seed_everything(int(cfg.get("seed", 0)))
        return safe_instantiate(cfg.strategy.method, create_backbone(num_classes=0, **model_kw),
                                where="strategy.method")

    if not get_protocol(cfg.strategy.protocol).fresh_model_per_task:  # one model holds every task
        state = load_run_checkpoint(run_dir / "checkpoints" / "last.pt")
        model = build()
        for t, n in sorted(state["tasks"].items()):
            model.add_task(int(t), n)
        model.load_state_dict(state["model"], strict=False)
        model.eval()
        gift = _gift_of(model)
        prototypes = {names[int(t)]: p for t, p in getattr(model, "prototypes", {}).items()}

        def view(name: str) -> TaskView:
            idx = names.index(name)
            return TaskView(name, idx, tasks[idx], gift, str(idx), _TaskForward(model, idx).eval())

        return GiftRun(run_dir, cfg, tasks, prototypes, view, shared_model=True)

    def view(name: str) -> TaskView:
        from safetensors.torch import load_file

        idx = names.index(name)
        model = build()
        gift = _gift_of(model)
        model.add_task(idx, tasks[idx].num_classes)
        model.load_state_dict(load_file(run_dir / "checkpoints" / f"{name}.safetensors"), strict=False)
        return TaskView(name, idx, tasks[idx], gift, str(idx), _TaskForward(model, idx).eval())

    return GiftRun(run_dir, cfg, tasks, {}, view, shared_model=False)


class _TaskForward(nn.Module):
    def __init__(self, model, task: int):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x):
        return self.model(x, self.task)


def read_results(run_dir: str | Path) -> Optional[dict]:
    """``results.json`` of any run directory (any method, e.g. a linear-probe baseline), checked against the
    results schema (:func:`gift_cl.reporting.read_results`); ``None`` if absent."""
    from .reporting import read_results as read_checked

    return read_checked(run_dir) if (Path(run_dir) / "results.json").is_file() else None


def task_accuracies(results: dict) -> dict[str, float]:
    """Final accuracy per task name from a ``results.json`` (schema_version 1: ``final_accuracy``)."""
    return {str(k): float(v) for k, v in results["final_accuracy"].items()}


def accuracy_gains(results: dict, baseline: dict) -> dict[str, float]:
    """Per task: final accuracy of a run minus that of a baseline run (e.g. the linear probe), from their
    ``results.json``; tasks missing from either are left out."""
    ours, base = task_accuracies(results), task_accuracies(baseline)
    return {t: ours[t] - base[t] for t in ours if t in base}
