"""OmegaConf resolvers used by the Hydra configs."""
from omegaconf import OmegaConf

from .backbones import asset_path

# ${asset:vit_procedural.safetensors} -> the file shipped inside the installed package
OmegaConf.register_new_resolver("asset", asset_path, replace=True)
