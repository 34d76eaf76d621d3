"""Backbones: a timm name, pretrained from the hub when online or from a local checkpoint file offline.

The project's own small "pretrained" ViT (trained on the held-out procedural upstream domains by
``python -m gift_cl.pretrain``) ships as ``gift_cl/assets/vit_procedural.safetensors`` and loads
through exactly the same local-checkpoint path a user with real ViT-B weights takes.
"""
from __future__ import annotations

import os
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
