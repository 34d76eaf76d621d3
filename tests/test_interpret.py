"""Cluster maps are Y·C on the patch grid; normalisations; concept reuse."""
import timm
import torch

from gift_cl import GiftConfig, get_gift_model
from gift_cl.interpret import assignment_vectors, cluster_maps, normalize_maps, reuse_matrix, shared_concepts


def gift_model():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                            depth=2, num_heads=2, num_classes=3)
    gift = get_gift_model(vit, GiftConfig.paca(rank=16, depth=2, num_clusters=5))
    torch.nn.init.normal_(gift.generators["attn:proj"].heads["0"].recovery.weight, std=0.05)
    return gift.eval()


def test_maps_are_layer_output_times_assignment():
    gift = gift_model()
    x = torch.randn(2, 3, 32, 32)
    layer = "blocks.1.attn.proj"
    captured = {}
    h = gift.model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.setdefault("y", o))
    with torch.no_grad():
        gift(x)
    h.remove()
    c = gift.cluster_assignments()[layer][-1]
    expected = (captured["y"][:, 1:] @ c).transpose(1, 2).reshape(2, 5, 4, 4)
    maps = cluster_maps(gift, x, layer, block=-1)
    assert maps.shape == (2, 5, 32, 32)
    upsampled = torch.nn.functional.interpolate(expected, size=32, mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, upsampled)
    pre = cluster_maps(gift, x, layer, pre_delta=True)
    assert not torch.allclose(pre, maps)  # ΔW ≠ 0 changes the layer output


def test_normalisations():
    maps = torch.randn(2, 3, 8, 8) * 5 + 2
    z = normalize_maps(maps, "meanstd").flatten(-2)
    torch.testing.assert_close(z.mean(-1), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(-1), torch.ones(2, 3))
    m = normalize_maps(maps, "minmax")
    assert bool(((m == 0) | (m > 0.5)).all()) and torch.isclose(m.amax((-2, -1)), torch.ones(2, 3)).all()


def test_concept_reuse_of_a_task_with_itself_is_one():
    gift = gift_model()
    v = assignment_vectors(gift, "0", "blocks.0.attn.proj")
    names, r = reuse_matrix({"a": v, "b": v.flip(0), "c": torch.nn.functional.normalize(torch.rand(5, 64), dim=-1)})
    assert names == ["a", "b", "c"]
    assert abs(r[0, 0] - 1) < 1e-6 and abs(r[0, 1] - 1) < 1e-6 and r[0, 2] < 1
    concepts = shared_concepts({"a": v, "b": v}, num_concepts=3)
    assert concepts["a"] == concepts["b"] and sum(concepts["a"]) == 5
