"""Backbones: offline checkpoints through timm's overlay path, and clear errors otherwise."""
import pytest
import timm
import torch

from gift_cl.atomic import save_safetensors
from gift_cl.backbones import BackboneError, check_backbone, create_backbone

KW = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


@pytest.mark.parametrize("suffix", ["safetensors", "pth"])
def test_local_checkpoint_loads_backbone_and_adapts_head(tmp_path, suffix):
    torch.manual_seed(0)
    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=1000, **KW)
    path = tmp_path / f"weights.{suffix}"
    if suffix == "pth":
        torch.save({"state_dict": source.state_dict()}, path)
    else:
        save_safetensors(source.state_dict(), path)
    model = create_backbone("vit_tiny_patch16_224", num_classes=7, checkpoint=str(path), kwargs=KW)
    assert model.head.out_features == 7
    for name, p in source.state_dict().items():
        if not name.startswith("head."):
            assert torch.equal(model.state_dict()[name], p), name


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(BackboneError, match="not found: .*nothing.pth"):
        create_backbone("vit_tiny_patch16_224", num_classes=3, checkpoint=str(tmp_path / "nothing.pth"), kwargs=KW)


def test_unreachable_hub_says_how_to_go_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(BackboneError, match="model.checkpoint="):
        create_backbone("vit_tiny_patch16_224.augreg_in21k", num_classes=3, pretrained=True, kwargs=KW)


def test_unknown_model_name():
    with pytest.raises(BackboneError, match="unknown timm model"):
        create_backbone("vit_gigantic_patch99", num_classes=3)


def test_an_unknown_model_key_is_an_error_naming_it_and_the_allowed_keys():
    """A misspelt ``model.*`` key (``+model.chekpoint=...``) would otherwise build a random backbone silently;
    the data-side keys of a model config (image_size, mean, std) are accepted."""
    needle = (r"model.chekpoint: unknown key \(did you mean model.checkpoint\?\); a model config has only name, "
              r"pretrained, checkpoint, kwargs, image_size, mean, std")
    for build in (lambda **k: create_backbone(num_classes=3, **k), check_backbone):
        with pytest.raises(BackboneError, match=needle):
            build(name="vit_tiny_patch16_224", kwargs=KW, chekpoint="x.pth")
    model = create_backbone("vit_tiny_patch16_224", num_classes=3, kwargs=KW, image_size=32, mean=[0.5] * 3,
                            std=[0.5] * 3)
    assert model.head.out_features == 3


def test_shipped_backbone_is_small_and_loads():
    from gift_cl.backbones import asset_path
    from gift_cl.pretrain import ARCH, ARCH_KWARGS

    path = asset_path("vit_procedural.safetensors")
    import os

    assert os.path.getsize(path) < 5 * 2**20
    model = create_backbone(ARCH, num_classes=10, checkpoint=path, kwargs=ARCH_KWARGS)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
