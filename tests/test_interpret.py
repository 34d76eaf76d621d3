"""Cluster maps are Y·C under the task's own residuals, for every generator; normalisations; cluster pick."""
import copy
import math

import pytest
import timm
import torch
import torch.nn.functional as F

from gift_cl import GiftConfig, get_gift_model
from gift_cl.interpret import (
    accuracy_gains,
    cluster_map_figure,
    cluster_maps,
    cluster_maps_by_layer,
    concept_matrix,
    concept_vectors,
    most_contrasted,
    normalize_maps,
    null_part,
    task_accuracies,
    untrained_concepts,
    untrained_head,
    untrained_trunk,
)


def tiny_vit(num_classes=3):
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                             depth=3, num_heads=2, num_classes=num_classes)


def two_head_gift(config):
    """A GiftModel with heads "0" and "1" whose recoveries ψ differ and are non-zero."""
    gift = get_gift_model(tiny_vit(), config, heads=("0", "1"))
    torch.manual_seed(1)
    for gen in gift.generators.values():
        for i, head in enumerate(gen.heads.values()):
            torch.nn.init.normal_(head.recovery.weight, std=0.05 * (i + 1))
    return gift.eval()


def layer_tokens_by_hand(gift, x, layer, deltas, pre_delta):
    """Y of ``layer`` in a plain copy of the backbone whose weights are W + ΔW (``deltas``): post-delta the
    layer's output, pre-delta ``x_l Wᵀ + b`` on the input ``x_l`` the layer receives in that adapted model."""
    plain = copy.deepcopy(gift.model)
    for name, layer_mod in gift.layers().items():  # replace each GiftLinear by its merged nn.Linear
        merged = torch.nn.Linear(layer_mod.base.in_features, layer_mod.base.out_features)
        with torch.no_grad():
            merged.weight.copy_(layer_mod.base.weight + deltas[name])
            merged.bias.copy_(layer_mod.base.bias)
        parent, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent), child, merged)
    seen = {}
    h = plain.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    with torch.no_grad():
        plain.eval()(x)
    h.remove()
    base = gift.model.get_submodule(layer).base
    return F.linear(seen["x"], base.weight, base.bias) if pre_delta else seen["y"]


def expected_maps(y, c, size=32, grid=4):
    maps = (y[:, 1:] @ c).transpose(1, 2).reshape(y.shape[0], c.shape[1], grid, grid)
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


@pytest.mark.parametrize("pre_delta", [False, True], ids=["post-delta", "pre-delta"])
def test_each_task_gets_maps_from_its_own_residuals_and_assignments(pre_delta):
    gift = two_head_gift(GiftConfig.paca(rank=16, depth=2, num_clusters=5))
    x = torch.randn(2, 3, 32, 32)
    layer = "blocks.2.attn.proj"  # deep enough that earlier layers' residuals change its input
    maps = {}
    for head in ("0", "1"):
        with torch.no_grad():
            deltas = gift.delta_weights(head)
        y = layer_tokens_by_hand(gift, x, layer, deltas, pre_delta)
        c = gift.cluster_assignments(head)[layer][0]  # the default block: the first
        maps[head] = cluster_maps(gift, x, layer, head=head, pre_delta=pre_delta)
        assert maps[head].shape == (2, 5, 32, 32)
        torch.testing.assert_close(maps[head], expected_maps(y, c), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(maps["0"], maps["1"])


def test_pre_delta_is_the_frozen_layer_on_the_adapted_input():
    gift = two_head_gift(GiftConfig.paca(rank=16, depth=1, num_clusters=4))
    x = torch.randn(1, 3, 32, 32)
    layers = list(gift.layers())
    post = cluster_maps_by_layer(gift, x, layers, head="1")
    pre = cluster_maps_by_layer(gift, x, layers, head="1", pre_delta=True)
    for layer in layers:
        assert not torch.allclose(pre[layer], post[layer])  # ΔW ≠ 0
    # the first target layer's input does not depend on any residual: its pre-delta maps are the frozen model's
    frozen = cluster_maps(gift, x, layers[0], head="1", pre_delta=True)
    with torch.no_grad():
        y = layer_tokens_by_hand(gift, x, layers[0], {n: torch.zeros(64, 64) for n in layers}, pre_delta=False)
    torch.testing.assert_close(frozen, expected_maps(y, gift.cluster_assignments("1")[layers[0]][-1]))
    assert not gift.training  # eval mode restored, not flipped


def official_process_cluster(x, cluster, size):
    """The official ``ClusterVisualizer.process_cluster`` + ``normalize`` (gift/vis_utils.py), restated:
    ``cluster`` (M, d_out) = (W φᵀ)ᵀ, ``x`` (N, d_out) one image's patch tokens."""
    attn = cluster @ x.T
    h = w = int(math.sqrt(attn.shape[-1]))
    attn = F.interpolate(attn.reshape(1, -1, h, w), size=size, mode="bilinear", align_corners=False)[0]
    lo, hi = attn.amin(dim=(1, 2), keepdim=True), attn.amax(dim=(1, 2), keepdim=True)
    attn = (attn - lo) / (hi - lo)
    return (attn < 0.5) * 0 + (attn > 0.5) * attn


@pytest.mark.parametrize("pre_delta", [False, True], ids=["post-delta", "pre-delta"])
def test_linear_generator_maps_follow_the_official_formula(pre_delta):
    gift = two_head_gift(GiftConfig.linear(rank=6))
    gen = gift.generators["attn:proj"]
    torch.nn.init.normal_(gen.trunk.reduction.weight, std=0.1)
    x = torch.randn(2, 3, 32, 32)
    layer = "blocks.1.attn.proj"
    base = gift.model.get_submodule(layer).base
    c = base.weight @ gen.trunk.reduction.weight.T  # W φᵀ: (d_out, r), one map per rank
    torch.testing.assert_close(concept_matrix(gift, layer), c)
    torch.testing.assert_close(concept_vectors(gift, layer, head="1"), c.T)  # φ is shared by the heads
    phi = gen.trunk.reduction.weight
    deltas = {n: (l.base.weight @ phi.T) @ gen.heads["1"].recovery.weight.T for n, l in gift.layers().items()}
    y = layer_tokens_by_hand(gift, x, layer, deltas, pre_delta)
    ours = normalize_maps(cluster_maps(gift, x, layer, head="1", pre_delta=pre_delta), "minmax")
    assert ours.shape == (2, 6, 32, 32)
    for i in range(2):
        official = official_process_cluster(y[i, 1:], c.T, (32, 32))
        torch.testing.assert_close(ours[i], official, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("block", ["attention", "mlp"])
def test_generators_without_assignments_draw_projection_or_hidden_maps(block):
    gift = two_head_gift(GiftConfig(rank=8, depth=2, block=block, positional_encoding=True))
    x = torch.randn(1, 3, 32, 32)
    layer = "blocks.0.attn.proj"
    auto = cluster_maps(gift, x, layer, head="1")
    torch.testing.assert_close(auto, cluster_maps(gift, x, layer, head="1", source="projection"))
    assert auto.shape == (1, 8, 32, 32)
    hidden = concept_matrix(gift, layer, head="1", source="hidden", block=0)
    assert hidden.shape == (64, 8) and not torch.allclose(hidden, concept_matrix(gift, layer))
    with pytest.raises(ValueError, match="no PaCa cluster assignments"):
        concept_matrix(gift, layer, source="assignment")


def test_normalisations():
    maps = torch.randn(2, 3, 8, 8) * 5 + 2
    z = normalize_maps(maps, "meanstd").flatten(-2)
    torch.testing.assert_close(z.mean(-1), torch.zeros(2, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(-1), torch.ones(2, 3))
    m = normalize_maps(maps, "minmax")
    assert bool(((m == 0) | (m > 0.5)).all()) and torch.isclose(m.amax((-2, -1)), torch.ones(2, 3)).all()


def test_most_contrasted_clusters_are_picked_on_raw_maps():
    torch.manual_seed(0)
    scales = torch.tensor([0.1, 5.0, 1.0, 3.0])
    maps = torch.randn(2, 4, 8, 8) * scales[None, :, None, None] + 7
    assert most_contrasted(maps, 2).tolist() == [1, 3]


def test_task_accuracies_read_the_results_schema():
    assert task_accuracies({"tasks": [{"name": "a"}], "final_accuracy": {"a": 0.3}}) == {"a": 0.3}


def test_untrained_head_is_fresh_inside_the_block_and_restored_after():
    gift = two_head_gift(GiftConfig(rank=8, depth=2, num_clusters=6))
    layer = list(gift.layers())[-1]
    trained = concept_vectors(gift, layer, "1")
    with untrained_head(gift, "1", seed=3):
        fresh = concept_vectors(gift, layer, "1")
        assert torch.equal(concept_vectors(gift, layer, "0"), concept_vectors(gift, layer, "0"))
    with untrained_head(gift, "1", seed=3):
        assert torch.equal(concept_vectors(gift, layer, "1"), fresh)  # the seed fixes the fresh head
    assert not torch.allclose(fresh, trained)
    assert torch.equal(concept_vectors(gift, layer, "1"), trained)
    assert all(gen.heads["1"].recovery.weight.abs().sum() > 0 for gen in gift.generators.values())


def test_untrained_trunk_redraws_phi_as_initialised_and_restores_it():
    """GIFT-linear's maps ``W φᵀ`` depend on the shared φ and on no head: an untrained head leaves them exactly
    as trained, so their null re-draws the trunk, as :class:`GeneratorTrunk` initialises it."""
    from gift_cl.gift import GeneratorTrunk

    config = GiftConfig.linear()
    gift = two_head_gift(config)
    layer = list(gift.layers())[-1]
    assert null_part(gift, layer) == "trunk"
    assert null_part(two_head_gift(GiftConfig(rank=8, depth=2, num_clusters=6)), layer) == "head"
    trained = concept_matrix(gift, layer, "1")
    assert torch.equal(untrained_concepts(gift, layer, "1", part="head")(4), trained)  # why the head null is void
    gen = next(iter(gift.generators.values()))
    phi = gen.trunk.reduction.weight.detach().clone()
    draw = untrained_concepts(gift, layer, "1", part="auto")
    fresh = draw(4)
    assert not torch.allclose(fresh, trained) and torch.equal(draw(4), fresh)  # the seed fixes the draw
    torch.manual_seed(4)
    expected = GeneratorTrunk(config, gen.d_in, gen.d_out).reduction.weight
    with untrained_trunk(gift, seed=4):
        assert torch.equal(gen.trunk.reduction.weight, expected)
    assert torch.equal(gen.trunk.reduction.weight, phi) and torch.equal(concept_matrix(gift, layer, "1"), trained)
    with pytest.raises(ValueError, match="part"):
        null_part(gift, layer, part="phi")


def test_cluster_map_figure_draws_images_and_the_most_contrasted_clusters():
    gift = two_head_gift(GiftConfig(rank=8, depth=2, num_clusters=6))
    x = torch.randn(2, 3, 32, 32)
    maps = cluster_maps(gift, x, list(gift.layers())[-1], "0")
    fig = cluster_map_figure(x, maps, (0.5,) * 3, (0.5,) * 3, "minmax", k=3, title="t")
    assert len(fig.axes) == 2 * 4 and fig.axes[1].get_title() == f"cluster {most_contrasted(maps, 3)[0].item()}"


def test_accuracy_gains_are_differences_of_final_accuracies():
    ours = {"final_accuracy": {"a": 0.9, "b": 0.5}}
    base = {"final_accuracy": {"a": 0.7, "c": 0.1}}
    assert accuracy_gains(ours, base) == pytest.approx({"a": 0.2})


def test_centred_maps_use_each_concept_minus_its_mean_over_tokens():
    gift = two_head_gift(GiftConfig(rank=8, depth=2, num_clusters=6))
    x, layer = torch.randn(2, 3, 32, 32), list(gift.layers())[-1]
    c = concept_matrix(gift, layer, "1")
    with torch.no_grad():
        y = layer_tokens_by_hand(gift, x, layer, gift.delta_weights("1"), pre_delta=False)
    expected = expected_maps(y, c - c.mean(0, keepdim=True))
    torch.testing.assert_close(cluster_maps(gift, x, layer, "1", center=True), expected, atol=1e-4, rtol=1e-4)
