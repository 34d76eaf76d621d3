"""OmegaConf resolvers used by the Hydra configs, and safe instantiation of configuration targets.

Import this module before resolving a config (``run.py`` does).

* ``${asset:vit_procedural.safetensors}``: the file shipped inside the installed package.
* ``${backbone_data:mean}`` (also ``std``, ``image_size``): what the backbone of the model node
  holding the interpolation expects, from timm's pretrained config of ``name`` + ``kwargs`` (or the
  ``data_config`` of a JSON next to a local ``checkpoint``); see
  :func:`gift_cl.backbones.backbone_data_config`. The model yamls say ``mean: ${backbone_data:mean}``,
  so benchmarks keep interpolating ``${model.mean}``, and an explicit ``model.mean=[...]`` (or
  ``model.image_size=...``) replaces the interpolation: the override wins.
"""
import importlib

from omegaconf import DictConfig, ListConfig, OmegaConf

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

SAFE_TARGET_PREFIXES = ("gift_cl.", "strategies.")


class ConfigError(ValueError):
    """A configuration value is wrong: names the key, the value and what is allowed."""


def resolve_target(target: str, where: str):
    """The class or function a ``_target_`` names, if it is one of this project's."""
    if not isinstance(target, str) or not target.startswith(SAFE_TARGET_PREFIXES):
        raise ConfigError(f"{where}._target_={target!r}: only gift_cl.* and strategies.* targets may be "
                          f"instantiated from a configuration")
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"{where}._target_={target!r}: no such class or function") from None


def safe_instantiate(node: DictConfig, *args, where: str = "config", **kwargs):
    """Instantiate a ``_target_`` node read from disk (a run's saved configuration): only this project's
    classes, recursively, so a crafted file cannot make us call arbitrary code."""
    def visit(n, path):
        if isinstance(n, DictConfig):
            if "_target_" in n:
                resolve_target(n._target_, path)
            for k, v in n.items():
                visit(v, f"{path}.{k}")
        elif isinstance(n, ListConfig):
            for i, v in enumerate(n):
                visit(v, f"{path}[{i}]")

    visit(node, where)
    from hydra.utils import instantiate

    return instantiate(node, *args, **kwargs)


