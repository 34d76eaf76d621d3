"""The procedural decathlon: registry, determinism, caching and the TaskData contract."""
from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gift_cl.data import procedural as P
from gift_cl.data.base import ArrayDataset, DataError, TaskData
from gift_cl.data.procedural.registry import _derive_seed

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "benchmark"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Every test gets an empty cache, so nothing is served from an earlier run by accident."""
    root = tmp_path / "cache"
    monkeypatch.setenv("GIFT_CL_CACHE", str(root))
    return root / "procedural"


def _n_balanced(domain: str) -> int:
    return 2 * P.DOMAINS[domain].num_classes


# ------------------------------------------------------------------------------------- registry


def test_registry_shape_of_the_decathlon():
    assert len(P.DECATHLON) >= 10 and len(set(P.DECATHLON)) == len(P.DECATHLON)
    assert 3 <= len(P.UPSTREAM) <= 4
    assert not set(P.DECATHLON) & set(P.UPSTREAM), "pretraining domains must be held out of the decathlon"
    assert set(P.DECATHLON) | set(P.UPSTREAM) | set(P.PART_VOCABULARY) == set(P.DOMAINS)
    assert not set(P.PART_VOCABULARY) & (set(P.DECATHLON) | set(P.UPSTREAM)), "the experiment's domains stand apart"
    counts = [P.DOMAINS[d].num_classes for d in P.DECATHLON]
    assert min(counts) == 2 and max(counts) == 100
    greys = {P.DOMAINS[d].grey for d in P.DECATHLON}
    assert greys == {True, False}, "the decathlon should mix grey and colour domains"
    for name, spec in P.DOMAINS.items():
        assert spec.name == name
        assert len(spec.description) > 40 and spec.mimics
        assert isinstance(spec.hflip_ok, bool)


def test_derived_seed_is_stable_and_separates_fields():
    # pinned: changing the derivation silently changes every dataset (and must bump VERSION)
    assert _derive_seed(0, "objects", "train") == 0xF9CBCBE1E289A974
    seeds = {_derive_seed(s, d, sp) for s in (0, 1) for d in ("objects", "digits") for sp in ("train", "test")}
    assert len(seeds) == 8


# ---------------------------------------------------------------------------- shapes and labels


@pytest.mark.parametrize("domain", list(P.DOMAINS))
def test_every_domain_shapes_labels_and_channels(domain):
    spec = P.DOMAINS[domain]
    n = _n_balanced(domain)
    x, y = P.generate(domain, n, seed=3)
    assert x.shape == (n, 32, 32, 3) and x.dtype == np.uint8
    assert y.shape == (n,) and y.dtype == np.int64
    assert np.array_equal(np.bincount(y, minlength=spec.num_classes), np.full(spec.num_classes, 2))
    grey = (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all()
    assert grey == spec.grey
    assert x.std() > 10, "images should not be blank"
    # images of one class still differ: the nuisance factors are at work
    same = x[y == 0]
    assert not np.array_equal(same[0], same[1])


@pytest.mark.parametrize("size", [64, 72])
def test_every_domain_at_larger_sizes(size):
    for domain in P.DOMAINS:
        x, y = P.generate(domain, 3, image_size=size)
        assert x.shape == (3, size, size, 3) and x.dtype == np.uint8, domain
        assert ((0 <= y) & (y < P.DOMAINS[domain].num_classes)).all()


def test_labels_are_shuffled_round_robin():
    _, y = P.generate("gabor100", 300)
    assert not np.array_equal(y, np.arange(300) % 100)
    assert np.array_equal(np.sort(y), np.sort(np.arange(300) % 100))


def test_unbalanced_n_still_balances_as_well_as_possible():
    _, y = P.generate("signs", 100)
    counts = np.bincount(y, minlength=43)
    assert counts.max() - counts.min() == 1 and counts.sum() == 100


# ---------------------------------------------------------------------------------- determinism


def test_regeneration_is_bitwise_identical_and_ignores_global_rng(tmp_path, monkeypatch):
    np.random.seed(1)
    random.seed(1)
    torch.manual_seed(1)
    a = {d: P.generate(d, 24, seed=5) for d in ("textures", "glyphs", "objects")}
    # fresh cache, scrambled global state, reversed order: must not matter
    monkeypatch.setenv("GIFT_CL_CACHE", str(tmp_path / "other"))
    np.random.seed(99)
    random.seed(99)
    torch.manual_seed(99)
    np.random.random(1000)
    b = {d: P.generate(d, 24, seed=5) for d in ("objects", "glyphs", "textures")}
    assert len(list((tmp_path / "other").rglob("*.npz"))) == 3, "the second round must have generated afresh"
    for d in a:
        assert np.array_equal(a[d][0], b[d][0]) and np.array_equal(a[d][1], b[d][1]), d


def test_seeds_and_splits_are_different_draws():
    x0, y0 = P.generate("flowers", 48, seed=0)
    x1, _ = P.generate("flowers", 48, seed=1)
    xt, _ = P.generate("flowers", 48, seed=0, split="test")
    assert not np.array_equal(x0, x1)
    assert not np.array_equal(x0, xt)
    # no test image is a copy of a training image
    train_keys = {img.tobytes() for img in x0}
    assert not any(img.tobytes() in train_keys for img in xt)


# ---------------------------------------------------------------------------------------- cache


def test_cache_round_trip_serves_identical_arrays(cache_dir, monkeypatch):
    x, y = P.generate("digits", 30, split="test", seed=2, image_size=32)
    files = list(cache_dir.glob("*.npz"))
    assert len(files) == 1
    name = files[0].name
    for part in ("digits", f"v{P.VERSION}", "seed2", "test", "n30", "32px"):
        assert part in name
    assert not list(cache_dir.glob("*.tmp")), "atomic write must not leave temp files behind"

    def boom(*_):
        raise AssertionError("generator called although the cache holds this dataset")

    monkeypatch.setitem(P.DOMAINS, "digits", dataclasses.replace(P.DOMAINS["digits"], generate=boom))
    x2, y2 = P.generate("digits", 30, split="test", seed=2, image_size=32)
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and y2.dtype == np.int64
    with pytest.raises(AssertionError, match="generator called"):
        P.generate("digits", 31, split="test", seed=2)  # a different n is a different key


def test_corrupt_cache_file_is_regenerated(cache_dir):
    x, y = P.generate("motion", 12)
    (path,) = cache_dir.glob("*.npz")
    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        x2, y2 = P.generate("motion", 12)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    with np.load(path) as z:  # and the cache file was repaired
        assert np.array_equal(z["images"], x)


# -------------------------------------------------------------------------------- errors


def test_unknown_domain_error_lists_known_names():
    with pytest.raises(DataError, match=r"unknown procedural domain 'mnist'.*objects.*glyphs"):
        P.generate("mnist", 10)
    with pytest.raises(DataError, match="known domains"):
        P.load_procedural(["objects", "imagenet"], n_train=4, n_test=4)
    with pytest.raises(DataError, match="unknown domains"):
        P.load_procedural(["objects"], n_train={"objectz": 4}, n_test=4)


@pytest.mark.parametrize("kwargs", [dict(n=0), dict(split="dev"), dict(image_size=8), dict(seed=-1), dict(n=2.5)])
def test_bad_generate_arguments(kwargs):
    args = dict(domain="objects", n=4) | kwargs
    with pytest.raises(DataError):
        P.generate(args.pop("domain"), args.pop("n"), **args)


# ------------------------------------------------------------------------------ load_procedural


def test_load_procedural_default_is_the_decathlon():
    tasks = P.load_procedural(n_train=10, n_test=6)
    assert [t.name for t in tasks] == P.DECATHLON
    for t in tasks:
        assert isinstance(t, TaskData) and isinstance(t.train, ArrayDataset)
        assert t.num_classes == P.DOMAINS[t.name].num_classes
        assert len(t.train) == 10 and len(t.test) == 6
        assert t.info["version"] == P.VERSION and t.info["mimics"] == P.DOMAINS[t.name].mimics


def test_load_procedural_tensors_are_normalised_and_sized():
    (task,) = P.load_procedural(["textures"], n_train=8, n_test=4, mean=(0.5, 0.4, 0.3), std=(0.25, 0.5, 1.0))
    raw = task.train.images[0].astype(np.float32) / 255.0
    x, label = task.train[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32)
    assert label == task.train.targets[0]
    expected = (raw - np.array([0.5, 0.4, 0.3])) / np.array([0.25, 0.5, 1.0])
    assert np.allclose(x.permute(1, 2, 0).numpy(), expected, atol=1e-5)

    (big,) = P.load_procedural(["textures"], n_train=8, n_test=4, resize_to=48)
    for ds in (big.train, big.test):
        xb, _ = ds[1]
        assert xb.shape == (3, 48, 48) and -1.0 <= float(xb.min()) and float(xb.max()) <= 1.0
    assert big.info["resize_to"] == 48


def test_load_procedural_overrides_and_augmentation():
    tasks = P.load_procedural(["objects", "digits"], n_train={"digits": 12}, n_test=5, augment=True, resize_to=40)
    assert [len(t.train) for t in tasks] == [500, 12]
    assert [len(t.test) for t in tasks] == [5, 5]
    names = lambda ds: [type(s).__name__ for s in ds.transform.transforms]  # noqa: E731
    objects, digits = tasks
    assert names(objects.train) == ["Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert names(digits.train) == ["Resize", "RandomCrop", "ToTensor", "Normalize"], "a mirrored digit is another class"
    assert names(digits.test) == ["Resize", "ToTensor", "Normalize"]
    assert digits.train[0][0].shape == (3, 40, 40)
    with pytest.raises(DataError, match="duplicate"):
        P.load_procedural(["digits", "digits"], n_train=4, n_test=4)


@pytest.mark.parametrize("config", ["procedural.yaml", "procedural_single.yaml"])
def test_hydra_configs_instantiate(config):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    bench = OmegaConf.load(CONFIGS / config)
    root = OmegaConf.create({"model": {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}, "seed": 0,
                             "benchmark": bench})
    root.benchmark.n_train = 8
    root.benchmark.n_test = 4
    tasks = instantiate(root.benchmark)
    expected = P.DECATHLON if bench.domains is None else list(bench.domains)
    assert [t.name for t in tasks] == expected
    assert all(t.train[0][0].shape == (3, 32, 32) for t in tasks)


# ------------------------------------------------------------------------------ validation split
def _hashes(images: np.ndarray) -> set[bytes]:
    return {img.tobytes() for img in images}


@pytest.mark.parametrize("domain", ["textures", "pedestrians"])
def test_validation_split_is_disjoint_and_deterministic(domain, cache_dir):
    xs, _ = P.generate(domain, 60, split="train", seed=0)
    xt, _ = P.generate(domain, 40, split="test", seed=0)
    xv, yv = P.generate(domain, 40, split="val", seed=0)
    assert not _hashes(xv) & _hashes(xs) and not _hashes(xv) & _hashes(xt)
    # determinism: regenerated without the cache, in a different order, it is the same
    for f in cache_dir.glob("*.npz"):
        f.unlink()
    P.generate(domain, 40, split="test", seed=0)
    xv2, yv2 = P.generate(domain, 40, split="val", seed=0)
    assert np.array_equal(xv, xv2) and np.array_equal(yv, yv2)


def test_n_val_default_changes_nothing_and_eval_split_val_swaps_the_evaluated_split():
    base = P.load_procedural(["textures"], n_train=20, n_test=20)[0]
    with_val = P.load_procedural(["textures"], n_train=20, n_test=20, n_val=40)[0]
    on_val = P.load_procedural(["textures"], n_train=20, n_test=20, n_val=40, eval_split="val")[0]
    assert base.info["eval_split"] == "test" and base.info["n_val"] == 0
    for t in (with_val, on_val):  # the training split never depends on the validation split
        assert np.array_equal(t.train.images, base.train.images)
    assert np.array_equal(with_val.test.images, base.test.images)
    assert on_val.info["eval_split"] == "val" and len(on_val.test) == 40 and on_val.info["n_test"] == 40
    val_images, _ = P.generate("textures", 40, split="val", seed=0)
    assert np.array_equal(on_val.test.images, val_images)


def test_eval_split_val_needs_a_validation_split():
    with pytest.raises(DataError, match="n_val"):
        P.load_procedural(["textures"], n_train=20, n_test=20, eval_split="val")
    with pytest.raises(DataError, match="eval_split"):
        P.load_procedural(["textures"], n_train=20, n_test=20, n_val=10, eval_split="train")
    with pytest.raises(DataError, match="n_val"):
        P.load_procedural(["textures"], n_train=20, n_test=20, n_val=-1)


def test_a_run_evaluated_on_val_records_it(tmp_path):
    from runs import compose_cfg, run_in_process

    cfg = compose_cfg("strategy=linear", "benchmark.domains=[pedestrians]", "benchmark.n_train=32",
                      "benchmark.n_test=16", "benchmark.n_val=24", "benchmark.eval_split=val", "optim.epochs=1",
                      "checkpoint_every=0")
    res = run_in_process(cfg, tmp_path / "run")
    (task,) = res["tasks"]
    assert task["info"]["eval_split"] == "val" and task["n_test"] == 24 and task["info"]["n_val"] == 24
