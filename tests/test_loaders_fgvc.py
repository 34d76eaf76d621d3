"""FGVC loader on format-exact fixtures (all five datasets), and the benchmark configs."""
import json
import os

import pytest
import torch
from torch.utils.data import DataLoader

from gift_cl.data.base import DataError
from gift_cl.data.fgvc import FGVC_DATASETS, load_fgvc

from fixtures import FGVC_IMAGE_DIRS, ID, benchmark_from_config, decode_label, write_fgvc, write_text

torch.set_num_threads(1)


@pytest.mark.parametrize("dataset", list(FGVC_DATASETS))
@pytest.mark.parametrize("mode, eval_split", [("tune", "val"), ("final", "test")])
def test_datasets_modes_labels_shapes(tmp_path, dataset, mode, eval_split):
    root = str(tmp_path)
    meta = write_fgvc(root, dataset, num_classes=3)
    (task,) = load_fgvc(root, dataset, mode=mode, image_size=32, **ID)
    assert task.name == dataset and task.num_classes == 3
    assert task.train.targets == meta["labels"]["train"]  # official final runs train on train.json only
    assert task.test.targets == meta["labels"][eval_split]
    assert task.train.root == os.path.join(root, FGVC_IMAGE_DIRS[dataset])
    for ds in (task.train, task.test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (3, 32, 32) and decode_label(x) == y


def test_cub_padded_string_ids_map_in_numeric_order(tmp_path):
    root = str(tmp_path)
    write_fgvc(root, "cub", num_classes=3)  # ids "001", "005", "009"
    with open(os.path.join(root, "train.json")) as f:
        assert sorted(set(json.load(f).values())) == ["001", "005", "009"]
    (task,) = load_fgvc(root, "cub", image_size=32, **ID)
    assert sorted(set(task.train.targets)) == [0, 1, 2]


def test_val_missing_classes_stays_aligned_with_train(tmp_path):
    # NABirds val lacks 2 of 555 classes; per-split remapping (the official code) would shift labels.
    root = str(tmp_path)
    meta = write_fgvc(root, "nabirds", num_classes=4, val_classes=2)
    (task,) = load_fgvc(root, "nabirds", image_size=32, **ID)
    assert task.num_classes == 4
    assert sorted(set(task.test.targets)) == [2, 3] and task.test.targets == meta["labels"]["val"]
    assert all(decode_label(task.test[i][0]) == y for i, y in enumerate(task.test.targets))


def test_crop_ratio_and_cache(tmp_path):
    root = str(tmp_path)
    write_fgvc(root, "stanford_cars", num_classes=2, size=(90, 60))
    (task,) = load_fgvc(root, "stanford_cars", image_size=32, cache_decoded=True, **ID)
    # Resize(round(32 * 256 / 224) = 37) on the shorter side keeps the aspect: 60x90 -> 37x55
    assert task.test.cache.shape == (len(task.test), 37, 55, 3)
    assert task.train[0][0].shape == task.test[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("dataset", list(FGVC_DATASETS))
def test_config_instantiates(tmp_path, dataset):
    root = str(tmp_path)
    write_fgvc(root, dataset, num_classes=2, per_class={"train": 1, "val": 1, "test": 1})
    (t,) = benchmark_from_config(f"fgvc/{dataset}", root)
    assert t.name == dataset and t.train[0][0].shape == (3, 16, 16)


# ----------------------------------------------------------------------------- bad input
def _edit(path, fn):
    with open(path) as f:
        doc = json.load(f)
    fn(doc)
    write_text(path, json.dumps(doc))


def _first_image(root, split="train"):
    with open(os.path.join(root, f"{split}.json")) as f:
        rel = next(iter(json.load(f)))
    return os.path.join(root, "images", rel)


def _corrupt(path):
    with open(path, "wb") as f:
        f.write(b"\xff\xd8\xff garbage")


BAD_INPUTS = {
    "missing_root": (lambda r: os.rename(r, r + "_moved"), "directory not found; expected the VPT FGVC layout"),
    "missing_split_file": (lambda r: os.remove(os.path.join(r, "val.json")), "val.json: file not found"),
    "malformed_json": (lambda r: write_text(os.path.join(r, "train.json"), '{\n"a.jpg": 1,\n}'),
                       r"train.json:3:1: malformed JSON"),
    "not_an_object": (lambda r: write_text(os.path.join(r, "train.json"), '["a.jpg"]'), "expected a JSON object"),
    "bad_class_id": (lambda r: _edit(os.path.join(r, "val.json"), lambda d: d.update({"x.jpg": "bird"})),
                     "'x.jpg' has class id 'bird'; expected an integer"),
    "label_not_in_train": (lambda r: _edit(os.path.join(r, "val.json"), lambda d: d.update({"x.jpg": "150"})),
                           "'x.jpg' has class id '150', which train.json never uses"),
    "empty_split": (lambda r: write_text(os.path.join(r, "val.json"), "{}"), "val.json: the split lists no images"),
    "missing_image": (lambda r: os.remove(_first_image(r, "val")),
                      r"val_0.jpg: image not found \(listed in .*val.json\)"),
    "corrupt_image": (lambda r: _corrupt(_first_image(r)), r"train_0.jpg: not a readable image .*train.json"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_one_clear_error(tmp_path, case):
    root = str(tmp_path / "CUB_200_2011")
    write_fgvc(root, "cub", num_classes=3)
    mutate, message = BAD_INPUTS[case]
    mutate(root)
    with pytest.raises(DataError, match=message):
        load_fgvc(root, "cub", image_size=16)


def test_bad_options(tmp_path):
    with pytest.raises(DataError, match="dataset='cars' is not valid"):
        load_fgvc(str(tmp_path), "cars")
    with pytest.raises(DataError, match="mode='trainval'"):
        load_fgvc(str(tmp_path), "cub", mode="trainval")


def test_decode_error_in_worker_surfaces_as_data_error(tmp_path):
    # Without the load-time check (or for damage the header check cannot see), a decode error
    # must still be a DataError naming the file, also when raised inside a DataLoader worker.
    root = str(tmp_path)
    write_fgvc(root, "cub", num_classes=2, per_class={"train": 1, "val": 1, "test": 1}, size=(64, 64))
    path = _first_image(root)
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    (task,) = load_fgvc(root, "cub", image_size=16, verify_images=False)
    with pytest.raises(DataError, match="train_0.jpg: cannot decode image"):
        list(DataLoader(task.train, batch_size=2, num_workers=1))
