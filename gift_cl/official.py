"""Import checkpoints of the official GIFT code (github.com/savadikarc/gift, v2 "two linear layers").

The official ``train.py`` saves a timm ``CheckpointSaver`` dict: ``epoch``, ``arch``, ``state_dict``,
``optimizer``, ``version``, ``args`` (an ``argparse.Namespace``), ``metric``. Its ``state_dict`` holds only::

    in_projections.<key>.weight    (r, d_in)    φ  -> GiftModel generators[<key>].trunk.reduction.weight
    out_projections.<key>.weight   (d_in, r)    ψ  -> GiftModel generators[<key>].heads[<head>].recovery.weight
    backbone.head.weight / .bias                   -> GiftModel model.head.weight / .bias

with ``<key>`` the target with ":" for "." (``attn:proj``), so ``ΔW = (W φᵀ) ψᵀ`` is our ``generator=linear``
(``GiftConfig.linear``: depth 0, no positional encoding). The backbone is not in the file: the released
FGVC checkpoints were trained on ``vit_base_patch16_224.augreg_in21k`` with mean = std = 0.5.

Loading is ``torch.load(weights_only=True)`` with ``argparse.Namespace`` allowlisted for that one call (a
Namespace is an attribute bag; its values must themselves be plain data). A file that needs anything else is
refused with an explanation, never loaded with ``weights_only=False``.

    gift, info = gift_model_from_official("last.pth.tar")            # timm backbone named by the checkpoint
    gift, info = gift_model_from_official("last.pth.tar", backbone=my_vit)
    logits = gift(images); maps = gift_cl.interpret.cluster_maps(gift, images, "blocks.11.attn.proj")
"""
from __future__ import annotations

import argparse
import pickle
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .gift import GiftConfig
from .tuner import GiftModel, get_gift_model

SAFE_GLOBALS = (argparse.Namespace,)
SHARED_KEY = "shared_projection"


class OfficialCheckpointError(ValueError):
    """The file is not an official GIFT checkpoint this framework can represent."""


def load_official_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """The checkpoint as a dict with ``state_dict`` and ``args`` as a plain dict (``{}`` when absent);
    the optimizer state is dropped. A bare state dict is accepted too."""
    path = Path(path)
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise OfficialCheckpointError(
            f"{path} holds Python objects beyond tensors and argparse.Namespace, so it cannot be loaded safely "
            f"(torch.load(weights_only=True)): {err}\nThis loader never unpickles arbitrary objects. If you trust "
            "the file, re-save only its state_dict and args in a separate process, e.g. "
            "`python -c \"import torch,sys; c=torch.load(sys.argv[1], weights_only=False, map_location='cpu'); "
            "torch.save({'state_dict': c['state_dict'], 'args': vars(c.get('args') or {})}, sys.argv[2])\" "
            "IN OUT`, and load OUT."
        ) from err
    if not isinstance(ckpt, dict):
        raise OfficialCheckpointError(f"{path}: expected a checkpoint dict, got {type(ckpt).__name__}")
    if "state_dict" not in ckpt:
        if all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            ckpt = {"state_dict": ckpt}
        else:
            raise OfficialCheckpointError(f"{path}: no 'state_dict' in the checkpoint (keys {sorted(ckpt)[:8]})")
    args = ckpt.get("args")
    out = {k: v for k, v in ckpt.items() if k != "optimizer"}
    out["args"] = vars(args) if isinstance(args, argparse.Namespace) else dict(args or {})
    return out


def _arg(args: dict, name: str, default=None):
    """The official ``--gift_<name>``, or its older spelling ``hypernet_<name>`` (``rank`` was ``embed_dim``)."""
    old = {"rank": "embed_dim"}.get(name, name)
    for key in (f"gift_{name}", f"hypernet_{old}"):
        if key in args and args[key] is not None:
            return args[key]
    return default


def _projection_keys(state_dict: dict) -> list[str]:
    keys = []
    for k in state_dict:
        if k.startswith("in_projections.") and k.endswith(".weight"):
            keys.append(k[len("in_projections."):-len(".weight")])
    if not keys:
        raise OfficialCheckpointError("no in_projections.<key>.weight in the state dict: not a GIFT checkpoint")
    return keys


def official_config(state_dict: dict, args: Optional[dict] = None) -> GiftConfig:
    """The :class:`GiftConfig` (``generator=linear``) equal to the checkpoint's generator; refuses the
    official variants this model cannot represent (hypernet blocks, activations, projection biases)."""
    args = args or {}
    block = _arg(args, "block_block_type", "simple_block")
    act = _arg(args, "block_act_layer", "identity")
    if block != "simple_block" or act not in (None, "identity"):
        raise OfficialCheckpointError(
            f"the checkpoint's generator is block type {block!r} with activation {act!r}; only the v2 default "
            "(simple_block, identity: ΔW = (W φᵀ) ψᵀ) maps onto generator=linear")
    if any(k.startswith("hypernets.") for k in state_dict):
        raise OfficialCheckpointError("the checkpoint has trained hypernet blocks; only simple_block maps onto "
                                      "generator=linear")
    biases = [k for k in state_dict if k.endswith(".bias") and k.split(".")[0] in ("in_projections", "out_projections")]
    if biases or _arg(args, "in_projection_bias", False) or _arg(args, "out_projection_bias", False):
        raise OfficialCheckpointError(f"projection biases are not supported by generator=linear: {biases}")
    keys = _projection_keys(state_dict)
    ranks = {state_dict[f"in_projections.{k}.weight"].shape[0] for k in keys}
    if len(ranks) != 1:
        raise OfficialCheckpointError(f"projections of different ranks {sorted(ranks)}")
    if keys == [SHARED_KEY]:
        targets = _arg(args, "target_modules")
        if not targets:
            raise OfficialCheckpointError("a shared_projection checkpoint needs its args to name the target modules")
    else:
        targets = keys
    rank = ranks.pop()
    if _arg(args, "rank", rank) != rank:
        raise OfficialCheckpointError(f"args say rank {_arg(args, 'rank')}, the projections have rank {rank}")
    return GiftConfig.linear(rank=rank, target_modules=tuple(t.replace(":", ".") for t in targets))


def convert_state_dict(state_dict: dict, gift: GiftModel, head: str = "0", classifier: bool = True) -> dict:
    """The official state dict under ``gift``'s own keys (generator head ``head``; the classifier to
    ``model.head`` when ``classifier``). Raises when a generator of ``gift`` gets no projection or a shape differs."""
    own = gift.state_dict()
    out, used = {}, set()
    for our_key in gift.generators:
        base = our_key.split("@")[0]  # groups of one target split by shape carry "@<shape>"
        src = SHARED_KEY if f"in_projections.{SHARED_KEY}.weight" in state_dict else base
        pairs = {
            f"generators.{our_key}.trunk.reduction.weight": f"in_projections.{src}.weight",
            f"generators.{our_key}.heads.{head}.recovery.weight": f"out_projections.{src}.weight",
        }
        for dst, name in pairs.items():
            if name not in state_dict:
                raise OfficialCheckpointError(f"the checkpoint has no {name} for our generator {our_key!r}")
            if dst not in own:
                raise OfficialCheckpointError(f"{dst} is not in the model (does it have generator head {head!r}?)")
            if tuple(own[dst].shape) != tuple(state_dict[name].shape):
                raise OfficialCheckpointError(f"{name} has shape {tuple(state_dict[name].shape)}, "
                                              f"the model's {dst} {tuple(own[dst].shape)}")
            out[dst] = state_dict[name]
            used.add(name)
    if classifier:
        for p in ("weight", "bias"):
            name = f"backbone.head.{p}"
            if name in state_dict:
                if tuple(own[f"model.head.{p}"].shape) != tuple(state_dict[name].shape):
                    raise OfficialCheckpointError(f"{name} has shape {tuple(state_dict[name].shape)}, the model's "
                                                  f"head {tuple(own[f'model.head.{p}'].shape)}")
                out[f"model.head.{p}"] = state_dict[name]
                used.add(name)
    unused = [k for k in state_dict if k not in used and not (k.startswith("backbone.head.") and not classifier)]
    if unused:
        raise OfficialCheckpointError(f"checkpoint keys with no place in the model: {unused[:8]}")
    return out


def load_official_into(gift: GiftModel, checkpoint: str | Path | dict, head: str = "0", classifier: bool = True) -> dict:
    """Copy an official checkpoint (path or :func:`load_official_checkpoint` dict) into ``gift``; returns the
    checkpoint dict (``metric``, ``args``, ...)."""
    ckpt = checkpoint if isinstance(checkpoint, dict) else load_official_checkpoint(checkpoint)
    state = convert_state_dict(ckpt["state_dict"], gift, head, classifier)
    with torch.no_grad():
        own = gift.state_dict()
        for k, v in state.items():
            own[k].copy_(v.to(own[k].dtype))
    return ckpt


def gift_model_from_official(path: str | Path, backbone: Optional[nn.Module] = None, pretrained: bool = True,
                             **timm_kwargs) -> tuple[GiftModel, dict]:
    """A :class:`GiftModel` equal to the official model of ``path``. ``backbone``: the timm model the
    checkpoint was trained on (its classifier is overwritten); by default ``timm.create_model(<the checkpoint's
    arch>, pretrained=pretrained)``, which needs the weights in the local HF cache when offline."""
    ckpt = load_official_checkpoint(path)
    sd = ckpt["state_dict"]
    if backbone is None:
        import timm

        arch = ckpt.get("arch") or ckpt["args"].get("model")
        if not arch:
            raise OfficialCheckpointError("the checkpoint names no architecture: pass backbone=")
        num_classes = sd["backbone.head.weight"].shape[0] if "backbone.head.weight" in sd else 0
        try:
            backbone = timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **timm_kwargs)
        except Exception as err:  # hub errors come in many types; offline they all mean "not cached"
            raise OfficialCheckpointError(
                f"could not build the checkpoint's backbone {arch!r} with pretrained={pretrained} "
                f"({type(err).__name__}). Offline, build it yourself, e.g. gift_cl.backbones.create_backbone("
                f"{arch!r}, num_classes={num_classes}, checkpoint='/path/to/weights.safetensors'), and pass backbone="
            ) from err
    gift = get_gift_model(backbone, official_config(sd, ckpt["args"]))
    load_official_into(gift, ckpt)
    return gift.eval(), ckpt
