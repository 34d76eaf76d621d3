"""OmegaConf resolvers used by the Hydra configs.

Import this module before resolving a config (``run.py`` does).

* ``${asset:vit_procedural.safetensors}``: the file shipped inside the installed package.
* ``${backbone_data:mean}`` (also ``std``, ``image_size``): what the backbone of the model node
  holding the interpolation expects, from timm's pretrained config of ``name`` + ``kwargs`` (or the
  ``data_config`` of a JSON next to a local ``checkpoint``); see
  :func:`gift_cl.backbones.backbone_data_config`. The model yamls say ``mean: ${backbone_data:mean}``,
  so benchmarks keep interpolating ``${model.mean}``, and an explicit ``model.mean=[...]`` (or
  ``model.image_size=...``) replaces the interpolation: the override wins.
"""
from omegaconf import DictConfig, OmegaConf

from .backbones import DATA_KEYS, asset_path, backbone_data_config


def _backbone_data(key: str, *, _parent_) -> object:
    if key not in DATA_KEYS:
        raise ValueError(f"${{backbone_data:{key}}}: expected one of {list(DATA_KEYS)}")
    model = _parent_
    if not isinstance(model, DictConfig) or model.get("name") is None:
        raise ValueError(f"${{backbone_data:{key}}} must sit in a model node with a timm `name` (and optional "
                         "`kwargs`, `checkpoint`); otherwise give the value explicitly")
    kwargs = model.get("kwargs")
    kwargs = OmegaConf.to_container(kwargs, resolve=True) if kwargs is not None else {}
    return backbone_data_config(str(model.name), kwargs, model.get("checkpoint"))[key]


OmegaConf.register_new_resolver("asset", asset_path, replace=True)
# not cached by OmegaConf: the key alone ("mean") does not identify the backbone; backbones.py caches
OmegaConf.register_new_resolver("backbone_data", _backbone_data, replace=True, use_cache=False)
