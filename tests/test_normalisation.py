"""Input size and mean/std come from the backbone (timm's pretrained config) unless the config overrides them."""
import json
import os

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gift_cl.backbones import BackboneError, backbone_data_config
from gift_cl.config import register_resolvers

register_resolvers()  # ${backbone_data:...}

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "configs"))
HALF = [0.5, 0.5, 0.5]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def compose_cfg(*overrides):
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        return compose("config", overrides=list(overrides))


def test_paper_backbone_uses_timm_half_stats():
    cfg = compose_cfg("model=vit_b16_in21k", "benchmark=avalanche/split_cifar100")
    assert list(cfg.model.mean) == HALF and list(cfg.model.std) == HALF and cfg.model.image_size == 224
    # benchmarks see the backbone's values through ${model.*}
    assert list(cfg.benchmark.mean) == HALF and cfg.benchmark.image_size == 224


def test_imagenet_stats_backbone_differs():
    cfg = compose_cfg("model=vit_b16_in21k", "model.name=deit_tiny_patch16_224.fb_in1k", "model.kwargs={}")
    assert list(cfg.model.mean) == pytest.approx(IMAGENET_MEAN)
    assert list(cfg.model.std) == pytest.approx(IMAGENET_STD)
    assert list(cfg.model.mean) != HALF
    assert backbone_data_config("vit_base_patch16_clip_224.openai")["mean"] == pytest.approx(
        [0.48145466, 0.4578275, 0.40821073])


def test_explicit_override_wins():
    cfg = compose_cfg("model=vit_b16_in21k", "model.mean=[0.1,0.2,0.3]", "model.std=[1,1,1]", "model.image_size=96",
                      "benchmark=avalanche/split_mnist")
    assert list(cfg.model.mean) == [0.1, 0.2, 0.3] and list(cfg.model.std) == [1, 1, 1]
    assert list(cfg.benchmark.mean) == [0.1, 0.2, 0.3] and cfg.benchmark.image_size == 96
    resolved = OmegaConf.to_container(cfg.model, resolve=True)  # what create_backbone receives
    assert resolved["image_size"] == 96


def test_image_size_follows_kwargs_and_shipped_backbone_json():
    cfg = compose_cfg("model=vit_tiny_random")
    assert cfg.model.image_size == 32 and list(cfg.model.mean) == HALF  # kwargs.img_size, timm's vit_tiny stats
    cfg = compose_cfg("model=vit_procedural")
    assert cfg.model.image_size == 32 and list(cfg.model.std) == HALF
    assert backbone_data_config("vit_tiny_patch16_224", {"img_size": 64})["image_size"] == 64


def test_checkpoint_json_carries_its_data_config(tmp_path):
    ckpt = tmp_path / "mine.safetensors"
    ckpt.write_bytes(b"")  # only the JSON next to it is read
    (tmp_path / "mine.json").write_text(json.dumps({"data_config": {"mean": [0.2, 0.3, 0.4], "image_size": 48}}))
    out = backbone_data_config("vit_tiny_patch16_224", {"img_size": 32}, str(ckpt))
    assert out == {"image_size": 48, "mean": [0.2, 0.3, 0.4], "std": HALF}
    cfg = compose_cfg("model=vit_tiny_random", f"model.checkpoint={ckpt}")
    assert list(cfg.model.mean) == [0.2, 0.3, 0.4] and cfg.model.image_size == 48


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(BackboneError, match="unknown timm model"):
        backbone_data_config("vit_gigantic_patch99")
