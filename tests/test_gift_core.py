"""The GIFT invariants, tested exactly (SPEC §2, gift-reference.md §5)."""
import pytest
import timm
import torch
import torch.nn.functional as F

from gift_cl import GiftConfig, GiftGenerator, get_gift_model
from gift_cl.gift import l2_normalize
from gift_cl.optim import param_groups

from runs import tiny_vit

VIT = dict(depth=3, num_classes=5)  # the backbone of these tests: three blocks, a 5-way head
CONFIGS = {
    "paca": GiftConfig.paca(rank=16, num_clusters=8, num_heads=2),
    "linear": GiftConfig.linear(),
    "attention": GiftConfig.paca(rank=16, block="attention", num_heads=2),
    "mlp": GiftConfig.paca(rank=16, block="mlp"),
}


def randomize_recovery(gift, std=0.05):
    torch.manual_seed(1)
    for gen in gift.generators.values():
        for head in gen.heads.values():
            torch.nn.init.normal_(head.recovery.weight, std=std)


@pytest.fixture
def x():
    torch.manual_seed(2)
    return torch.randn(4, 3, 32, 32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("targets", [("attn.proj",), ("attn.qkv", "attn.proj", "mlp.fc1")])
def test_init_is_bitwise_the_frozen_model(name, targets, x):
    frozen = tiny_vit(**VIT)
    with torch.no_grad():
        ref = frozen(x)
    cfg = GiftConfig(**{**CONFIGS[name].__dict__, "target_modules": targets})
    gift = get_gift_model(tiny_vit(**VIT), cfg).eval()
    for delta in gift.delta_weights().values():
        assert torch.equal(delta, torch.zeros_like(delta))
    with torch.no_grad():
        out = gift(x)
    assert torch.equal(out, ref)
    gift.train()  # with grad and in train mode too (the model has no dropout)
    assert torch.equal(gift(x).detach(), ref)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gradients_reach_reduction_only_once_recovery_is_nonzero(name, x):
    gift = get_gift_model(tiny_vit(**VIT), CONFIGS[name])
    gen = gift.generators["attn:proj"]
    gift(x).logsumexp(-1).sum().backward()
    phi, psi = gen.trunk.reduction.weight, gen.heads["0"].recovery.weight
    assert psi.grad is not None and psi.grad.abs().sum() > 0
    assert phi.grad is not None and torch.equal(phi.grad, torch.zeros_like(phi))
    gift.zero_grad()
    randomize_recovery(gift)
    gift(x).logsumexp(-1).sum().backward()
    assert phi.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_batched_generation_equals_per_layer(name):
    """No block mixes layers, so one batched call equals L single-layer calls. Not bitwise: BLAS may pick
    different kernels (and summation orders) for different batch shapes (it does on AMD CPUs)."""
    torch.manual_seed(3)
    gen = GiftGenerator(CONFIGS[name], d_in=48, d_out=40)
    torch.nn.init.normal_(gen.heads["0"].recovery.weight)
    weights = torch.randn(6, 40, 48)
    batched, assign = gen(weights, return_assignments=True)
    for layer in range(6):
        single, single_assign = gen(weights[layer : layer + 1], return_assignments=True)
        torch.testing.assert_close(batched[layer], single[0], rtol=1e-6, atol=1e-6)
        for c_batched, c_single in zip(assign, single_assign):
            torch.testing.assert_close(c_batched[layer], c_single[0], rtol=1e-6, atol=1e-7)


def test_linear_generator_is_the_official_formula(x):
    """ΔW = (W φᵀ) ψᵀ, rows of W as tokens, and y = F.linear(x, W, b) + F.linear(x, ΔW) (official order)."""
    gift = get_gift_model(tiny_vit(**VIT), GiftConfig.linear())
    randomize_recovery(gift)
    gen = gift.generators["attn:proj"]
    phi, psi = gen.trunk.reduction.weight, gen.heads["0"].recovery.weight
    assert phi.shape == (16, 64) and psi.shape == (64, 16)
    deltas = gift.delta_weights()
    layers = gift.layers()
    for name, layer in layers.items():
        w = layer.base.weight
        official = F.linear(F.linear(w, phi), psi)
        assert torch.equal(deltas[name], official)
        tokens = torch.randn(2, 5, 64)
        with gift.residuals(deltas):
            ours = layer(tokens)
        assert torch.equal(ours, F.linear(tokens, w, layer.base.bias) + F.linear(tokens, official))


def naive_paca(block, assign, h):
    """SPEC §2 written out for one layer: x = n(h); C = σ(x W_c + b_c); Z = n(Cᵀx/N); softmax(QKᵀ·s)V W_o."""
    mixer = block.mixer
    xn = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n_tokens = xn.shape[0]
    c = torch.sigmoid(xn @ assign.cluster.weight.T + assign.cluster.bias)
    z = (c.T @ xn) / n_tokens
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    q = xn @ mixer.q.weight.T + mixer.q.bias
    k = z @ mixer.k.weight.T + mixer.k.bias
    v = z @ mixer.v.weight.T + mixer.v.bias
    heads, d = mixer.num_heads, q.shape[-1] // mixer.num_heads
    outs = []
    for i in range(heads):
        sl = slice(i * d, (i + 1) * d)
        a = torch.softmax(q[:, sl] @ k[:, sl].T * d**-0.5, dim=-1)
        outs.append(a @ v[:, sl])
    attn_out = torch.cat(outs, dim=-1) @ mixer.proj.weight.T + mixer.proj.bias
    h = h + attn_out
    hn = h / h.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    mlp = block.mlp
    return h + (F.gelu(hn @ mlp.fc1.weight.T + mlp.fc1.bias) @ mlp.fc2.weight.T + mlp.fc2.bias), c


@pytest.mark.parametrize("num_heads", [1, 3])  # one head: W_q folded into the keys, W_o into the values
def test_paca_block_matches_the_spec_equations(num_heads):
    torch.manual_seed(4)
    gen = GiftGenerator(GiftConfig.paca(rank=24, num_clusters=6, num_heads=num_heads, depth=1), d_in=32, d_out=50)
    h = torch.randn(2, 50, 24)
    block, assign = gen.trunk.blocks[0], gen.heads["0"].clusters[0]
    ours, c_ours = block(h, assign)
    for layer in range(2):
        ref, c_ref = naive_paca(block, assign, h[layer])
        torch.testing.assert_close(ours[layer], ref, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(c_ours[layer], c_ref, rtol=1e-6, atol=1e-7)
    assert torch.equal(l2_normalize(torch.zeros(3)), torch.zeros(3))  # eps guard: no NaN on a zero token


def test_cluster_assignments_per_block_and_layer():
    gift = get_gift_model(tiny_vit(**VIT), GiftConfig.paca(rank=16, num_clusters=8, depth=2))
    assign = gift.cluster_assignments()
    assert sorted(assign) == [f"blocks.{i}.attn.proj" for i in range(3)]
    for per_block in assign.values():
        assert len(per_block) == 2
        for c in per_block:
            assert c.shape == (64, 8) and bool(((c > 0) & (c < 1)).all())
    assert get_gift_model(tiny_vit(**VIT), GiftConfig.linear()).cluster_assignments()["blocks.0.attn.proj"] == []


def test_merge_and_export_to_stock_timm(tmp_path, x):
    gift = get_gift_model(tiny_vit(**VIT), CONFIGS["paca"]).eval()
    randomize_recovery(gift)
    with torch.no_grad():
        unmerged = gift(x)
    path = tmp_path / "merged.safetensors"
    gift.save_merged(path)
    plain = gift.merge_and_unload()
    assert all(type(m) is torch.nn.Linear for n, m in plain.named_modules() if n.endswith("attn.proj"))
    with torch.no_grad():
        merged = plain(x)
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.equal(merged, tiny_vit(**VIT)(x))  # the residual is really in there
    stock = timm.create_model(
        "vit_tiny_patch16_224", pretrained=True, img_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=2,
        num_classes=5, pretrained_cfg_overlay=dict(file=str(path), num_classes=5),
    ).eval()
    with torch.no_grad():
        assert torch.equal(stock(x), merged)


def test_eval_generates_once_and_regenerates_after_an_update(x):
    gift = get_gift_model(tiny_vit(**VIT), CONFIGS["paca"]).eval()
    calls = []
    gift.generators["attn:proj"].register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        for _ in range(3):
            gift(x)
    assert len(calls) == 1
    opt = torch.optim.SGD([p for p in gift.parameters() if p.requires_grad], lr=0.1)
    gift.train()
    gift(x).sum().backward()  # training: one generation per step
    assert len(calls) == 2
    opt.step()
    gift.eval()
    with torch.no_grad():
        gift(x)
        gift(x)
    assert len(calls) == 3
    assert all(l.delta_weight is None for l in gift.layers().values())  # no graph kept between steps


def test_official_parameter_count_on_vit_b16():
    vit_b = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    counts = get_gift_model(vit_b, GiftConfig.linear()).trainable_parameter_count()
    assert counts["gift"] == 24_576 and counts["backbone"] == 85_798_656
    assert counts["trainable"] == 24_576 + 768 * 10 + 10
    assert round(counts["gift_percent"], 3) == 0.029


def test_no_weight_decay_on_clusters_biases_and_1d():
    gift = get_gift_model(tiny_vit(**VIT), CONFIGS["paca"])
    groups = {g["name"]: g for g in param_groups(gift, 0.05)}
    names = {id(p): n for n, p in gift.named_parameters()}
    no_decay = {names[id(p)] for p in groups["no_decay"]["params"]}
    decay = {names[id(p)] for p in groups["decay"]["params"]}
    assert groups["no_decay"]["weight_decay"] == 0 and groups["decay"]["weight_decay"] == 0.05
    assert any("cluster.weight" in n for n in no_decay) and not any("cluster" in n for n in decay)
    assert "model.head.bias" in no_decay and "model.head.weight" in decay
    assert any(n.endswith("trunk.reduction.weight") for n in decay) and any(n.endswith("pos_embed") for n in decay)
    assert not any("base.weight" in n for n in decay | no_decay)  # frozen weights stay out


def test_target_errors_are_clear():
    with pytest.raises(ValueError, match="no nn.Linear matches"):
        get_gift_model(tiny_vit(**VIT), GiftConfig.linear(target_modules=["attn.nonexistent"]))
    with pytest.raises(TypeError, match="must be nn.Linear"):
        get_gift_model(tiny_vit(**VIT), GiftConfig.linear(target_modules=["attn"]))
    with pytest.raises(ValueError, match="unknown GIFT block"):
        GiftConfig(block="transformer-xl")


def test_l2_normalize_backward_is_the_autograd_one():
    torch.manual_seed(5)
    x = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(l2_normalize, (x,))
    x = x.detach().clone()
    x[0, 2] = 0.0  # a zero token: the clamped branch (no finite differences there)
    x.requires_grad_(True)
    assert torch.equal(l2_normalize(x), F.normalize(x, dim=-1, eps=1e-12))
    g = torch.randn_like(x)
    (ours,) = torch.autograd.grad(l2_normalize(x), x, g)
    (ref,) = torch.autograd.grad(F.normalize(x, dim=-1, eps=1e-12), x, g)
    torch.testing.assert_close(ours, ref)
