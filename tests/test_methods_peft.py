"""PEFT methods and model add-ons beside GIFT: VPT-deep, Adapter, GIST's adapter, LoRA-qkv, BitFit, GIST,
Coeff-Tuning.

Zero-initialised methods equal the frozen model bit for bit at step 0; trainable parameters per task match
hand-computed counts; the add-ons' mechanics (token position, loss, attention recombination, per-task
parts, fused attention where unused, checkpoints, deepcopy) are checked on a tiny random ViT.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

from gift_cl import GiftConfig
from gift_cl.methods import (
    AdapterMethod,
    BitFit,
    CoeffTuning,
    FullFinetune,
    GiftMethod,
    Gist,
    GistAdapterMethod,
    LinearProbe,
    LoraMethod,
    SharedBackbone,
    VptDeep,
)
from gift_cl.methods.gist import symmetric_kl

from runs import tiny_vit

D, DEPTH, HEADS, PATCHES = 64, 2, 2, 16  # runs.tiny_vit's: 32 px images, 8 px patches


@pytest.fixture
def x():
    torch.manual_seed(1)
    return torch.randn(5, 3, 32, 32)


def task_features(model, x, task):
    """The [CLS] feature as the task's head sees it (add-ons switched on)."""
    with torch.no_grad(), model.serving(task):
        return model.features(x, task)


def gift(**kw):
    return GiftMethod(tiny_vit(), GiftConfig.paca(rank=16, depth=2, num_clusters=4), **kw)


ZERO_INIT = {
    "adapter": lambda: AdapterMethod(tiny_vit()),
    "lora_proj": lambda: LoraMethod(tiny_vit(), rank=8),
    "lora_qkv": lambda: LoraMethod(tiny_vit(), rank=4, target_modules=["attn.qkv"]),
    "bitfit": lambda: BitFit(tiny_vit()),
    "linear": lambda: LinearProbe(tiny_vit()),
    "adapter_hidden4": lambda: AdapterMethod(tiny_vit(), hidden=4),
    "bitfit_linear": lambda: BitFit(tiny_vit(), biases="linear"),
    "gist_adapter_init0": lambda: GistAdapterMethod(tiny_vit(), init_std=0.0),  # identity: weights 0
}


@pytest.mark.parametrize("name", sorted(ZERO_INIT))
def test_zero_initialised_methods_equal_the_frozen_model_bitwise(name, x):
    with torch.no_grad():
        frozen = tiny_vit()(x)
    model = ZERO_INIT[name]()
    model.add_task(0, 3)
    model.add_task(1, 4)
    for task in (0, 1):
        assert torch.equal(task_features(model, x, task), frozen)
    model.train()  # dropout-free ViT: still exact in training mode
    with torch.no_grad(), model.serving(0):
        assert torch.equal(model.features(x, 0), frozen)


def _explicit_attention(vit):
    for blk in vit.blocks:
        blk.attn.fused_attn = False
    return vit


@pytest.mark.parametrize("method", ["lora", "adapter", "linear"])
def test_coeff_tuning_starts_at_the_pretrained_model(method, x):
    """α = 0: bitwise equal to timm's explicit attention (the same operations plus exact zeros); timm's
    default fused SDPA kernel computes the same function differently, so there only a tight tolerance."""
    build = {"lora": LoraMethod, "adapter": AdapterMethod, "linear": LinearProbe}[method]
    with torch.no_grad():
        fused = tiny_vit()(x)
        explicit = _explicit_attention(tiny_vit())(x)
    model = build(tiny_vit(), addons={"coeff": CoeffTuning(dropout=0.5)})
    model.add_task(0, 3)
    assert torch.equal(task_features(model, x, 0), explicit)
    torch.testing.assert_close(task_features(model, x, 0), fused, rtol=0, atol=1e-5)
    model.train()  # dropout on α = 0 is still 0
    with torch.no_grad(), model.serving(0):
        assert torch.equal(model.features(x, 0), explicit)


def test_coeff_tuning_recombines_the_heads_attention_maps(x):
    model = LinearProbe(tiny_vit(), addons={"coeff": CoeffTuning(dropout=0.0)})
    model.add_task(0, 3)
    alpha = torch.randn(DEPTH, HEADS, HEADS)
    with torch.no_grad():
        model.model_addons["coeff"].alphas["0"].copy_(alpha)
    # reference: a plain timm ViT whose explicit attention softmax output is recombined by (α + I)
    ref = _explicit_attention(tiny_vit())
    for layer, blk in enumerate(ref.blocks):
        attn = blk.attn

        def forward(inp, attn=attn, mix=alpha[layer] + torch.eye(HEADS), **_):
            B, N, C = inp.shape
            q, k, v = attn.qkv(inp).reshape(B, N, 3, HEADS, C // HEADS).permute(2, 0, 3, 1, 4)
            maps = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1)
            maps = sum(mix[:, i].view(1, HEADS, 1, 1) * maps[:, i:i + 1] for i in range(HEADS))
            return attn.proj((maps @ v).transpose(1, 2).reshape(B, N, C))

        attn.forward = forward
    with torch.no_grad():
        torch.testing.assert_close(task_features(model, x, 0), ref(x), rtol=1e-5, atol=1e-5)


def test_coeff_tuning_keeps_fused_attention_where_alpha_is_unused(x, monkeypatch):
    model = LoraMethod(tiny_vit(), addons={"coeff": CoeffTuning()})
    model.add_task(0, 3)
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    with torch.no_grad():
        model.frozen_features(x)
    assert len(calls) == DEPTH  # task-id path: fused in every layer
    calls.clear()
    task_features(model, x, 0)
    assert calls == []  # the task with α: explicit maps


def test_gist_token_sits_after_cls_and_after_the_positional_embedding(x):
    model = LinearProbe(tiny_vit(), addons={"gist": Gist()})
    model.add_task(0, 3)
    model.eval()  # the token as inserted in evaluation (in training it goes through dropout 0.1)
    token = model.model_addons["gist"].tokens["0"]
    assert token.shape == (1, 1, D) and token.abs().max() <= 0.5
    seen = {}
    vit = model.backbone
    vit.blocks[0].register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()))
    with torch.no_grad():
        plain = vit.patch_drop(vit._pos_embed(vit.patch_embed(x)))
        task_features(model, x, 0)
    seq = seen["x"]
    assert seq.shape == (5, 1 + 1 + PATCHES, D)  # [CLS, GIST, patches]
    assert torch.equal(seq[:, 0], plain[:, 0]) and torch.equal(seq[:, 2:], plain[:, 1:])
    assert torch.equal(seq[:, 1], token[0].expand(5, -1))  # no positional embedding added to it


def test_gist_is_not_zero_initialised_and_leaves_the_frozen_path_alone(x):
    with torch.no_grad():
        frozen = tiny_vit()(x)
    model = LoraMethod(tiny_vit(), addons={"gist": Gist()})
    model.add_task(0, 3)
    assert not torch.allclose(task_features(model, x, 0), frozen, atol=1e-4)  # one more token to attend to
    with torch.no_grad():
        assert torch.equal(model.frozen_features(x), frozen)


def test_gist_loss_matches_the_formula_and_detaches_nothing(x):
    model = LinearProbe(tiny_vit(), addons={"gist": Gist(dropout=0.0)})  # the forward runs twice below
    model.add_task(0, 4)
    model.begin_task([0])
    model.train()
    y = torch.tensor([0, 1, 2, 3, 1])
    logits = model(x, 0)
    # by hand: the same head on the normed Gist token
    captured = {}
    model.backbone.norm.register_forward_hook(lambda m, a, out: captured.setdefault("normed", out))
    with model.serving(0):
        model.features(x, 0)
    gist_logits = model.classifiers["0"](captured["normed"][:, 1])
    p_c, p_g = F.softmax(logits / 3, -1), F.softmax(gist_logits / 3, -1)
    kl = lambda p, q: (p * (p.log() - q.log())).sum(-1).mean()  # noqa: E731
    expected = 0.5 * F.cross_entropy(gist_logits, y) + 0.75 * (kl(p_c, p_g) + kl(p_g, p_c))
    aux = model.auxiliary_loss(y)
    torch.testing.assert_close(aux, expected, rtol=1e-5, atol=1e-6)
    # nothing detached: the loss reaches the [CLS] logits themselves (through the KL terms)
    assert torch.autograd.grad(aux, logits, retain_graph=True)[0].abs().sum() > 0
    (F.cross_entropy(logits, y) + aux).backward()
    plugin = model.model_addons["gist"]
    assert plugin.tokens["0"].grad is not None and plugin.tokens["0"].grad.abs().sum() > 0
    assert model.auxiliary_loss(y) == 0.0  # consumed; and eval forwards record nothing
    model.eval()
    model(x, 0)
    assert model.auxiliary_loss(y) == 0.0


def test_symmetric_kl_is_zero_for_equal_logits_and_symmetric():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    assert symmetric_kl(a, a, 3.0).abs() < 1e-6
    torch.testing.assert_close(symmetric_kl(a, b, 3.0), symmetric_kl(b, a, 3.0))


def test_gist_mixed_batch_uses_each_tasks_token_and_head(x):
    model = LinearProbe(tiny_vit(), addons={"gist": Gist(dropout=0.0)})  # forwards compared across calls
    model.add_task(0, 3)
    model.add_task(1, 2)
    model.begin_task([0, 1])
    model.train()
    tasks = torch.tensor([0, 1, 1, 0, 1])
    y = torch.tensor([2, 1, 0, 0, 1])
    model(x, tasks)
    mixed = model.auxiliary_loss(y)
    parts = []
    for t in (0, 1):
        idx = (tasks == t).nonzero(as_tuple=True)[0]
        model(x[idx], t)
        parts.append(model.auxiliary_loss(y[idx]) * len(idx))
    torch.testing.assert_close(mixed, sum(parts) / len(y))


def test_vpt_deep_prompts_every_layer(x):
    model = VptDeep(tiny_vit(), length=3)
    model.add_task(0, 3)
    lengths = []
    for blk in model.backbone.blocks:
        blk.register_forward_hook(lambda m, a, out: lengths.append(out.shape[1]))
    task_features(model, x, 0)
    assert lengths == [1 + PATCHES + 3] * DEPTH
    # deep: every layer's prompts matter
    for layer in range(DEPTH):
        before = task_features(model, x, 0)
        with torch.no_grad():
            model.prompts["0"][layer].add_(1.0)
        assert not torch.equal(task_features(model, x, 0), before), layer
    with torch.no_grad():
        assert torch.equal(model.frozen_features(x), tiny_vit()(x))


# hand-computed trainable parameters per task, excluding the classifier (D=64, depth 2, 2 heads, MLP 256)
EXPECTED_COUNTS = {
    "vpt": (lambda: VptDeep(tiny_vit()), DEPTH * 10 * D),  # 1280
    "adapter": (lambda: AdapterMethod(tiny_vit()), DEPTH * 2 * (D * 8 + 8 + 8 * D + D)),  # 4384
    "lora_qkv": (lambda: LoraMethod(tiny_vit(), rank=4, target_modules=["attn.qkv"]),
                 DEPTH * (4 * D + 3 * D * 4)),  # 2048
    "lora_proj": (lambda: LoraMethod(tiny_vit(), rank=8), DEPTH * (8 * D + D * 8)),  # 2048
    "lora+coeff": (lambda: LoraMethod(tiny_vit(), rank=8, addons={"coeff": CoeffTuning()}),
                   DEPTH * (8 * D + D * 8) + DEPTH * HEADS * HEADS),  # 2056
    "vpt+gist": (lambda: VptDeep(tiny_vit(), addons={"gist": Gist()}), DEPTH * 10 * D + D),  # 1344
    "adapter+gist+coeff": (lambda: AdapterMethod(tiny_vit(), addons={"gist": Gist(), "coeff": CoeffTuning()}),
                           DEPTH * 2 * (D * 8 + 8 + 8 * D + D) + D + DEPTH * HEADS * HEADS),
    # GIST's release adapter: ONE hidden-4 adapter per block (shared by both branches)
    "gist_adapter": (lambda: GistAdapterMethod(tiny_vit()), DEPTH * (D * 4 + 4 + 4 * D + D)),  # 1160
    "gist_adapter+gist": (lambda: GistAdapterMethod(tiny_vit(), addons={"gist": Gist()}),
                          DEPTH * (D * 4 + 4 + 4 * D + D) + D),
    # BitFit: nn.Linear biases (qkv 3D, proj D, fc1 4D, fc2 D) vs every bias (+ norm1, norm2, patch embed, norm)
    "bitfit_linear": (lambda: BitFit(tiny_vit(), biases="linear"), DEPTH * 9 * D),  # 1152
    "bitfit_all": (lambda: BitFit(tiny_vit()), DEPTH * 11 * D + 2 * D),  # 1536
    "vpt_dropout": (lambda: VptDeep(tiny_vit(), length=10, dropout=0.1), DEPTH * 10 * D),
}


@pytest.mark.parametrize("name", sorted(EXPECTED_COUNTS))
def test_trainable_parameters_per_task_match_hand_counts(name):
    build, per_task = EXPECTED_COUNTS[name]
    model = build()
    model.add_task(0, 3)
    model.add_task(1, 5)
    counts = model.trainable_parameter_count()
    assert counts["per_task_excl_classifier"] == {0: per_task, 1: per_task}
    assert counts["per_task"] == {0: per_task + D * 3 + 3, 1: per_task + D * 5 + 5}
    assert counts["shared"] == 0
    assert counts["backbone"] == sum(p.numel() for p in tiny_vit().parameters())
    model.begin_task([1])  # exactly the task's parameters train
    trained = {id(p) for p in model.parameters() if p.requires_grad}
    assert trained == {id(p) for p in model.task_parameters(1)}


def test_gift_with_gist_counts_the_token_per_task():
    plain, with_gist = gift(), gift(addons={"gist": Gist()})
    for m in (plain, with_gist):
        m.add_task(0, 3)
    assert (with_gist.trainable_parameter_count()["per_task_excl_classifier"][0]
            == plain.trainable_parameter_count()["per_task_excl_classifier"][0] + D)


PLUGGED = {
    "gift": lambda p: gift(addons=p),
    "lora": lambda p: LoraMethod(tiny_vit(), addons=p),
    "adapter": lambda p: AdapterMethod(tiny_vit(), addons=p),
    "gist_adapter": lambda p: GistAdapterMethod(tiny_vit(), addons=p),
    "vpt": lambda p: VptDeep(tiny_vit(), length=2, addons=p),
    "bitfit": lambda p: BitFit(tiny_vit(), addons=p),
    "finetune": lambda p: FullFinetune(tiny_vit(), addons=p),
    "shared": lambda p: SharedBackbone(tiny_vit(), addons=p),
}


@pytest.mark.parametrize("plugins", ["gist", "coeff", "gist+coeff"])
@pytest.mark.parametrize("method", sorted(PLUGGED))
def test_plugins_train_per_task_and_survive_checkpoints(method, plugins, x):
    make = lambda: {n: {"gist": Gist, "coeff": CoeffTuning}[n]() for n in plugins.split("+")}  # noqa: E731
    model = PLUGGED[method](make())
    model.add_task(0, 3)
    model.add_task(1, 4)
    with torch.no_grad():
        frozen = model.frozen_features(x).clone()
    model.eval()
    with torch.no_grad():
        before0 = model(x, 0).clone()
    model.begin_task([1])
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    y = torch.tensor([0, 1, 2, 3, 0])
    for _ in range(2):
        loss = F.cross_entropy(model(x, 1), y) + model.auxiliary_loss(y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name in model.model_addons:  # the task's add-on parts trained
        plugin = model.model_addons[name]
        params = plugin.task_parameters(1)
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
    model.eval()
    with torch.no_grad():
        if method != "shared":  # the shared backbone trains for every task
            assert torch.equal(model(x, 0), before0)  # task 0's parts untouched
        assert torch.equal(model.frozen_features(x), frozen)
        after1 = model(x, 1).clone()
    # checkpoint: add-on parts are trainable state, pretrained weights are not
    state = model.trainable_state_dict()
    assert any(k.startswith("model_addons.") for k in state)
    assert not set(state) & model.frozen_state_keys()
    fresh = PLUGGED[method](make())
    fresh.add_task(0, 3)
    fresh.add_task(1, 4)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected and not set(missing) - fresh.frozen_state_keys()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x, 1), after1)
        # LwF deep-copies the model: the copy's hooks use the copy's add-on parts
        clone = copy.deepcopy(fresh)
        for p in clone.model_addons.parameters():
            p.add_(1.0)
        assert torch.equal(fresh(x, 1), after1)
        assert not torch.equal(clone(x, 1), after1)


def test_plugins_make_features_task_dependent(x):
    """SharedBackbone serves every head from one forward; with a GIST token per task it cannot."""
    model = SharedBackbone(tiny_vit(), addons={"gist": Gist()})
    model.add_task(0, 3)
    model.add_task(1, 3)
    model.known_train_tasks_labels = {0, 1}
    model.eval()
    with torch.no_grad():
        everything = model(x, None)
        for t in (0, 1):
            assert torch.equal(everything[t], model(x, t))
        assert not torch.equal(everything[0], model.classifiers["0"](model.features(x, None)))


# ------------------------------------------------------------------ issue 21: methods faithful to their sources
def _release_gist_adapter_forward(vit, adapters, scale, x):
    """GIST's release, ``Block.forward`` with ``tuning_mode='gist_adapter'``, written out on a timm ViT:
    ``x = x + attn(norm1(x)) + adapter(x); x = x + mlp(norm2(x)) + adapter(x)``, one adapter per block."""
    h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
    for blk, ad in zip(vit.blocks, adapters):
        h = h + blk.attn(blk.norm1(h)) + scale * ad.up(F.gelu(ad.down(h)))
        h = h + blk.mlp(blk.norm2(h)) + scale * ad.up(F.gelu(ad.down(h)))
    return vit.forward_head(vit.norm(h))


def test_gist_adapter_is_the_release_block_one_shared_adapter_on_the_raw_stream(x):
    model = GistAdapterMethod(tiny_vit())
    model.add_task(0, 3)
    adapters = model.adapters["0"]
    assert len(adapters) == DEPTH  # one per block, not one per branch
    for ad in adapters:  # the release's init: trunc-normal(0.02) weights, zero biases; hidden 4
        assert ad.down.weight.shape == (4, D) and ad.up.weight.shape == (D, 4)
        for layer in (ad.down, ad.up):
            assert torch.count_nonzero(layer.bias) == 0
            assert 0.01 < layer.weight.std() < 0.03 and layer.weight.abs().max() < 0.1
    with torch.no_grad():  # larger weights, so that the adapter's term is far above float noise
        for p in adapters.parameters():
            p.normal_(0, 0.3)
        ref = _release_gist_adapter_forward(tiny_vit(), adapters, 0.1, x)
        frozen = tiny_vit()(x)
    got = task_features(model, x, 0)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)  # x + (branch + adapter) vs (x + branch) + adapter
    assert not torch.allclose(got, frozen, atol=1e-3)
    # reading the normed stream instead (the Convpass-style adapter's input) is a different function
    with torch.no_grad():
        vit = tiny_vit()
        h = vit.norm_pre(vit.patch_drop(vit._pos_embed(vit.patch_embed(x))))
        for blk, ad in zip(vit.blocks, adapters):
            h = h + blk.attn(blk.norm1(h)) + 0.1 * ad.up(F.gelu(ad.down(blk.norm1(h))))
            h = h + blk.mlp(blk.norm2(h)) + 0.1 * ad.up(F.gelu(ad.down(blk.norm2(h))))
        assert not torch.allclose(got, vit.forward_head(vit.norm(h)), atol=1e-3)
        assert torch.equal(model.frozen_features(x), frozen)  # the task-id path sees no adapter


def test_gist_adapter_is_not_zero_initialised_but_learns(x):
    with torch.no_grad():
        frozen = tiny_vit()(x)
    model = GistAdapterMethod(tiny_vit())
    model.add_task(0, 4)
    assert not torch.equal(task_features(model, x, 0), frozen)  # trunc-normal up-projection: a non-zero term
    model.begin_task([0])
    model.train()
    opt = torch.optim.Adam(model.task_parameters(0), lr=0.02)
    y = torch.tensor([0, 1, 2, 3, 1])
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(x, 0), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(p.grad.abs().sum() > 0 for p in model.adapters["0"].parameters())


def test_gist_token_dropout_only_in_training():
    plugin = Gist(dropout=0.5)
    plugin.dim = D
    plugin.add_task(0)
    plugin.active = "0"
    token = plugin.tokens["0"].detach()[0, 0]
    seq = torch.zeros(64, 3, D)
    plugin.eval()
    assert torch.equal(plugin._insert(None, None, seq)[:, 1], token.expand(64, -1))
    plugin.train()
    torch.manual_seed(0)
    out = plugin._insert(None, None, seq)[:, 1]
    kept = out != 0
    assert torch.equal(out[kept], (token * 2).expand(64, -1)[kept])  # inverted dropout, rate 0.5
    assert 0.3 < kept.float().mean() < 0.7
    assert not torch.equal(kept[0], kept[1])  # one mask per sample, as the release's expanded token
    no_drop = Gist(dropout=0.0)
    no_drop.dim = D
    no_drop.add_task(0)
    no_drop.active = "0"
    no_drop.train()
    assert torch.equal(no_drop._insert(None, None, seq)[:, 1], no_drop.tokens["0"].detach()[0, 0].expand(64, -1))
    assert Gist().dropout == 0.1  # the release's default
    with pytest.raises(ValueError, match="dropout"):
        Gist(dropout=1.0)


def test_vpt_prompt_dropout_only_in_training(x):
    model = VptDeep(tiny_vit(), length=3, dropout=0.5)
    model.add_task(0, 3)
    plain = VptDeep(tiny_vit(), length=3)
    plain.add_task(0, 3)
    with torch.no_grad():
        plain.prompts["0"].copy_(model.prompts["0"])
    model.eval()
    plain.eval()
    evaluated = task_features(model, x, 0)
    assert torch.equal(evaluated, task_features(plain, x, 0))  # eval: no dropout
    model.train()
    plain.train()
    torch.manual_seed(3)
    assert not torch.equal(task_features(model, x, 0), evaluated)
    assert torch.equal(task_features(plain, x, 0), evaluated)  # dropout 0 (the default): training == eval
    with pytest.raises(ValueError, match="dropout"):
        VptDeep(tiny_vit(), dropout=-0.1)


def test_bitfit_biases_choices():
    linear = BitFit(tiny_vit(), biases="linear")
    every = BitFit(tiny_vit())
    assert every.bias_choice == "all"
    assert all(".mlp.fc" in n or ".attn." in n for n in linear.bias_names)
    assert set(linear.bias_names) < set(every.bias_names)
    assert {n for n in every.bias_names if n not in linear.bias_names} == {
        "patch_embed.proj.bias", "norm.bias", *(f"blocks.{i}.norm{j}.bias" for i in range(DEPTH) for j in (1, 2))}
    with pytest.raises(ValueError, match="biases"):
        BitFit(tiny_vit(), biases="norm")


def test_bitfit_linear_learns_only_linear_biases(x):
    model = BitFit(tiny_vit(), biases="linear")
    model.add_task(0, 4)
    model.begin_task([0])
    model.train()
    opt = torch.optim.Adam(model.task_parameters(0), lr=0.02)
    y = torch.tensor([0, 1, 2, 3, 1])
    first = None
    for _ in range(4):
        loss = F.cross_entropy(model(x, 0), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first
    with torch.no_grad():
        assert torch.equal(model.frozen_features(x), tiny_vit()(x))
