"""Multi-task models: per-task heads, padding, trunk policies, task-id inference."""
import pytest
import torch

from gift_cl import GiftConfig
from gift_cl.methods import (
    PAD_LOGIT,
    FullFinetune,
    GiftMethod,
    LinearProbe,
    LoraMethod,
    SharedBackbone,
)
from gift_cl.optim import OptimConfig, build_optimizer

from runs import tiny_vit


def gift_mt(trunk="frozen_after_first", **kw):
    return GiftMethod(tiny_vit(), GiftConfig.paca(rank=16, depth=2, num_clusters=4), trunk=trunk, **kw)


def train_steps(model, task, x, steps=3, lr=1e-2):
    model.begin_task([task])
    opt = build_optimizer(model, OptimConfig(lr=lr, weight_decay=0.0))
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(x, task), torch.zeros(len(x), dtype=torch.long))
        loss = loss + model.penalty()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.end_task(task, model.frozen_features(x).mean(0).detach())
    model.eval()


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(6, 3, 32, 32)


def test_frozen_after_first_keeps_old_tasks_bitwise(x):
    model = gift_mt("frozen_after_first")
    model.add_task(0, 3)
    train_steps(model, 0, x)
    with torch.no_grad():
        before = model(x, 0).clone()
        delta_before = model.gift.delta_weights("0")
    for t in (1, 2):
        model.add_task(t, 5)
        train_steps(model, t, x)
    with torch.no_grad():
        assert torch.equal(model(x, 0), before)
        for k, v in model.gift.delta_weights("0").items():
            assert torch.equal(v, delta_before[k])
    counts = model.trainable_parameter_count()
    assert counts["per_task"][1] > 0 and counts["shared"] > 0


def test_free_trunk_changes_old_tasks(x):
    model = gift_mt("free")
    model.add_task(0, 3)
    train_steps(model, 0, x)
    with torch.no_grad():
        before = model(x, 0).clone()
    model.add_task(1, 3)
    train_steps(model, 1, x)
    with torch.no_grad():
        assert not torch.equal(model(x, 0), before)


def test_anchored_penalty_is_zero_at_the_anchor_and_grows_with_drift(x):
    model = gift_mt("anchored", anchor_weight=10.0)
    model.add_task(0, 3)
    train_steps(model, 0, x)
    assert model.penalty() == 0 or float(model.penalty()) == 0.0
    with torch.no_grad():
        for gen in model.gift.generators.values():
            gen.trunk.reduction.weight.mul_(1.5)
    assert float(model.penalty()) > 0


def test_anchored_forgets_less_than_free(x):
    drift = {}
    for trunk, weight in (("free", 0.0), ("anchored", 100.0)):
        model = gift_mt(trunk, anchor_weight=weight)
        model.add_task(0, 3)
        train_steps(model, 0, x)
        with torch.no_grad():
            before = model.gift.delta_weights("0")
        model.add_task(1, 3)
        train_steps(model, 1, x, steps=5)
        with torch.no_grad():
            after = model.gift.delta_weights("0")
        drift[trunk] = sum((after[k] - before[k]).norm() for k in before)
    assert drift["anchored"] < drift["free"]


def test_mixed_batch_pads_with_large_negative_and_generates_once_per_task(x):
    model = gift_mt()
    model.add_task(0, 2)
    model.add_task(1, 5)
    calls = []
    for gen in model.gift.generators.values():
        gen.register_forward_hook(lambda *a: calls.append(1))
    model.train()
    labels = torch.tensor([0, 1, 0, 1, 1, 0])
    out = model(x, labels)
    assert out.shape == (6, 5)
    assert 1 <= len(calls) <= 2  # the tasks' residuals in one batched call (or one per task), never per sample
    assert bool((out[labels == 0, 2:] == PAD_LOGIT).all())
    with torch.no_grad():  # one backbone pass for the mixed batch: equal to per-task passes up to rounding
        assert torch.allclose(out[labels == 1], model(x[labels == 1], 1), atol=1e-5, rtol=1e-5)
        assert torch.allclose(out[labels == 0, :2], model(x[labels == 0], 0), atol=1e-5, rtol=1e-5)


def test_per_task_clusters_and_shared_clusters():
    own = gift_mt()
    own.add_task(0, 2)
    own.add_task(1, 2)
    gen = own.gift.generators["attn:proj"]
    assert gen.heads["0"].clusters[0] is not gen.heads["1"].clusters[0]
    assert len(own.gift.cluster_assignments("1")["blocks.0.attn.proj"]) == 2
    shared = gift_mt(per_task_clusters=False)
    shared.add_task(0, 2)
    shared.add_task(1, 2)
    gen = shared.gift.generators["attn:proj"]
    assert gen.heads["0"].clusters is gen.heads["1"].clusters
    own_ids = {id(p) for p in shared.task_parameters(1)}
    assert not any(id(p) in own_ids for p in gen.heads["0"].clusters.parameters())


@pytest.mark.parametrize("cls", [LinearProbe, LoraMethod, FullFinetune, SharedBackbone])
def test_baseline_models_route_by_task_and_keep_frozen_features(cls, x):
    model = cls(tiny_vit())
    frozen = model.frozen_features(x).detach().clone()
    model.add_task(0, 3)
    model.add_task(1, 4)
    train_steps(model, 0, x)
    train_steps(model, 1, x)
    with torch.no_grad():
        assert model(x, 0).shape == (6, 3) and model(x, 1).shape == (6, 4)
        assert torch.equal(model.frozen_features(x), frozen)  # the task-id path never trains


def test_task_inference_picks_the_nearest_mean():
    model = LinearProbe(tiny_vit())
    torch.manual_seed(3)
    a, b = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32) * 3 + 2
    model.add_task(0, 2)
    model.add_task(1, 2)
    with torch.no_grad():
        model.end_task(0, model.frozen_features(a).mean(0))
        model.end_task(1, model.frozen_features(b).mean(0))
        assert model.infer_task(a).tolist() == [0] * 8
        assert model.infer_task(b).tolist() == [1] * 8


@pytest.mark.parametrize("cls", [LinearProbe, SharedBackbone, GiftMethod])
def test_forward_all_tasks_equals_each_head(cls, x):
    model = cls(tiny_vit()) if cls is not GiftMethod else gift_mt()
    model.add_task(0, 3)
    model.add_task(1, 4)
    model.known_train_tasks_labels = {0, 1}
    model.eval()
    with torch.no_grad():
        everything = model(x, None)
        assert sorted(everything) == [0, 1]
        for t in (0, 1):
            assert torch.equal(everything[t], model(x, t))


def test_mixed_task_batch_is_one_backbone_pass_equal_to_per_task_passes(x):
    model = gift_mt("free")
    for t, c in ((0, 3), (1, 5), (2, 4)):
        model.add_task(t, c)
        train_steps(model, t, x)
    labels = torch.tensor([2, 0, 1, 1, 0, 2])
    passes = {"n": 0}
    handle = model.gift.model.patch_embed.register_forward_hook(lambda *a: passes.__setitem__("n", passes["n"] + 1))
    with torch.no_grad():
        mixed = model(x, labels)
        assert passes["n"] == 1
        for t in (0, 1, 2):
            idx = (labels == t).nonzero(as_tuple=True)[0]
            single = model(x[idx], t)
            assert torch.allclose(mixed[idx, : single.shape[1]], single, atol=1e-5, rtol=1e-5)
            assert bool((mixed[idx, single.shape[1]:] == PAD_LOGIT).all())
    handle.remove()
