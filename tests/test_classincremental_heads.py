"""Class-incremental heads (gift_cl/classincremental/heads.py): they learn, accumulate per batch as at once,
resume bit-identically, fail clearly, and equal the official code.

The equivalence tests run the official functions, cut out of a checkout with ``ast`` (the modules themselves
import timm and CUDA-only code), on the same random features. They need ``$GIFT_CL_REFERENCES/RanPAC``
(https://github.com/RanPAC/RanPAC) and ``$GIFT_CL_REFERENCES/LAMDA-PILOT``
(https://github.com/sun-hailong/LAMDA-PILOT) and skip, saying so, without them. Checked against RanPAC
012927f and LAMDA-PILOT 2647455.
"""
from __future__ import annotations

import ast
import copy
import io
import itertools
import logging
import math
import os
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gift_cl.classincremental import OFFICIAL_RIDGES, PrototypeClassifier, RandomProjectionRidge
from gift_cl.padding import PAD_LOGIT

D, M = 16, 64  # feature and projection dims of the small heads


def clusters(num_classes, per_class, dim=D, seed=0, first=0, spread=3.0):
    """Shuffled Gaussian class clusters: class c is N(mu_c, I), mu_c ~ N(0, spread² I) (same mu_c for the
    same seed whatever ``per_class``), labels ``first .. first+num_classes-1``."""
    g = torch.Generator().manual_seed(seed)
    means = spread * torch.randn(first + num_classes, dim, generator=g)[first:]
    g = torch.Generator().manual_seed(seed * 7919 + per_class)
    labels = torch.arange(first, first + num_classes).repeat_interleave(per_class)
    x = means[labels - first] + torch.randn(len(labels), dim, generator=g)
    order = torch.randperm(len(labels), generator=g)
    return x[order], labels[order]


def stages(n_stages=4, per_stage=5, per_class=40, seed=0, dim=D):
    """(train, test) per stage; stage s has classes s*per_stage .. (s+1)*per_stage-1."""
    out = []
    for s in range(n_stages):
        kw = dict(dim=dim, seed=seed, first=s * per_stage)
        out.append((clusters(per_stage, per_class, **kw), clusters(per_stage, 20, **kw)))
    return out


def batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(y), size)]


def accuracy(head, x, y):
    return (head(x).argmax(1) == y).float().mean().item()


# ------------------------------------------------------------------------------------------------ learning
@pytest.mark.parametrize("make", [lambda: PrototypeClassifier(D), lambda: RandomProjectionRidge(D, M, seed=1)],
                         ids=["prototype", "ranpac"])
def test_heads_learn_new_classes_over_stages_without_forgetting(make):
    head = make()
    seen_x, seen_y = [], []
    for s, ((x, y), test) in enumerate(stages()):
        for bx, by in batches(x, y, 32):
            head.update(bx, by)
        if isinstance(head, RandomProjectionRidge):
            assert head.fit() in OFFICIAL_RIDGES and head.ridge in OFFICIAL_RIDGES
        seen_x.append(test[0])
        seen_y.append(test[1])
        assert head.num_classes == 5 * (s + 1)
        logits = head(torch.cat(seen_x))
        assert logits.shape == (len(torch.cat(seen_y)), head.num_classes) and logits.dtype == torch.float32
        assert accuracy(head, torch.cat(seen_x), torch.cat(seen_y)) > 0.9, s


@pytest.mark.parametrize("make", [lambda: PrototypeClassifier(D), lambda: RandomProjectionRidge(D, M)],
                         ids=["prototype", "ranpac"])
def test_classes_without_data_get_the_pad_logit(make):
    head = make()
    x, y = clusters(3, 30)
    head.update(x, y * 2)  # classes 0, 2, 4: 1 and 3 have no data
    if isinstance(head, RandomProjectionRidge):
        head.fit()
    logits = head(x)
    assert head.num_classes == 5
    assert torch.all(logits[:, [1, 3]] == PAD_LOGIT) and torch.all(logits[:, [0, 2, 4]] > PAD_LOGIT)


def test_prototype_logits_are_cosine_similarities_to_class_means():
    x, y = clusters(4, 25)
    head = PrototypeClassifier(D)
    head.update(x, y)
    means = torch.stack([x[y == c].double().mean(0) for c in range(4)])
    torch.testing.assert_close(head.prototypes, means, rtol=1e-12, atol=1e-12)
    expected = F.cosine_similarity(x.double()[:, None], means[None], dim=2)
    torch.testing.assert_close(head(x).double(), expected, rtol=0, atol=1e-6)  # float32 output
    torch.testing.assert_close(head(x.double()), expected, rtol=0, atol=1e-12)


def test_ranpac_solution_is_the_ridge_regression_of_all_stages():
    """W_out = (G + λI)^-1 Q with G, Q over every stage so far and λ chosen on the last stage."""
    head = RandomProjectionRidge(D, M, seed=3)
    (x1, y1), _ = stages(2)[0]
    (x2, y2), _ = stages(2)[1]
    head.update(x1, y1)
    head.fit()
    head.update(x2, y2)
    ridge = head.fit()
    h = torch.relu(torch.cat([x1, x2]).double() @ head.W.double())
    y = F.one_hot(torch.cat([y1, y2]), 10).double()
    w_out = torch.linalg.solve(h.T @ h + ridge * torch.eye(M, dtype=torch.float64), h.T @ y)
    torch.testing.assert_close(head(x2.double()), h[len(y1):] @ w_out, rtol=1e-9, atol=1e-9)


# stages whose λ differ: (feature scale, cluster spread, samples per class): N < M, N ≈ M, N > M, overlapping
# to separated clusters; λ from 1e-2 to 1e5
RIDGE_CASES = [(0.01, 3.0, 4), (0.01, 0.5, 12), (0.1, 0.5, 4), (1.0, 3.0, 12), (1.0, 0.5, 40), (10.0, 0.5, 4)]


def test_ranpac_ridge_is_chosen_on_the_last_stage_only_in_order():
    """λ of a stage: the first int(0.8 N) rows of that stage (in update order) fit, the rest score by MSE, the
    first minimum over the grid wins; earlier stages play no part. The order matters: reversed, some stages
    pick another λ."""
    chosen: dict[tuple[int, bool], float] = {}
    for (seed, (scale, spread, per_class)), flip in itertools.product(enumerate(RIDGE_CASES), (False, True)):
        head = RandomProjectionRidge(D, M, seed=seed)
        head.update(*clusters(10, 12, seed=seed + 10))
        head.fit()
        x, y = clusters(10, per_class, seed=seed, first=10, spread=spread)
        x, y = (x.flip(0) * scale, y.flip(0)) if flip else (x * scale, y)
        for bx, by in batches(x, y, 8):
            head.update(bx, by)
        chosen[seed, flip] = head.fit()
        h, onehot, n = head.project(x), F.one_hot(y, 20).double(), int(0.8 * len(y))
        eye = torch.eye(M, dtype=torch.float64)
        losses = [F.mse_loss(h[n:] @ torch.linalg.solve(h[:n].T @ h[:n] + r * eye, h[:n].T @ onehot[:n]),
                             onehot[n:]).item() for r in OFFICIAL_RIDGES]
        assert chosen[seed, flip] == OFFICIAL_RIDGES[int(np.argmin(losses))], (seed, flip, chosen)
        alone = RandomProjectionRidge(D, M, seed=seed)
        alone.update(x, y)
        assert alone.fit() == chosen[seed, flip]
    assert len(set(chosen.values())) >= 5, chosen  # the check covers the grid, not one λ
    assert any(chosen[seed, False] != chosen[seed, True] for seed in range(len(RIDGE_CASES))), chosen


# ------------------------------------------------------------------------------- per batch = all at once
def test_prototype_per_batch_updates_equal_one_update_exactly():
    x, y = clusters(6, 30)
    x = torch.round(x * 4096) / 4096  # on a 2^-12 grid: every float64 addition is exact, in any order
    one, many = PrototypeClassifier(D), PrototypeClassifier(D)
    one.update(x, y)
    for bx, by in batches(x, y, 7):
        many.update(bx, by)
    assert torch.equal(one._counts, many._counts) and torch.equal(one._sums, many._sums)
    assert torch.equal(one(x), many(x))


def test_ranpac_per_batch_updates_equal_one_update():
    """G and Q agree to float64 summation order (rtol 1e-12); λ is the same; logits agree to 1e-9."""
    x, y = clusters(6, 30)
    one, many = RandomProjectionRidge(D, M), RandomProjectionRidge(D, M)
    one.update(x, y)
    for bx, by in batches(x, y, 7):
        many.update(bx, by)
    assert torch.equal(one._counts, many._counts)
    torch.testing.assert_close(many._G, one._G, rtol=1e-12, atol=0)
    torch.testing.assert_close(many._Q, one._Q, rtol=1e-12, atol=0)
    assert one.fit() == many.fit()
    torch.testing.assert_close(many(x.double()), one(x.double()), rtol=1e-9, atol=1e-9)


# -------------------------------------------------------------------------------------------- checkpoints
def reload(head, fresh):
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))  # the project's checkpoints load this way
    return fresh


@pytest.mark.parametrize("make", [lambda: PrototypeClassifier(D), lambda: RandomProjectionRidge(D, M, seed=5)],
                         ids=["prototype", "ranpac"])
def test_state_dict_round_trip_resumes_bit_identically(make):
    """Saved at a stage end and mid-stage, loaded into a freshly built head (smaller state), the logits are
    bit-identical and so is everything learnt after."""
    data = stages(3)
    ranpac = isinstance(make(), RandomProjectionRidge)
    head = make()
    head.update(*data[0][0])
    if ranpac:
        head.fit()
    restored = reload(head, make())
    assert restored.num_classes == head.num_classes == 5
    assert torch.equal(restored(data[0][1][0]), head(data[0][1][0]))
    for h in (head, restored):  # continue both; save the original again mid-stage
        h.update(*batches(*data[1][0], 50)[0])
    restored = reload(head, make())
    for h in (head, restored):
        for bx, by in batches(*data[1][0], 50)[1:]:
            h.update(bx, by)
        if ranpac:
            h.fit()
        h.update(*data[2][0])
        if ranpac:
            h.fit()
    if ranpac:
        assert restored.ridge == head.ridge and torch.equal(restored.W, head.W)
    x = torch.cat([test[0] for _, test in data])
    assert torch.equal(restored(x), head(x))


def test_ranpac_fit_frees_the_stage_features():
    head = RandomProjectionRidge(D, M)
    head.update(*clusters(3, 10))
    assert len(head.get_extra_state()["pending_features"]) == 1
    head.fit()
    assert head.get_extra_state()["pending_features"] == [] and head._pending == []


def test_ranpac_default_projection_is_the_official_size_and_seeded():
    head = RandomProjectionRidge(768)
    assert head.W.shape == (768, 10000) and head.W.dtype == torch.float32 and head.projection_dim == 10000
    assert OFFICIAL_RIDGES == tuple(10.0 ** np.arange(-8, 9)) and head.ridges == OFFICIAL_RIDGES
    assert abs(head.W.mean().item()) < 0.01 and abs(head.W.std().item() - 1) < 0.01  # standard normal, as randn
    assert torch.equal(RandomProjectionRidge(D, M, seed=4).W, RandomProjectionRidge(D, M, seed=4).W)
    assert not torch.equal(RandomProjectionRidge(D, M, seed=4).W, RandomProjectionRidge(D, M, seed=5).W)


# ------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("head", [PrototypeClassifier(D), RandomProjectionRidge(D, M)], ids=["prototype", "ranpac"])
def test_clear_errors(head):
    x, y = clusters(2, 5)
    with pytest.raises(RuntimeError, match="call update"):
        head(x)
    with pytest.raises(ValueError, match=rf"\(32,\).*feature_dim={D}"):
        head.update(torch.zeros(3, 32), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="labels have shape"):
        head.update(x, y[:-1])
    with pytest.raises(ValueError, match="integer class ids"):
        head.update(x, y.float())
    with pytest.raises(ValueError, match="non-negative"):
        head.update(x, y - 1)
    head.update(x, y)
    if isinstance(head, RandomProjectionRidge):
        with pytest.raises(RuntimeError, match="call fit"):
            head(x)
        head.fit()
        with pytest.raises(RuntimeError, match="no new data"):
            head.fit()
        head.update(x, y)
        with pytest.raises(RuntimeError, match="since the last fit"):
            head(x)
        head.fit()
    with pytest.raises(ValueError, match=rf"\(32,\).*feature_dim={D}"):
        head(torch.zeros(3, 32))


# ------------------------------------------------------------------------------- equal to the official code
REFERENCES_ENV = "GIFT_CL_REFERENCES"
URLS = {"RanPAC": "https://github.com/RanPAC/RanPAC", "LAMDA-PILOT": "https://github.com/sun-hailong/LAMDA-PILOT"}


def reference(name: str) -> Path:
    """``$GIFT_CL_REFERENCES/<name>``, or skip saying how to get it."""
    root = os.environ.get(REFERENCES_ENV, "")
    path = Path(root) / name
    if not root or not path.is_dir():
        pytest.skip(f"official code not found: set {REFERENCES_ENV} to a folder holding a checkout of {URLS[name]} "
                    f"as {name}/ (git clone {URLS[name]} \"${REFERENCES_ENV}/{name}\")")
    return path


def official(path: Path, qualname: str, namespace: dict, replace: dict[str, int] | None = None):
    """The function or class ``qualname`` ("Class.method", "function" or "Class") of the file ``path``, cut out
    with ast and executed alone in ``namespace`` (nothing else of the file runs). ``replace`` maps a string to
    the number of times it must occur; each occurrence becomes "cpu" (the official code moves tensors to CUDA)."""
    source = path.read_text()
    nodes = ast.parse(source).body
    for part in qualname.split("."):
        node = next(n for n in nodes if isinstance(n, (ast.ClassDef, ast.FunctionDef)) and n.name == part)
        nodes = node.body if isinstance(node, ast.ClassDef) else []
    code = textwrap.dedent(ast.get_source_segment(source, node))
    for old, count in (replace or {}).items():
        assert code.count(old) == count, f"{path}:{qualname}: expected {count} × {old!r}; the official code changed"
        code = code.replace(old, "cpu")
    exec(compile(code, f"{path}:{qualname}", "exec"), namespace)
    return namespace[node.name]


def official_namespace() -> dict:
    return {"np": np, "torch": torch, "nn": nn, "F": F, "math": math, "logging": logging, "copy": copy,
            "__name__": "official"}


class Net(nn.Module):
    """What the official learners read of their network: an identity backbone (the features are given)."""

    def __init__(self):
        super().__init__()
        self.convnet = self.backbone = nn.Identity()
        self.fc = None


def loader(x, y, size=32):
    return [(torch.arange(len(by)), bx, by) for bx, by in batches(x, y, size)]


@pytest.fixture
def default_dtype():
    before = torch.get_default_dtype()
    yield torch.set_default_dtype
    torch.set_default_dtype(before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ranpac_equals_the_official_replace_fc(dtype, default_dtype):
    """RanPAC.py ``Learner.replace_fc`` + ``optimise_ridge_parameter`` + inc_net.py ``CosineLinear`` (use_RP,
    M > 0) over three stages of a 30-class benchmark. float64 (the official code run with float64 as the
    default dtype): the same λ every stage and logits within 1e-9. float32 (the official code as it runs):
    the same λ, logits within 1e-4 (float32 G, Q and solve; seen: 1e-5) and the same predictions."""
    ref = reference("RanPAC")
    default_dtype(dtype)  # the official code makes Y, Q, G, eye with the default dtype
    ns = official_namespace()
    ns["target2onehot"] = official(ref / "utils" / "toolkit.py", "target2onehot", ns)
    ns["CosineLinear"] = official(ref / "inc_net.py", "CosineLinear", ns)
    replace_fc = official(ref / "RanPAC.py", "Learner.replace_fc", ns, replace={"cuda": 4})
    optimise = official(ref / "RanPAC.py", "Learner.optimise_ridge_parameter", ns)

    head = RandomProjectionRidge(D, M, seed=11)
    learner = types.SimpleNamespace(args={"use_RP": True, "M": M}, W_rand=head.W.to(dtype), total_classnum=30,
                                    Q=torch.zeros(M, 30), G=torch.zeros(M, M), is_dil=False, _network=Net())
    ridges = []

    def optimise_ridge_parameter(features, y):  # the official method, its choice recorded
        ridges.append(optimise(learner, features, y))
        return ridges[-1]

    learner.optimise_ridge_parameter = optimise_ridge_parameter
    for s, ((x, y), (tx, _)) in enumerate(stages(3, per_stage=10, per_class=12, seed=2)):
        x, tx = (x * 10.0 ** (s - 1)).to(dtype), (tx * 10.0 ** (s - 1)).to(dtype)  # λ differs by stage
        learner._network.fc = ns["CosineLinear"](D, 10 * (s + 1))  # incremental_train: a new head per stage
        replace_fc(learner, loader(x, y))
        for bx, by in batches(x, y, 32):
            head.update(bx, by)
        assert float(ridges[-1]) == head.fit(), (s, ridges, head.ridge)
        with torch.no_grad():
            theirs = learner._network.fc(tx)["logits"]
        ours = head(tx)
        if dtype == torch.float64:
            torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
            assert torch.equal(ours.argmax(1), theirs.argmax(1))


def test_pilot_ranpac_picks_the_same_ridge(default_dtype):
    """PILOT's ``models/ranpac.py`` ``optimise_ridge_parameter`` (the same grid and split as RanPAC's) picks
    our λ on a stage's projected features with one-hot targets over all classes of the benchmark."""
    ref = reference("LAMDA-PILOT")
    default_dtype(torch.float64)
    ns = official_namespace()
    optimise = official(ref / "models" / "ranpac.py", "Learner.optimise_ridge_parameter", ns)
    chosen = set()
    for seed, (scale, spread, per_class) in enumerate(RIDGE_CASES):
        x, y = clusters(10, per_class, seed=seed, first=10, spread=spread)
        head = RandomProjectionRidge(D, M, seed=seed)
        head.update(x * scale, y)
        h = head.project(x * scale)
        ridge = optimise(None, h, F.one_hot(y, 50).double())  # its `self` is unused
        assert float(ridge) == head.fit(), (seed, ridge, head.ridge)
        chosen.add(head.ridge)
    assert len(chosen) >= 5, chosen  # the check covers the grid, not one λ


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_prototypes_equal_pilot_simplecil(dtype, default_dtype):
    """PILOT's ``models/simplecil.py`` ``Learner.replace_fc`` with ``utils/inc_net.py`` ``SimpleVitNet.update_fc``
    / ``generate_fc`` and ``backbone/linears.py`` ``CosineLinear`` over three stages: logits within 1e-12
    (float64 default dtype) or 1e-5 (float32, as it runs), same predictions."""
    ref = reference("LAMDA-PILOT")
    default_dtype(dtype)
    ns = official_namespace()
    ns["CosineLinear"] = official(ref / "backbone" / "linears.py", "CosineLinear", ns)
    replace_fc = official(ref / "models" / "simplecil.py", "Learner.replace_fc", ns)
    update_fc = official(ref / "utils" / "inc_net.py", "SimpleVitNet.update_fc", ns)
    generate_fc = official(ref / "utils" / "inc_net.py", "SimpleVitNet.generate_fc", ns)

    net = Net()
    net.RP_dim, net.feature_dim, net._device = None, D, "cpu"
    net.update_fc = types.MethodType(update_fc, net)
    net.generate_fc = types.MethodType(generate_fc, net)
    learner = types.SimpleNamespace(_device="cpu", _network=net)
    head = PrototypeClassifier(D)
    seen = []
    for s, ((x, y), (tx, _)) in enumerate(stages(3, per_stage=10, per_class=15, seed=4)):
        x, tx = x.to(dtype), tx.to(dtype)
        net.update_fc(10 * (s + 1))
        learner.train_dataset = types.SimpleNamespace(labels=y.numpy())
        replace_fc(learner, loader(x, y), net, None)
        for bx, by in batches(x, y, 32):
            head.update(bx, by)
        seen.append(tx)
        with torch.no_grad():
            theirs = net.fc(torch.cat(seen))["logits"]
        ours = head(torch.cat(seen))
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(ours, theirs, rtol=tol, atol=tol)
        assert torch.equal(ours.argmax(1), theirs.argmax(1))
