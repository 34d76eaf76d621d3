"""OmegaConf resolvers used by the Hydra configs, and safe instantiation of configuration targets."""
import importlib

from omegaconf import DictConfig, ListConfig, OmegaConf

from .backbones import asset_path

# ${asset:vit_procedural.safetensors} -> the file shipped inside the installed package
OmegaConf.register_new_resolver("asset", asset_path, replace=True)

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


