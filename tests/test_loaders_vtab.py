"""VTAB-1k loader on format-exact fixtures, and the 19 benchmark configs."""
import os

import pytest
import torch

from gift_cl.data.base import DataError
from gift_cl.data.vtab import VTAB_GROUPS, VTAB_NUM_CLASSES, VTAB_TASKS, load_vtab

from fixtures import ID, benchmark_from_config, decode_label, write_text, write_vtab

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def vtab_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vtab"))
    return root, write_vtab(root, "dtd", num_classes=3)


@pytest.mark.parametrize("mode, train_split, eval_split", [("tune", "train800", "val200"),
                                                          ("final", "train800val200", "test")])
def test_modes_labels_shapes(vtab_root, mode, train_split, eval_split):
    root, meta = vtab_root
    (task,) = load_vtab(root, "dtd", mode=mode, image_size=32, **ID)
    assert task.name == "dtd" and task.num_classes == 47 == VTAB_NUM_CLASSES["dtd"]
    assert task.train.targets == meta["labels"][train_split]
    assert task.test.targets == meta["labels"][eval_split]
    assert task.info["train_split"] == f"{train_split}.txt" and task.info["eval_split"] == f"{eval_split}.txt"
    for ds in (task.train, task.test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 32, 32) and decode_label(x) == y


def test_task_table_covers_19_tasks_in_three_groups():
    assert len(VTAB_TASKS) == 19
    assert [len(g) for g in VTAB_GROUPS.values()] == [7, 4, 8]
    assert VTAB_NUM_CLASSES["sun397"] == 397 and VTAB_NUM_CLASSES["smallnorb_ele"] == 9


def test_paths_with_spaces_and_cache(tmp_path):
    root = str(tmp_path)
    meta = write_vtab(root, "eurosat", num_classes=2)
    d = meta["dir"]
    os.rename(os.path.join(d, "images", "val200"), os.path.join(d, "images", "val 200"))
    with open(os.path.join(d, "val200.txt")) as f:
        text = f.read().replace("images/val200/", "images/val 200/")
    with open(os.path.join(d, "val200.txt"), "w") as f:
        f.write(text)
    (task,) = load_vtab(root, "eurosat", image_size=16, cache_decoded=True, **ID)
    assert task.test.cache.shape == (len(task.test), 16, 16, 3)
    assert [decode_label(task.test[i][0]) for i in range(len(task.test))] == meta["labels"]["val200"]


@pytest.mark.parametrize("task", VTAB_TASKS)
def test_config_instantiates(tmp_path, task):
    root = str(tmp_path)
    write_vtab(root, task, num_classes=2, per_class={"train800": 1, "val200": 1, "test": 1})
    (t,) = benchmark_from_config(f"vtab/{task}", root)
    assert t.name == task and t.num_classes == VTAB_NUM_CLASSES[task] and t.train[0][0].shape == (3, 16, 16)


# ----------------------------------------------------------------------------- bad input
def _append(path, text):
    with open(path, "a") as f:
        f.write(text)


def _corrupt(path):
    with open(path, "wb") as f:
        f.write(b"\x89PNG garbage")


BAD_INPUTS = {
    "missing_root": (lambda d: os.rename(d, d + "_moved"), r"dtd: directory not found; expected the VTAB-1k layout"),
    "missing_split_file": (lambda d: os.remove(os.path.join(d, "val200.txt")), "val200.txt: file not found"),
    "malformed_line": (lambda d: _append(os.path.join(d, "train800.txt"), "images/a.jpg three\n"),
                       r"train800.txt:7: malformed line 'images/a.jpg three'"),
    "label_out_of_range": (lambda d: _append(os.path.join(d, "train800.txt"), "images/train800/00000.jpg 47\n"),
                           r"train800.txt:7: label 47 out of range, expected 0..46"),
    "empty_split": (lambda d: write_text(os.path.join(d, "val200.txt"), "\n"),
                    "val200.txt: the split file lists no images"),
    "missing_image": (lambda d: os.remove(os.path.join(d, "images", "val200", "00001.jpg")),
                      r"00001.jpg: image not found \(listed in .*val200.txt\)"),
    "corrupt_image": (lambda d: _corrupt(os.path.join(d, "images", "train800", "00002.jpg")),
                      r"00002.jpg: not a readable image"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_one_clear_error(tmp_path, case):
    root = str(tmp_path)
    d = write_vtab(root, "dtd", num_classes=3)["dir"]
    mutate, message = BAD_INPUTS[case]
    mutate(d)
    with pytest.raises(DataError, match=message):
        load_vtab(root, "dtd", image_size=16)


def test_bad_options(vtab_root):
    root, _ = vtab_root
    with pytest.raises(DataError, match="task='cifar100' is not valid"):
        load_vtab(root, "cifar100")
    with pytest.raises(DataError, match="mode='test'"):
        load_vtab(root, "dtd", mode="test")
