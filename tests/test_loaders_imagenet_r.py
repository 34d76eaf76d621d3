"""ImageNet-R (gift_cl/data/imagenet_r.py) on format-exact fixtures, and the class-incremental increments
("B<base> Inc<inc>"), class order rules and class offsets shared with ``benchmark=avalanche/*``."""
import os

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from gift_cl.data.avalanche_classic import class_order, load_split, split_classes
from gift_cl.data.base import DataError
from gift_cl.data.imagenet_r import LAYOUT, load_imagenet_r

from fixtures import CONFIGS, decode_label, write_cifar100, write_imagenet_r

torch.set_num_threads(1)
ID = dict(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], image_size=16)
# deliberately not sorted: labels follow the sorted wnids
WNIDS = ["n02007558", "n01443537", "n01833805", "n02051845", "n01484850", "n01694178"]


def check_tasks(tasks, sizes):
    """Labels 0..C-1 in every task, every image shows the class its label stands for, the classes of the
    tasks are disjoint, class_offset counts the classes before, class_names are the sorted wnids."""
    assert [t.num_classes for t in tasks] == sizes
    assert [t.name for t in tasks] == [f"imagenet_r_exp{i}" for i in range(len(sizes))]
    seen = []
    for task in tasks:
        classes = task.info["classes"]
        assert task.info["class_offset"] == len(seen)
        assert task.info["class_names"] == [sorted(WNIDS)[c] for c in classes]
        seen += classes
        for ds in (task.train, task.test):
            assert set(ds.targets) == set(range(len(classes)))
            for i in range(len(ds)):
                x, y = ds[i]
                assert x.shape == (3, 16, 16) and isinstance(y, int)
                assert decode_label(x) == classes[y] % 10, (task.name, i, y, classes)
    assert sorted(seen) == list(range(sum(sizes)))


def files_of(tasks, split):
    """{wnid: [relative paths]} of a loaded stream's train or test split."""
    out = {}
    for task in tasks:
        ds = getattr(task, split)
        for rel, y in zip(ds.relpaths, ds.targets):
            out.setdefault(task.info["class_names"][y], []).append(rel)
    return out


# ----------------------------------------------------------------------------- layouts and splits
def test_flat_layout_random_split_is_disjoint_stratified_and_seeded(tmp_path):
    root = str(tmp_path / "imagenet-r")
    written = write_imagenet_r(root, WNIDS, per_class=[10, 10, 7, 5, 2, 3])["all"]
    tasks = load_imagenet_r(root, n_experiences=3, class_order_seed=0, **ID)
    check_tasks(tasks, [2, 2, 2])
    train, test = files_of(tasks, "train"), files_of(tasks, "test")
    for w, rel in written.items():
        assert not set(train[w]) & set(test[w]) and sorted(train[w] + test[w]) == rel  # disjoint, complete
        n = len(rel)
        assert len(test[w]) == {10: 2, 7: 1, 5: 1, 3: 1, 2: 1}[n]  # round(0.2 n), at least 1, at most n - 1
        assert train[w] == sorted(train[w]) and test[w] == sorted(test[w])
    info = tasks[0].info
    assert (info["split"], info["test_fraction"], info["split_seed"], info["eval_split"]) == ("random", 0.2, 0, "test")
    assert [(t.info["n_train"], t.info["n_eval"]) for t in tasks] == [(len(t.train), len(t.test)) for t in tasks]
    assert sum(len(t.train) + len(t.test) for t in tasks) == 37

    again = load_imagenet_r(root, n_experiences=3, class_order_seed=0, **ID)
    assert files_of(again, "test") == test  # seeded: the same split every time
    other = files_of(load_imagenet_r(root, n_experiences=3, split_seed=1, **ID), "test")
    assert other != test and {w: len(r) for w, r in other.items()} == {w: len(r) for w, r in test.items()}
    half = files_of(load_imagenet_r(root, n_experiences=2, test_fraction=0.5, split="random", **ID), "test")
    assert {w: len(r) for w, r in half.items()} == {w: {10: 5, 7: 4, 5: 3, 3: 2, 2: 1}[len(written[w])]
                                                    for w in WNIDS}
    # a class's split does not depend on which other classes are there
    sub = str(tmp_path / "subset")
    write_imagenet_r(sub, WNIDS[:2], per_class=10)
    sub_test = files_of(load_imagenet_r(sub, n_experiences=1, **ID), "test")
    assert sub_test == {w: test[w] for w in WNIDS[:2]}


@pytest.mark.parametrize("split", ["auto", "folders"])
def test_folders_layout_reads_the_fixed_split(tmp_path, split):
    root = str(tmp_path)
    written = write_imagenet_r(root, WNIDS, per_class=3, layout="folders", test_per_class=2)
    tasks = load_imagenet_r(root, n_experiences=2, split=split, verify_images=True, **ID)
    check_tasks(tasks, [3, 3])
    assert files_of(tasks, "train") == written["train"] and files_of(tasks, "test") == written["test"]
    assert (tasks[1].info["split"], tasks[1].info["test_fraction"], tasks[1].info["split_seed"]) == ("folders", None, None)
    with pytest.raises(DataError, match=r"no class folders in .*it holds train/ and test/: use split=folders"):
        load_imagenet_r(root, split="random", **ID)


def test_caps_cache_and_verify(tmp_path):
    root = str(tmp_path)
    write_imagenet_r(root, WNIDS[:4], per_class=10)
    tasks = load_imagenet_r(root, n_experiences=2, train_per_class=3, test_per_class=1, cache_decoded=True,
                            verify_images=True, **ID)
    assert [(len(t.train), len(t.test)) for t in tasks] == [(6, 2), (6, 2)]
    assert tasks[0].train.cache.shape == (6, 16, 16, 3)  # resized before caching
    assert tasks[0].info["train_per_class"] == 3
    capped = files_of(tasks, "train")
    full = files_of(load_imagenet_r(root, n_experiences=2, **ID), "train")
    assert all(capped[w] == full[w][:3] for w in capped)  # the first k of the split, file-name order
    bad = os.path.join(root, WNIDS[0], "broken.jpg")
    with open(os.path.join(root, WNIDS[0], "art_0.jpg"), "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(DataError, match="broken.jpg: not a readable image"):
        load_imagenet_r(root, n_experiences=2, test_fraction=0.5, verify_images=True, **ID)


# ----------------------------------------------------------------------------- class order and increments
def test_class_order_rules(tmp_path):
    root = str(tmp_path)
    write_imagenet_r(root, WNIDS, per_class=2)
    state = np.random.get_state()
    try:
        np.random.seed(1993)
        pilot = np.random.permutation(6).tolist()  # LAMDA-PILOT's DataManager._setup_data
    finally:
        np.random.set_state(state)
    before = np.random.get_state()[1].copy()
    tasks = load_imagenet_r(root, n_experiences=3, class_order_rule="pilot", class_order_seed=1993, **ID)
    assert [c for t in tasks for c in t.info["classes"]] == pilot
    assert np.array_equal(np.random.get_state()[1], before)  # the global numpy state is left alone
    assert tasks[0].info["class_order_rule"] == "pilot"
    g = torch.Generator().manual_seed(5)
    avalanche = load_imagenet_r(root, n_experiences=3, class_order_seed=5, **ID)
    assert [c for t in avalanche for c in t.info["classes"]] == torch.randperm(6, generator=g).tolist()
    plain = load_imagenet_r(root, n_experiences=3, shuffle=False, class_order_rule="pilot", **ID)
    assert [t.info["class_names"] for t in plain] == [sorted(WNIDS)[0:2], sorted(WNIDS)[2:4], sorted(WNIDS)[4:6]]
    fixed = load_imagenet_r(root, n_experiences=2, fixed_class_order=[5, 4, 3, 2, 1, 0], **ID)
    assert fixed[0].info["classes"] == [5, 4, 3] and fixed[0].info["class_names"] == sorted(WNIDS)[:2:-1]
    assert class_order(range(100), 1993, rule="pilot") == np.random.RandomState(1993).permutation(100).tolist()
    assert class_order(range(10), 0) == class_order(range(10), 0, rule="avalanche")


def test_increments_b_inc(tmp_path):
    order = list(range(100))
    assert [len(c) for c in split_classes(order, 10)] == [10] * 10  # B0 Inc10
    b50 = split_classes(order, 6, first_task_classes=50)  # B50 Inc10
    assert [len(c) for c in b50] == [50] + [10] * 5 and sum(b50, []) == order
    assert split_classes(order, 1, first_task_classes=100) == [order]
    assert split_classes(order, 5, first_task_classes=20) == split_classes(order, 5)  # B = n / tasks: equal
    with pytest.raises(DataError, match=r"first_task_classes=50, n_experiences=5: the 50 classes after the first "
                                        r"task do not split evenly into 4 further task"):
        split_classes(order, 5, first_task_classes=50)
    for bad in (0, 101, True, 2.5):
        with pytest.raises(DataError, match=r"first_task_classes=.* must be an integer in \[1, 100\]"):
            split_classes(order, 6, first_task_classes=bad)
    with pytest.raises(DataError, match="n_experiences=7 does not divide the 100 classes evenly"):
        split_classes(order, 7)

    root = str(tmp_path)
    write_imagenet_r(root, WNIDS, per_class=2)
    tasks = load_imagenet_r(root, n_experiences=3, first_task_classes=2, **ID)
    check_tasks(tasks, [2, 2, 2])
    tasks = load_imagenet_r(root, n_experiences=2, first_task_classes=4, **ID)
    check_tasks(tasks, [4, 2])
    assert [t.info["class_offset"] for t in tasks] == [0, 4]
    with pytest.raises(DataError, match="the 3 classes after the first task do not split evenly into 2"):
        load_imagenet_r(root, n_experiences=3, first_task_classes=3, **ID)
    with pytest.raises(DataError, match="num_classes=1; a classification task needs at least 2 classes"):
        load_imagenet_r(root, n_experiences=3, first_task_classes=4, **ID)  # B4 Inc1


def test_load_split_increments_and_offsets_on_cifar100(tmp_path):
    write_cifar100(str(tmp_path), n_classes=20, n_train=3, n_test=2)
    default = load_split("split_cifar100", str(tmp_path), n_experiences=10, class_order_seed=0, **ID)
    assert [t.info["class_offset"] for t in default] == list(range(0, 20, 2))
    flat = [c for t in default for c in t.info["classes"]]
    g = torch.Generator().manual_seed(0)
    assert flat == torch.randperm(20, generator=g).tolist()  # the default order is unchanged (Avalanche's)
    tasks = load_split("split_cifar100", str(tmp_path), n_experiences=6, first_task_classes=10, class_order_seed=0,
                       **ID)
    assert [t.num_classes for t in tasks] == [10, 2, 2, 2, 2, 2]
    assert [c for t in tasks for c in t.info["classes"]] == flat  # same order, other increments
    assert [t.info["class_offset"] for t in tasks] == [0, 10, 12, 14, 16, 18]
    assert [(len(t.train), len(t.test)) for t in tasks] == [(30, 20)] + [(6, 4)] * 5
    for task in tasks:
        for ds in (task.train, task.test):
            assert set(ds.targets) == set(range(task.num_classes))
            x, y = ds[0]
            assert decode_label(x) == task.info["classes"][y] % 10
    pilot = load_split("split_cifar100", str(tmp_path), n_experiences=10, class_order_seed=1993,
                       class_order_rule="pilot", **ID)
    assert [c for t in pilot for c in t.info["classes"]] == np.random.RandomState(1993).permutation(20).tolist()
    with pytest.raises(DataError, match="the 10 classes after the first task do not split evenly into 3"):
        load_split("split_cifar100", str(tmp_path), n_experiences=4, first_task_classes=10)
    with pytest.raises(DataError, match=r"class_order_rule='lamda' is not valid; expected one of \['avalanche', 'pilot'\]"):
        load_split("split_cifar100", str(tmp_path), class_order_rule="lamda")


# ----------------------------------------------------------------------------- missing / bad data
def test_missing_and_bad_data_one_clear_error(tmp_path):
    nowhere = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_imagenet_r(str(nowhere))
    msg = str(err.value)
    assert msg.startswith(f"{nowhere}: ImageNet-R not found (the folder does not exist)")
    assert f"Expected layout: {LAYOUT}" in msg and "Nothing is downloaded" in msg
    assert not nowhere.exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("only the readme\n")
    with pytest.raises(DataError, match=f"{empty}: ImageNet-R not found \\(no class folders in {empty}\\)"):
        load_imagenet_r(str(empty))
    assert sorted(os.listdir(empty)) == ["README.txt"]  # nothing written, nothing downloaded

    root = tmp_path / "r"
    write_imagenet_r(str(root), WNIDS[:4], per_class=[3, 3, 1, 3])
    with pytest.raises(DataError, match=f"{root / sorted(WNIDS[:4])[1]}: the class holds 1 image; the random "
                                        "train/test split needs at least 2"):
        load_imagenet_r(str(root), n_experiences=2)
    write_imagenet_r(str(root), WNIDS[4:5], per_class=0)
    with pytest.raises(DataError, match=f"{root / WNIDS[4]}: class folder holds no images"):
        load_imagenet_r(str(root), n_experiences=2)
    with pytest.raises(DataError, match=r"ImageNet-R not found \(split=folders needs .*train and .*test\)"):
        load_imagenet_r(str(root), split="folders")

    pre = tmp_path / "pre"
    write_imagenet_r(str(pre), WNIDS[:4], per_class=2, layout="folders")
    os.rename(pre / "test" / WNIDS[0], pre / "test" / "n09999999")
    with pytest.raises(DataError, match=rf"train/ and test/ hold different classes: only in train/ \['{WNIDS[0]}'\], "
                                        r"only in test/ \['n09999999'\]"):
        load_imagenet_r(str(pre), n_experiences=2)
    os.rename(pre / "test", pre / "val")
    with pytest.raises(DataError, match=r"pre/train exists but .*pre/test does not"):
        load_imagenet_r(str(pre))


def test_bad_options(tmp_path):
    root = str(tmp_path)
    write_imagenet_r(root, WNIDS, per_class=2)
    with pytest.raises(DataError, match=r"split='val' is not valid; expected one of \['auto', 'random', 'folders'\]"):
        load_imagenet_r(root, split="val")
    with pytest.raises(DataError, match="class_order_rule='PILOT' is not valid"):
        load_imagenet_r(root, class_order_rule="PILOT")
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(DataError, match=r"test_fraction=.* must be a number in \(0, 1\)"):
            load_imagenet_r(root, test_fraction=bad)
    with pytest.raises(DataError, match="split_seed=-1 must be an integer >= 0"):
        load_imagenet_r(root, split_seed=-1)
    with pytest.raises(DataError, match="train_per_class=0 must be a positive integer or null"):
        load_imagenet_r(root, train_per_class=0)
    with pytest.raises(DataError, match="n_experiences=4 does not divide the 6 classes evenly"):
        load_imagenet_r(root, n_experiences=4)
    with pytest.raises(DataError, match="fixed_class_order"):
        load_imagenet_r(root, n_experiences=2, fixed_class_order=[0, 1, 2, 3, 4, 9])
    with pytest.raises(DataError, match="class_order_seed is null"):
        load_imagenet_r(root, class_order_seed=None)


# ----------------------------------------------------------------------------- config
def test_config_composes_checks_and_instantiates(tmp_path):
    from gift_cl.config import check_instantiable, register_resolvers

    register_resolvers()  # ${backbone_data:...}
    write_imagenet_r(str(tmp_path), WNIDS, per_class=2, layout="folders", test_per_class=1)
    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose("config", overrides=["model=vit_tiny_random", "benchmark=imagenet_r", f"benchmark.root={tmp_path}",
                                           "seed=0", "benchmark.n_experiences=3", "benchmark.first_task_classes=2",
                                           "benchmark.class_order_rule=pilot", "benchmark.verify_images=false"])
        default = compose("config", overrides=["model=vit_tiny_random", "benchmark=imagenet_r"])
    assert default.benchmark.n_experiences == 10 and default.benchmark.first_task_classes is None
    assert default.benchmark.split == "auto" and default.benchmark.test_fraction == 0.2
    check_instantiable(cfg.benchmark, "benchmark", "benchmark")
    tasks = instantiate(cfg.benchmark)
    assert [t.num_classes for t in tasks] == [2, 2, 2] and tasks[0].info["split"] == "folders"
    assert [c for t in tasks for c in t.info["classes"]] == np.random.RandomState(0).permutation(6).tolist()
    assert tasks[0].train[0][0].shape == (3, 32, 32)  # model.image_size from the backbone
