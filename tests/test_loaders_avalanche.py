"""Avalanche's classic benchmarks (gift_cl/data/avalanche_classic.py) on format-exact fixtures,
plus the real Split-FMNIST from Debian's dataset-fashion-mnist (``-m real_data``)."""
import os

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from gift_cl.data.avalanche_classic import LAYOUTS, class_order, load_core50, load_split
from gift_cl.data.base import DataError

from fixtures import (
    CONFIGS,
    FASHION_MNIST_DEB_DIR,
    decode_label,
    require_debian_fashion_mnist,
    write_cifar10,
    write_cifar100,
    write_core50,
    write_idx_gz_flat,
    write_mnist_like,
    write_tiny_imagenet,
)

torch.set_num_threads(1)
ID = dict(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], image_size=16)


def check_tasks(tasks, n_tasks, classes_per_task, decode=lambda original: original % 10):
    """Labels 0..C-1 in every task, each image shows the original class its label stands for,
    and the tasks' classes are disjoint (a class split)."""
    assert len(tasks) == n_tasks
    seen = []
    for task in tasks:
        classes = task.info["classes"]
        assert task.num_classes == len(classes) == classes_per_task
        seen += classes
        for ds in (task.train, task.test):
            assert set(ds.targets) == set(range(classes_per_task))
            for i in range(len(ds)):
                x, y = ds[i]
                assert x.shape == (3, 16, 16) and isinstance(y, int)
                assert decode_label(x) == decode(classes[y]), (task.name, i, y, classes)
    assert len(seen) == len(set(seen))


# ----------------------------------------------------------------------------- formats
def test_split_mnist_torchvision_layout(tmp_path):
    write_mnist_like(str(tmp_path), "MNIST", n_train=40, n_test=20)
    tasks = load_split("split_mnist", str(tmp_path), n_experiences=5, class_order_seed=0, **ID)
    check_tasks(tasks, 5, 2)
    assert [t.name for t in tasks] == [f"split_mnist_exp{i}" for i in range(5)]
    assert [(len(t.train), len(t.test)) for t in tasks] == [(8, 4)] * 5
    assert [c for t in tasks for c in t.info["classes"]] == [4, 1, 7, 5, 3, 9, 0, 8, 6, 2]


def test_split_fmnist_flat_gzip_layout(tmp_path):
    """The Zalando release / Debian package layout: the four .gz files directly in root."""
    write_idx_gz_flat(str(tmp_path), n_train=20, n_test=10)
    tasks = load_split("split_fmnist", str(tmp_path), n_experiences=2, class_order_seed=1, **ID)
    check_tasks(tasks, 2, 5)
    assert sum(len(t.train) for t in tasks) == 20 and sum(len(t.test) for t in tasks) == 10


def test_class_order_matches_avalanche_nc_benchmark(tmp_path):
    """Same classes per experience, same remapped labels, as Avalanche's own SplitMNIST."""
    from avalanche.benchmarks.classic import SplitMNIST

    write_mnist_like(str(tmp_path), "MNIST", n_train=40, n_test=20)
    for seed in (0, 7):
        ours = load_split("split_mnist", str(tmp_path), n_experiences=5, class_order_seed=seed, **ID)
        bm = SplitMNIST(5, seed=seed, return_task_id=True, class_ids_from_zero_in_each_exp=True,
                        dataset_root=str(tmp_path))
        assert [c for t in ours for c in t.info["classes"]] == list(bm.classes_order_original_ids)
        for task, exp in zip(ours, bm.train_stream):
            assert sorted(task.train.targets) == sorted(int(y) for y in exp.dataset.targets)
    assert class_order(range(10), None, fixed_class_order=[9, 8, 1]) == [9, 8, 1]
    assert class_order(range(4), None, shuffle=False) == [0, 1, 2, 3]


def test_split_cifar10(tmp_path):
    write_cifar10(str(tmp_path), per_batch=8, n_test=20)
    tasks = load_split("split_cifar10", str(tmp_path), n_experiences=5, class_order_seed=0, **ID)
    check_tasks(tasks, 5, 2)
    assert sum(len(t.train) for t in tasks) == 40 and sum(len(t.test) for t in tasks) == 20


def test_split_cifar100_fine_labels_and_fixed_order(tmp_path):
    write_cifar100(str(tmp_path), n_classes=20, n_train=3, n_test=2)
    order = list(range(19, -1, -1))
    tasks = load_split("split_cifar100", str(tmp_path), n_experiences=10, fixed_class_order=order, **ID)
    check_tasks(tasks, 10, 2)
    assert tasks[0].info["classes"] == [19, 18] and tasks[-1].info["classes"] == [1, 0]
    assert [(len(t.train), len(t.test)) for t in tasks] == [(6, 4)] * 10


def test_split_tiny_imagenet_labels_follow_wnids_txt(tmp_path):
    wnids = write_tiny_imagenet(str(tmp_path), n_classes=4, n_train=3, n_val=2)
    tasks = load_split("split_tiny_imagenet", str(tmp_path), n_experiences=2, shuffle=False,
                       verify_images=True, **ID)
    # class k = line k of wnids.txt; its images are filled with class_value(k)
    check_tasks(tasks, 2, 2, decode=lambda k: k)
    assert tasks[0].info["class_names"] == wnids[:2] and tasks[1].info["class_names"] == wnids[2:]
    assert [(len(t.train), len(t.test)) for t in tasks] == [(6, 4), (6, 4)]
    assert tasks[0].info["eval_split"] == "val"
    cached = load_split("split_tiny_imagenet", str(tmp_path), n_experiences=2, cache_decoded=True, **ID)
    assert cached[0].train.cache.shape == (6, 64, 64, 3)


@pytest.mark.parametrize("mini", [False, True])
def test_core50_nc(tmp_path, mini):
    layout = write_core50(str(tmp_path), mini=mini)
    tasks = load_core50(str(tmp_path), scenario="nc", mini=mini, **ID)
    batches = layout["nc"]["batches"]
    assert [t.info["classes"] for t in tasks] == [sorted(b) for b in batches]
    for task, batch in zip(tasks, batches):
        assert task.num_classes == len(batch)
        assert (len(task.train), len(task.test)) == (2 * len(batch), 2 * len(batch))
        for ds in (task.train, task.test):
            assert set(ds.targets) == set(range(len(batch)))
            for i in range(len(ds)):
                x, y = ds[i]
                assert x.shape == (3, 16, 16) and decode_label(x) == task.info["classes"][y] % 10


def test_core50_ni_every_task_has_all_objects(tmp_path):
    layout = write_core50(str(tmp_path))
    tasks = load_core50(str(tmp_path), scenario="ni", verify_images=True, **ID)
    assert len(tasks) == len(layout["ni"]["batches"])
    for task in tasks:
        assert task.num_classes == 50 and task.info["classes"] == list(range(50))
        assert task.test.targets == layout["ni"]["test_labels"]  # the whole test set, labels unchanged
        x, y = task.train[1]
        assert decode_label(x) == y % 10


def test_stream_has_per_task_labels_from_zero(tmp_path):
    from gift_cl.data.stream import build_stream

    write_cifar10(str(tmp_path), per_batch=4, n_test=10)
    bm = build_stream(load_split("split_cifar10", str(tmp_path), n_experiences=5, class_order_seed=0, **ID))
    for i, exp in enumerate(bm.train_stream):
        assert exp.task_label == i and exp.classes_in_this_experience == [0, 1]
        _, _, t = exp.dataset[0]
        assert t == i


def test_configs_instantiate_with_backbone_size(tmp_path):
    from gift_cl.config import register_resolvers

    register_resolvers()  # ${backbone_data:...}

    write_mnist_like(str(tmp_path), "MNIST", n_train=20, n_test=10)
    names = sorted(f[:-5] for f in os.listdir(os.path.join(CONFIGS, "benchmark", "avalanche")))
    assert names == ["core50_nc", "core50_ni", "split_cifar10", "split_cifar100", "split_fmnist", "split_mnist",
                     "split_tiny_imagenet"]
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose("config", overrides=["model=vit_tiny_random", "benchmark=avalanche/split_mnist",
                                           f"benchmark.root={tmp_path}", "seed=0"])
        for name in names:  # every config composes and names its loader's arguments
            other = compose("config", overrides=["model=vit_tiny_random", f"benchmark=avalanche/{name}"])
            assert other.benchmark.image_size == 32
    tasks = instantiate(cfg.benchmark)
    assert len(tasks) == 5 and tasks[0].train[0][0].shape == (3, 32, 32)  # model.image_size from the backbone


# ----------------------------------------------------------------------------- missing / bad data
WRITERS = {
    "split_mnist": lambda r: write_mnist_like(r, "MNIST"),
    "split_fmnist": lambda r: write_idx_gz_flat(r),
    "split_cifar10": lambda r: write_cifar10(r),
    "split_cifar100": lambda r: write_cifar100(r),
    "split_tiny_imagenet": lambda r: write_tiny_imagenet(r),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_missing_data_one_error_with_folder_and_layout(tmp_path, name):
    root = tmp_path / "data"
    root.mkdir()
    load = (lambda: load_core50(str(root))) if name == "core50" else (lambda: load_split(name, str(root)))
    with pytest.raises(DataError) as err:
        load()
    msg = str(err.value)
    assert msg.startswith(f"{root}: {LAYOUTS[name][0]} not found")
    assert f"Expected layout: {LAYOUTS[name][2]}" in msg and "Nothing is downloaded" in msg
    assert os.listdir(root) == []  # nothing written, nothing downloaded
    with pytest.raises(DataError, match=f"{tmp_path / 'nowhere'}: .* not found .*the folder does not exist"
                       if name != "core50" else f"{tmp_path / 'nowhere'}: CORe50 not found"):
        (load_core50(str(tmp_path / "nowhere")) if name == "core50" else load_split(name, str(tmp_path / "nowhere")))


def test_partial_and_corrupt_files(tmp_path):
    root = str(tmp_path)
    write_mnist_like(root, "MNIST")
    os.remove(os.path.join(root, "MNIST", "raw", "t10k-labels-idx1-ubyte"))
    with pytest.raises(DataError, match=r"MNIST not found \(only .*train-images-idx3-ubyte"):
        load_split("split_mnist", root)
    write_cifar10(root)
    with open(os.path.join(root, "cifar-10-batches-py", "data_batch_2"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(DataError, match="data_batch_2: not a CIFAR-10 python pickle"):
        load_split("split_cifar10", root)
    write_idx_gz_flat(root)
    with open(os.path.join(root, "train-labels-idx1-ubyte.gz"), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: not a valid IDX file"):
        load_split("split_fmnist", root)


def test_bad_options(tmp_path):
    write_cifar10(str(tmp_path))
    with pytest.raises(DataError, match="n_experiences=3 does not divide the 10 classes"):
        load_split("split_cifar10", str(tmp_path), n_experiences=3)
    with pytest.raises(DataError, match="fixed_class_order"):
        load_split("split_cifar10", str(tmp_path), fixed_class_order=[1, 1, 2, 3, 4])
    with pytest.raises(DataError, match="benchmark='split_kmnist' is not valid"):
        load_split("split_kmnist", str(tmp_path))
    with pytest.raises(DataError, match="scenario='nic' is not valid"):
        load_core50(str(tmp_path), scenario="nic")


# ----------------------------------------------------------------------------- real data
@pytest.mark.real_data
def test_real_split_fmnist_default_root():
    """benchmark=avalanche/split_fmnist finds the Debian files without any root override."""
    from gift_cl.config import register_resolvers

    register_resolvers()

    require_debian_fashion_mnist()
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose("config", overrides=["model=vit_tiny_random", "benchmark=avalanche/split_fmnist", "seed=0"])
    assert cfg.benchmark.root == FASHION_MNIST_DEB_DIR
    tasks = instantiate(cfg.benchmark)
    assert len(tasks) == 5 and all(t.num_classes == 2 for t in tasks)
    assert sum(len(t.train) for t in tasks) == 60000 and sum(len(t.test) for t in tasks) == 10000
    assert [(len(t.train), len(t.test)) for t in tasks] == [(12000, 2000)] * 5
    assert sorted(c for t in tasks for c in t.info["classes"]) == list(range(10))
    for task in tasks:
        for ds in (task.train, task.test):
            assert np.bincount(ds.targets).tolist() == [len(ds) // 2] * 2  # labels 0..1, balanced
        x, y = task.train[0]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y in (0, 1)
        assert -1.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > float(x.min())
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose("config", overrides=["model=vit_tiny_random", "benchmark=avalanche/split_fmnist", "seed=0",
                                           "benchmark.val_per_class=500", "benchmark.eval_split=val"])
    val = instantiate(cfg.benchmark)  # 500 of every class's 6,000 training images held out
    assert [(len(t.train), len(t.test), t.info["eval_split"]) for t in val] == [(11000, 1000, "val")] * 5


def test_per_class_caps_keep_first_images_of_every_class(tmp_path):
    write_mnist_like(str(tmp_path), "MNIST", n_train=40, n_test=20)  # 4 train / 2 test images a class
    tasks = load_split("split_mnist", str(tmp_path), n_experiences=5, train_per_class=3, test_per_class=1, **ID)
    check_tasks(tasks, 5, 2)
    assert [(len(t.train), len(t.test)) for t in tasks] == [(6, 2)] * 5
    assert tasks[0].info["train_per_class"] == 3
    with pytest.raises(DataError, match="per-class cap 0"):
        load_split("split_mnist", str(tmp_path), train_per_class=0)


def test_validation_split_holds_out_the_last_images_of_every_class(tmp_path):
    """val_per_class=k: the last k training images of every class (file order) form the validation split, never
    trained on; eval_split=val evaluates on them; train_per_class caps what is left."""
    from fixtures import _idx_write

    write_mnist_like(str(tmp_path), "MNIST", n_train=60, n_test=20)  # 6 train / 2 test images a class
    raw = tmp_path / "MNIST" / "raw"
    _idx_write(str(raw / "train-images-idx3-ubyte"), np.stack([np.full((28, 28), i, np.uint8) for i in range(60)]))
    labels = np.arange(60) % 10  # image i is class i % 10: class c's images are c, c + 10, ..., c + 50

    def image_ids(ds):
        return sorted(int(img[0, 0, 0]) for img in ds.images)

    order = dict(n_experiences=5, shuffle=False, **ID)
    val = load_split("split_mnist", str(tmp_path), val_per_class=2, eval_split="val", **order)
    test = load_split("split_mnist", str(tmp_path), val_per_class=2, **order)
    full = load_split("split_mnist", str(tmp_path), **order)
    for v, te, f in zip(val, test, full):
        classes = f.info["classes"]
        held = sorted(c + 10 * k for c in classes for k in (4, 5))  # the last 2 of each class
        assert image_ids(v.test) == held and set(image_ids(v.train)).isdisjoint(held)
        assert image_ids(v.train) == sorted(set(image_ids(f.train)) - set(held))
        assert all(labels[int(img[0, 0, 0])] == classes[y] for img, y in zip(v.test.images, v.test.targets))
        assert image_ids(te.train) == image_ids(v.train) and len(te.test) == len(f.test) == 4  # test split unchanged
        assert (v.info["eval_split"], te.info["eval_split"], v.info["val_per_class"]) == ("val", "test", 2)
    capped = load_split("split_mnist", str(tmp_path), val_per_class=2, eval_split="val", train_per_class=3, **order)
    assert image_ids(capped[0].train) == [0, 1, 10, 11, 20, 21] and image_ids(capped[0].test) == image_ids(val[0].test)
    with pytest.raises(DataError, match="eval_split=val evaluates on images held out of training: set val_per_class"):
        load_split("split_mnist", str(tmp_path), eval_split="val")
    with pytest.raises(DataError, match="class 0 has 6 training images; val_per_class=6 would leave none"):
        load_split("split_mnist", str(tmp_path), val_per_class=6)
    with pytest.raises(DataError, match="eval_split='dev' is not valid"):
        load_split("split_mnist", str(tmp_path), eval_split="dev")


@pytest.mark.real_data
@pytest.mark.slow
def test_split_fmnist_reference_table(tmp_path):
    """The README's Split-FMNIST table end to end (7 strategies x 3 seeds, ~25 min on 2 cores):
    ``pytest -m "real_data and slow"``. Every run finishes, learns the real 2-class tasks and the
    parameter-isolating strategies forget nothing."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    from runs import REPO, env

    require_debian_fashion_mnist()
    out = tmp_path / "sweep"
    subprocess.run([sys.executable, "-m", "orchestration.sweep", str(REPO / "analysis" / "sweeps" / "split_fmnist.txt"),
                    "--out", str(out), "--jobs", "2"], cwd=REPO, env=env(), check=True, timeout=3600)
    results = [json.loads(p.read_text()) for p in Path(out).glob("*/results.json")]
    assert len(results) == 21 and all(r["finished"] for r in results)
    for r in results:
        assert r["average_accuracy"] > 0.8, (r["strategy"], r["seed"], r["average_accuracy"])
        if r["strategy"].endswith("_multitask"):
            assert r["forgetting"] == 0.0
