"""Concept matrices and cluster maps of a GIFT model (definitions: the package docstring,
:mod:`gift_cl.interpret`): :func:`concept_matrix`, :func:`cluster_maps`, the layer outputs they are made of,
untrained-head references, the frozen model's patch tokens and [CLS] attention, and map normalisation."""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, Optional, Sequence, cast

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..gift import GiftGenerator
from ..tuner import GiftLinear, GiftModel

if TYPE_CHECKING:
    from timm.layers import Attention
    from timm.models.vision_transformer import Block, VisionTransformer

SOURCES = ("auto", "assignment", "projection", "hidden")


# ---------------------------------------------------------------------- concept matrices
def _generators(gift: GiftModel) -> dict[str, GiftGenerator]:
    """``gift.generators`` by key (an nn.ModuleDict, typed Module; GiftModel holds GiftGenerators)."""
    return {key: cast(GiftGenerator, gen) for key, gen in gift.generators.items()}


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
    cfg = _generators(gift)[_group_of(gift, layer)[0]].config
    return "assignment" if cfg.block == "paca" and cfg.depth > 0 else "projection"


@torch.no_grad()
def concept_matrix(gift: GiftModel, layer: str, head: str = "0", source: str = "auto", block: int = 0) -> torch.Tensor:
    """``C`` (``d_out × M``) of ``layer`` under generator head ``head`` (see the module docstring)."""
    source = resolve_source(gift, layer, source)
    key, idx = _group_of(gift, layer)
    gen = _generators(gift)[key]
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
    captured: dict[str, torch.Tensor] = {}
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
    generators = _generators(gift)
    saved = {key: gen.heads[head] for key, gen in generators.items()}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for key, gen in generators.items():
                gen.heads[head] = type(saved[key])(gen.config, gen.d_in).to(next(saved[key].parameters()).device)
        yield gift
    finally:
        for key, gen in generators.items():
            gen.heads[head] = saved[key]


@contextlib.contextmanager
def untrained_trunk(gift: GiftModel, seed: int = 0):
    """Inside the block, every generator's shared trunk (reduction φ, positional encoding P, blocks) is freshly
    initialised from ``seed`` as :class:`~gift_cl.gift.GeneratorTrunk` initialises it; the trained trunk is put
    back afterwards. The control for the ``W φᵀ`` maps (``source='projection'``): they depend on φ and on no
    head, so an untrained head leaves them exactly as trained."""
    generators = _generators(gift)
    saved = {key: gen.trunk for key, gen in generators.items()}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for key, gen in generators.items():
                gen.trunk = type(saved[key])(gen.config, gen.d_in, gen.d_out).to(
                    next(saved[key].parameters()).device)
        yield gift
    finally:
        for key, gen in generators.items():
            gen.trunk = saved[key]


NULL_PARTS = ("auto", "head", "trunk")


def null_part(gift: GiftModel, layer: str, source: str = "auto", part: str = "auto") -> str:
    """What the untrained null of ``layer``'s concepts re-draws: ``part``, or for ``auto`` the trunk where the
    concepts are ``W φᵀ`` (no head enters them) and the head otherwise."""
    if part not in NULL_PARTS:
        raise ValueError(f"unknown part {part!r} to re-draw; expected one of {NULL_PARTS}")
    if part != "auto":
        return part
    return "trunk" if resolve_source(gift, layer, source) == "projection" else "head"


def untrained_concepts(gift: GiftModel, layer: str, head: str = "0", source: str = "auto",
                       block: int = 0, part: str = "head") -> Callable[[int], torch.Tensor]:
    """``seed -> C`` of ``layer`` with ``part`` freshly initialised from ``seed``: generator head ``head``
    (:func:`untrained_head`, the default) or the shared trunk (:func:`untrained_trunk`); ``auto`` as
    :func:`null_part` decides. The draws of the untrained null of :func:`gift_cl.maskscore.concept_null`."""
    redrawn = untrained_trunk if null_part(gift, layer, source, part) == "trunk" else None

    def draw(seed: int) -> torch.Tensor:
        with (redrawn(gift, seed) if redrawn is not None else untrained_head(gift, head, seed)):
            return concept_matrix(gift, layer, head, source, block)

    return draw


# ---------------------------------------------------------------------- cluster maps
@contextlib.contextmanager
def eval_mode(module: nn.Module):
    """``module`` in eval mode inside the block, its own mode restored afterwards."""
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
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for layer in layers:
        target = cast(GiftLinear, gift.model.get_submodule(layer))  # get_submodule is typed Module; a GIFT target
        module: nn.Module = target.base if pre_delta else target
        handles.append(module.register_forward_hook(lambda m, i, o, n=layer: captured.__setitem__(n, o)))
    try:
        with eval_mode(gift):
            gift(images, head=head)
    finally:
        for h in handles:
            h.remove()
    return captured


def patch_grid(y: torch.Tensor, backbone: nn.Module) -> torch.Tensor:
    """A layer's output tokens ``(B, N, d)`` as the patch grid ``(B, gh, gw, d)``: the prefix tokens
    ([CLS], registers) dropped, the rest laid out row by row as the patch embedding emits them."""
    y = y[:, getattr(backbone, "num_prefix_tokens", 1):]  # patches only
    patch_embed = cast(nn.Module, backbone.patch_embed)  # nn.Module.__getattr__ is typed Tensor | Module
    gh, gw = cast("tuple[int, int]", patch_embed.grid_size)  # timm's PatchEmbed: (rows, columns) of patches
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
    # nn.Module.__getattr__ is typed Tensor | Module; a timm model's forward_features is a method
    forward_features = cast("Callable[[torch.Tensor], torch.Tensor]", model.forward_features)
    with eval_mode(model):
        if layer is None:
            return patch_grid(forward_features(images), model)
        captured: dict[str, torch.Tensor] = {}
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.__setitem__("y", o))
        try:
            forward_features(images)
        finally:
            handle.remove()
    return patch_grid(captured["y"], model)


@torch.no_grad()
def cls_attention(model: nn.Module, images: torch.Tensor, block: int = -1) -> torch.Tensor:
    """How much the [CLS] query attends to each patch in ``model.blocks[block]`` (a timm ViT), averaged over
    heads: ``(B, gh, gw)``. The attention weights are recomputed from the input the block's attention
    receives (timm's fused kernel never materialises them), exactly as timm's unfused path computes them."""
    vit = cast("VisionTransformer", model)  # typed nn.Module: a timm ViT
    # nn.Sequential items and Block.attn are typed Module: a timm ViT's blocks hold its Attention
    attn = cast("Attention", cast("Block", vit.blocks[block]).attn)
    captured: dict[str, torch.Tensor] = {}
    handle = attn.register_forward_pre_hook(lambda m, args: captured.__setitem__("x", args[0]))
    try:
        with eval_mode(model):
            vit.forward_features(images)
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
