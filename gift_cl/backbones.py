"""Backbones: a timm name, pretrained from the hub when online or from a local checkpoint file offline.

The project's own small "pretrained" ViT (trained on the held-out procedural upstream domains by
``python -m gift_cl.pretrain``) ships as ``gift_cl/assets/vit_procedural.safetensors`` and loads
through exactly the same local-checkpoint path a user with real ViT-B weights takes.
"""
from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Optional

import timm
from torch import nn

ASSETS = Path(__file__).parent / "assets"


class BackboneError(RuntimeError):
    """The backbone cannot be built: says which source was tried and what to do instead."""


def asset_path(name: str) -> str:
    return str(ASSETS / name)


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    checkpoint: Optional[str] = None,
    kwargs: Optional[dict] = None,
    **_ignored,
) -> nn.Module:
    """Build a timm model with a fresh ``num_classes`` head.

    - ``checkpoint``: a local ``.pth``/``.safetensors`` file loaded offline through timm's
      ``pretrained_cfg_overlay=dict(file=...)``; the head is re-initialised and position embeddings
      (and even patch size) are resampled to ``kwargs`` by timm.
    - ``pretrained=True`` without a checkpoint: the timm hub weights (needs network or a warm HF cache).
    - neither: random initialisation (tests and from-scratch runs).
    Extra keys (``image_size``, ``mean``, ``std``) belong to the data side and are ignored here.
    """
    kwargs = dict(kwargs or {})
    if not timm.is_model(name.split(".")[0]):
        raise BackboneError(f"unknown timm model {name!r}")
    if checkpoint:
        path = Path(os.path.expanduser(str(checkpoint)))
        if not path.is_file():
            raise BackboneError(
                f"backbone checkpoint not found: {path}. Expected a .pth or .safetensors state dict for {name!r}"
                + (" (create the project backbone with `python -m gift_cl.pretrain`)" if ASSETS in path.parents else "")
            )
        return timm.create_model(
            name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=dict(file=str(path.resolve())), **kwargs
        )
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
        except Exception as err:  # hub errors come in many types; all mean the same to the user
            raise BackboneError(
                f"could not load pretrained weights for {name!r} from the hub ({type(err).__name__}: {err}). "
                f"Offline, download the weights elsewhere and pass model.checkpoint=/path/to/file.(pth|safetensors)"
            ) from err
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


# ----------------------------------------------------------------------------- data config
DATA_KEYS = ("image_size", "mean", "std")


def _img_size(kwargs: dict) -> Optional[int]:
    size = kwargs.get("img_size")
    if size is None:
        return None
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise BackboneError(f"img_size={list(size)}: only square inputs are supported")
        size = size[0]
    return int(size)


def _checkpoint_data_config(checkpoint: Optional[str]) -> dict:
    """``data_config`` from a JSON next to a local checkpoint (``<stem>.json``), if it has one."""
    if not checkpoint:
        return {}
    path = Path(os.path.expanduser(str(checkpoint))).with_suffix(".json")
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise BackboneError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None
    cfg = doc.get("data_config", {}) if isinstance(doc, dict) else {}
    return {k: cfg[k] for k in DATA_KEYS if k in cfg}


@lru_cache(maxsize=32)
def _timm_data_config(name: str, kwargs_json: str) -> tuple:
    """timm's data config of ``name`` built with ``kwargs``: on the meta device, so no weights, no memory."""
    import torch
    from timm.data import resolve_model_data_config

    kwargs = json.loads(kwargs_json)
    if not timm.is_model(name.split(".")[0]):
        raise BackboneError(f"unknown timm model {name!r}")
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        cfg = resolve_model_data_config(model)
    except Exception:  # some architectures cannot be built on the meta device: use the registry entry
        pcfg = timm.get_pretrained_cfg(name)
        if pcfg is None:
            raise BackboneError(f"timm has no pretrained config for {name!r}; set model.mean/std/image_size") from None
        cfg = {"input_size": pcfg.input_size, "mean": pcfg.mean, "std": pcfg.std}
    return int(cfg["input_size"][-1]), tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"])


def backbone_data_config(name: str, kwargs: Optional[dict] = None, checkpoint: Optional[str] = None) -> dict:
    """The input size and normalisation a backbone expects: ``{"image_size", "mean", "std"}``.

    In order of precedence: the ``data_config`` of a JSON next to a local ``checkpoint`` (how those
    weights were trained; the shipped ``vit_procedural.json`` has one), then ``kwargs["img_size"]``
    for the size (timm keeps the pretrained config's 224 when a ViT is built at another size), then
    timm's pretrained config of ``name`` (its tag decides: ``.augreg_in21k`` -> 0.5/0.5,
    ``deit_*.fb_in1k`` -> ImageNet mean/std). No weights are loaded and nothing is downloaded.
    """
    kwargs = dict(kwargs or {})
    size, mean, std = _timm_data_config(str(name), json.dumps(kwargs, sort_keys=True, default=str))
    out = {"image_size": _img_size(kwargs) or size, "mean": list(mean), "std": list(std)}
    out.update(_checkpoint_data_config(checkpoint))
    out["image_size"] = int(out["image_size"])
    out["mean"] = [float(m) for m in out["mean"]]
    out["std"] = [float(s) for s in out["std"]]
    return out
