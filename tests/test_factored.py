"""The factored residual ``(x ψ) hᵀ`` against the dense ``x ΔWᵀ`` it replaces, and mixed-task batches."""
import copy

import pytest
import torch
import torch.nn.functional as F

from gift_cl import GiftConfig, get_gift_model, residual
from gift_cl.residual import LowRank, Mixed, apply_residual, factored_linear
from gift_cl.tuner import factored_is_cheaper

from runs import tiny_vit

VIT = dict(depth=3, num_classes=5)  # the backbone of these tests: three blocks, a 5-way head
CONFIGS = {
    "paca": GiftConfig.paca(rank=16, num_clusters=8, num_heads=2),
    "paca1": GiftConfig.paca(rank=16, num_clusters=8, num_heads=1),  # the folded single-head PaCa
    "linear": GiftConfig.linear(),
    "attention": GiftConfig.paca(rank=16, block="attention", num_heads=2),
    "mlp": GiftConfig.paca(rank=16, block="mlp"),
}
TARGETS = [("attn.proj",), ("attn.qkv", "attn.proj", "mlp.fc1")]  # square, and 64→192, 64→128 non-square
TOL = dict(rtol=1e-5, atol=1e-5)


def make(name, targets=("attn.proj",), residual="factored", heads=("0",)):
    cfg = GiftConfig(**{**CONFIGS[name].__dict__, "target_modules": targets})
    return get_gift_model(tiny_vit(**VIT), cfg, heads=heads, residual=residual)


def randomize(gift, seed=1, std=0.05):
    """Non-zero ψ (and distinct heads), so the residual and every gradient are non-trivial."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for gen in gift.generators.values():
            for head in gen.heads.values():
                torch.nn.init.normal_(head.recovery.weight, std=std)
                for c in head.clusters:
                    c.cluster.bias.normal_()


def twin(gift, residual):
    """An identical copy of ``gift`` that hands its layers residuals in another form."""
    clone = copy.deepcopy(gift)
    clone.residual_mode = residual
    return clone


@pytest.fixture
def x():
    torch.manual_seed(2)
    return torch.randn(6, 3, 32, 32)


def assert_grads_close(got, ref):
    """Gradients to a tolerance relative to the gradients' scale: some are zero up to rounding (e.g. the last
    generator bias: every reader of the residual stream is a LayerNorm, blind to constant shifts)."""
    assert sorted(got) == sorted(ref)
    atol = 1e-5 * max(float(g.abs().max()) for g in ref.values())
    for n in got:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=atol, msg=lambda m, n=n: f"{n}: {m}")


def trainable_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}


# ----------------------------------------------------------------------------------- the op itself
@pytest.mark.parametrize("bounds, fold", [(None, True), (None, False), ((0, 2, 3, 5), False)])
def test_factored_linear_gradcheck(bounds, fold):
    """The hand-written backward (∂x = gW + (gh)ψᵀ, ∂h = gᵀ(xψ), ∂ψ = xᵀ(gh), ∂W, ∂b) against finite differences,
    on a non-contiguous input, for one head and for three head groups."""
    torch.manual_seed(0)
    k = 1 if bounds is None else len(bounds) - 1
    d = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(5, 7, 4, dtype=torch.float64).transpose(1, 2).requires_grad_()  # (5, 4, 7), non-contiguous
    w, b = torch.randn(6, 7, **d), torch.randn(6, **d)
    hs = [torch.randn(6, 3, **d) for _ in range(k)]
    psis = [torch.randn(7, 3, **d) for _ in range(k)]
    fn = lambda x, w, b, *f: factored_linear(x, w, b, f[:k], f[k:], bounds, fold)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b, *hs, *psis))
    out = fn(x, w, b, *hs, *psis)
    rows = [(0, 5)] if bounds is None else list(zip(bounds[:-1], bounds[1:]))
    ref = torch.cat([F.linear(x[s:e], w + h @ p.T, b) for (s, e), h, p in zip(rows, hs, psis)])
    torch.testing.assert_close(out, ref)


def test_factored_linear_zero_psi_adds_an_exact_zero():
    torch.manual_seed(0)
    base = torch.nn.Linear(64, 96)
    x = torch.randn(3, 17, 64)
    h, psi = torch.randn(96, 16), torch.zeros(64, 16)
    for fold in (True, False):
        assert torch.equal(factored_linear(x, base.weight, base.bias, [h], [psi], fold=fold), base(x))
    assert torch.equal(apply_residual(base, x, LowRank(h, psi)), base(x))
    mixed = Mixed((LowRank(h, psi), LowRank(-h, psi)), (0, 1, 3))
    assert torch.equal(apply_residual(base, x, mixed), base(x))


def test_bad_bounds_are_refused():
    base = torch.nn.Linear(4, 4)
    f = LowRank(torch.zeros(4, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="bounds"):
        apply_residual(base, torch.randn(3, 4), Mixed((f, f), (0, 1, 2)))


# ----------------------------------------------------------------------------------- factored == dense
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("fold", [True, False], ids=["folded", "additive"])
def test_factored_equals_dense_forward_and_gradients(name, targets, fold, x, monkeypatch):
    monkeypatch.setattr(residual, "exact_fp32_matmul", lambda x: fold)  # additive: as under TF32/bf16
    fac = make(name, targets).train()
    randomize(fac)
    dense = twin(fac, "dense")
    assert {fac.residual_form(k) for k in fac.groups} == {"factored"}
    assert {dense.residual_form(k) for k in dense.groups} == {"dense"}
    out_f, out_d = fac(x), dense(x)
    torch.testing.assert_close(out_f, out_d, **TOL)
    assert not torch.equal(out_f, tiny_vit(**VIT)(x))  # the residual is really there
    out_f.logsumexp(-1).sum().backward()
    out_d.logsumexp(-1).sum().backward()
    g_f, g_d = trainable_grads(fac), trainable_grads(dense)
    assert any("reduction" in n for n in g_f)
    assert_grads_close(g_f, g_d)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("targets", TARGETS)
@pytest.mark.parametrize("fold", [True, False], ids=["folded", "additive"])
def test_factored_init_is_bitwise_the_frozen_model(name, targets, fold, x, monkeypatch):
    monkeypatch.setattr(residual, "exact_fp32_matmul", lambda x: fold)
    with torch.no_grad():
        ref = tiny_vit(**VIT)(x)
    gift = make(name, targets, heads=("0", "1"))
    assert torch.equal(gift.train()(x).detach(), ref)
    with torch.no_grad():
        assert torch.equal(gift.eval()(x), ref)
        assert torch.equal(gift(x, head=["0", "1"], sample_head=torch.tensor([1, 0, 1, 1, 0, 0])), ref)


def test_merge_of_a_factored_model_matches(x):
    gift = make("paca1", TARGETS[1]).eval()
    randomize(gift)
    with torch.no_grad():
        unmerged = gift(x)
        merged = gift.merged_copy()(x)
    torch.testing.assert_close(merged, unmerged, **TOL)


def test_dense_delta_weights_equal_the_factors():
    gift = make("paca", TARGETS[1])
    randomize(gift)
    with torch.no_grad():
        dense, factors = gift.delta_weights(), gift.generate()
        for n, f in factors.items():
            assert isinstance(f, LowRank)
            torch.testing.assert_close(f.dense(), dense[n], rtol=1e-6, atol=1e-7)
            assert torch.equal(gift.layers()[n].merged().weight, gift.layers()[n].base.weight)  # nothing handed


def test_auto_form_follows_the_flop_count():
    for folded in (True, False):
        assert factored_is_cheaper(768, 768, 48, folded) and factored_is_cheaper(768, 768, 192, folded)
    assert factored_is_cheaper(64, 64, 48, folded=True) and not factored_is_cheaper(64, 64, 48, folded=False)
    assert not factored_is_cheaper(64, 64, 56, folded=True)
    cfg = GiftConfig.paca(rank=56, num_clusters=8, num_heads=2, target_modules=["attn.proj", "mlp.fc1"])
    gift = get_gift_model(tiny_vit(**VIT), cfg, heads=("0", "1"))
    assert gift.residual_form("attn:proj") == "dense" and gift.residual_form("mlp:fc1") == "factored"
    assert gift.residual_form("attn:proj", mixed=True) == "dense"
    gift = get_gift_model(tiny_vit(**VIT), GiftConfig.paca(rank=48, num_clusters=8), heads=("0", "1"))
    assert gift.residual_form("attn:proj") == "factored" and gift.residual_form("attn:proj", mixed=True) == "dense"
    torch.manual_seed(2)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # auto picks forms per call; the results agree
        single = gift(x, head="1")
        mixed = gift(x, head=["0", "1"], sample_head=torch.tensor([1, 1, 0, 1]))
        torch.testing.assert_close(mixed[[0, 1, 3]], single[[0, 1, 3]], **TOL)
    with pytest.raises(ValueError, match="residual form"):
        get_gift_model(tiny_vit(**VIT), GiftConfig.linear(), residual="sparse")


# ----------------------------------------------------------------------------------- mixed-task batches
HEADS = ("0", "1", "2", "3")


@pytest.mark.parametrize("name", ["paca", "paca1", "linear"])
@pytest.mark.parametrize("residual", ["factored", "dense"])
def test_mixed_batch_equals_each_head_separately(name, residual, x):
    """One backbone pass over a batch spanning three of four heads (unsorted, one head absent) equals running
    each head's sub-batch on its own: outputs, and the gradients of every head's and the trunk's parameters."""
    gift = make(name, TARGETS[1], residual=residual, heads=HEADS).train()
    randomize(gift)
    sep = twin(gift, residual)
    sample_head = torch.tensor([2, 0, 3, 2, 0, 2])
    out = gift(x, head=list(HEADS), sample_head=sample_head)
    ref = torch.empty_like(out)
    loss_ref = 0.0
    for k in sample_head.unique().tolist():
        idx = (sample_head == k).nonzero(as_tuple=True)[0]
        o = sep(x[idx], head=HEADS[k])
        ref[idx] = o.detach()
        loss_ref = loss_ref + o.logsumexp(-1).sum()
    torch.testing.assert_close(out, ref, **TOL)
    out.logsumexp(-1).sum().backward()
    loss_ref.backward()
    g_mix, g_sep = trainable_grads(gift), trainable_grads(sep)
    assert not any(".heads.1." in n for n in g_mix)  # the absent head is not even generated
    assert_grads_close(g_mix, g_sep)


def test_mixed_batch_api_edge_cases(x):
    gift = make("paca", heads=HEADS).eval()
    randomize(gift)
    with torch.no_grad():
        single = gift(x, head="1")
        assert torch.equal(gift(x, head=["1"]), single)
        assert torch.equal(gift(x, head=list(HEADS), sample_head=[1] * 6), single)
        for bad, msg in [([0, 1], "entries"), ([0, 0, 0, 0, 0, 4], "only 4 heads")]:
            with pytest.raises(ValueError, match=msg):
                gift(x, head=list(HEADS), sample_head=torch.tensor(bad))
        with pytest.raises(ValueError, match="sample_head"):
            gift(x, head=["0", "1"])


def test_eval_cache_serves_mixed_batches_per_head(x):
    gift = make("paca", heads=HEADS).eval()
    randomize(gift)
    calls = []
    gift.generators["attn:proj"].register_forward_hook(lambda *a: calls.append(1))
    t = torch.tensor([0, 3, 3, 0, 0, 3])
    with torch.no_grad():
        first = gift(x, head=list(HEADS), sample_head=t)
        assert torch.equal(gift(x, head=list(HEADS), sample_head=t), first)
        gift(x, head="3")  # cached by the mixed batch
        assert len(calls) == 1
        gift(x, head="1")
        assert len(calls) == 2
    assert all(layer.residual is None for layer in gift.layers().values())


def test_hooks_on_the_frozen_layer_see_the_frozen_output(x):
    """Cluster maps hook ``layer.base`` for the pre-delta output: the fused in-place path must not hide it."""
    gift = make("paca", heads=HEADS).eval()
    randomize(gift)
    layer = gift.layers()["blocks.1.attn.proj"]
    seen = []
    with torch.no_grad():
        fused = gift(x, head=list(HEADS), sample_head=torch.tensor([1, 0, 1, 1, 0, 0]))
        handle = layer.base.register_forward_hook(lambda m, i, o: seen.append((i[0], o)))
        hooked = gift(x, head=list(HEADS), sample_head=torch.tensor([1, 0, 1, 1, 0, 0]))
        handle.remove()
    (inp, out), = seen
    assert torch.equal(out, F.linear(inp, layer.base.weight, layer.base.bias))
    torch.testing.assert_close(hooked, fused, **TOL)


def test_checkpointed_generator_gives_the_same_gradients(x):
    """The trunk recomputed in the backward (default) against a trunk that keeps its graph."""
    gift = make("paca1", TARGETS[1]).train()
    randomize(gift)
    kept = twin(gift, "factored")
    for gen in kept.generators.values():
        gen.checkpoint = False
    for model in (gift, kept):
        model(x).logsumexp(-1).sum().backward()
    g, ref = trainable_grads(gift), trainable_grads(kept)
    assert sorted(g) == sorted(ref)
    for n in g:
        assert torch.equal(g[n], ref[n]), n
