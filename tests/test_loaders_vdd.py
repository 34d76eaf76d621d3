"""VDD loader on format-exact fixtures, and the decathlon score."""
import json
import logging
import os

import pytest
import torch
from torchvision import transforms as T

from gift_cl.data.base import DataError
from gift_cl.data.vdd import VDD_BASELINE_ACC, VDD_DOMAINS, decathlon_score, load_vdd

from fixtures import benchmark_from_config, decode_label, vdd_offset, write_text, write_vdd

torch.set_num_threads(1)
# identity normalisation (pixels stay decodable) and the decathlon's native 64 px transform
ID = dict(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0], transform="native")


@pytest.fixture(scope="module")
def vdd_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("vdd"))
    return root, write_vdd(root, test_labels=["dtd"])


def _json(root, domain, split):
    return os.path.join(root, "annotations", f"{domain}_{split}.json")


def _edit(root, domain, split, fn):
    with open(_json(root, domain, split)) as f:
        doc = json.load(f)
    fn(doc)
    with open(_json(root, domain, split), "w") as f:
        json.dump(doc, f)


def test_train_val_labels_counts_shapes(vdd_root):
    root, meta = vdd_root
    tasks = load_vdd(root, domains=list(meta), split="train_val", **ID)
    assert [t.name for t in tasks] == list(meta)
    for task in tasks:
        m = meta[task.name]
        assert task.num_classes == m["num_classes"]
        assert task.train.targets == m["labels"]["train"]
        assert task.test.targets == m["labels"]["val"]
        assert task.info["eval_split"] == "val" and task.info["train_splits"] == [f"{task.name}_train.json"]
        for ds in (task.train, task.test):
            for i in range(len(ds)):
                x, y = ds[i]
                assert x.shape == (3, 64, 64) and x.dtype == torch.float32
                assert isinstance(y, int) and decode_label(x) == y


def test_category_offset_remap_uses_categories_list(tmp_path):
    root = str(tmp_path)
    write_vdd(root, domains={"dtd": 4}, per_class={"train": 2, "val": 1, "test": 1})
    with open(_json(root, "dtd", "train")) as f:
        assert min(c["id"] for c in json.load(f)["categories"]) == 40000001 == vdd_offset("dtd")
    # val without class 0: labels must still come from the categories list, not from val's own ids
    def drop_class_0(doc):
        keep = {a["image_id"] for a in doc["annotations"] if a["category_id"] != 40000001}
        doc["images"] = [im for im in doc["images"] if im["id"] in keep]
        doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] in keep]

    _edit(root, "dtd", "val", drop_class_0)
    (task,) = load_vdd(root, domains=["dtd"], **ID)
    assert task.num_classes == 4
    assert sorted(set(task.test.targets)) == [1, 2, 3]
    assert all(decode_label(task.test[i][0]) == y for i, y in enumerate(task.test.targets))


def test_trainval_test_with_test_labels(vdd_root):
    root, meta = vdd_root
    (task,) = load_vdd(root, domains=["dtd"], split="trainval_test", **ID)
    m = meta["dtd"]
    assert task.train.targets == m["labels"]["train"] + m["labels"]["val"]
    assert task.test.targets == m["labels"]["test"]
    assert task.info["eval_split"] == "test" and task.info["test_labels_available"] is True


def test_missing_test_labels_falls_back_to_val(vdd_root, caplog):
    root, meta = vdd_root
    with caplog.at_level(logging.WARNING, logger="gift_cl.data.vdd"):
        tasks = load_vdd(root, domains=["aircraft", "dtd"], split="trainval_test", **ID)
    aircraft, dtd = tasks
    assert any("aircraft_test.json has no annotations" in r.getMessage() for r in caplog.records)
    assert aircraft.info["eval_split"] == "val" and aircraft.info["test_labels_available"] is False
    assert aircraft.train.targets == meta["aircraft"]["labels"]["train"]  # val is held out, not trained on
    assert aircraft.test.targets == meta["aircraft"]["labels"]["val"]
    assert dtd.info["eval_split"] == "test"


def test_domain_subset_and_order(vdd_root):
    root, _ = vdd_root
    assert [t.name for t in load_vdd(root, domains=["omniglot", "aircraft"], **ID)] == ["omniglot", "aircraft"]


def test_native_flip_policy_and_resize_mode(vdd_root):
    root, _ = vdd_root
    tasks = {t.name: t for t in load_vdd(root, domains=["aircraft", "gtsrb", "omniglot"], **ID)}
    def has_flip(task):
        return any(isinstance(t, T.RandomHorizontalFlip) for t in task.train.transform.transforms)
    assert has_flip(tasks["aircraft"]) and not has_flip(tasks["gtsrb"]) and not has_flip(tasks["omniglot"])
    (task,) = load_vdd(root, domains=["aircraft"], **{**ID, "transform": "resize", "image_size": 32})
    assert task.train[0][0].shape == (3, 32, 32) and task.test[0][0].shape == (3, 32, 32)


def test_cache_decoded_matches_files(vdd_root):
    root, _ = vdd_root
    (plain,) = load_vdd(root, domains=["dtd"], **ID)
    (cached,) = load_vdd(root, domains=["dtd"], cache_decoded=True, **ID)
    assert cached.test.cache is not None and cached.test.cache.dtype.name == "uint8"
    for i in range(len(plain.test)):
        assert torch.equal(plain.test[i][0], cached.test[i][0])


def test_config_instantiates(vdd_root):
    root, _ = vdd_root
    tasks = benchmark_from_config("vdd", root, "benchmark.domains=[dtd,aircraft]")
    assert [t.name for t in tasks] == ["dtd", "aircraft"]
    assert tasks[0].train[0][0].shape == (3, 16, 16)  # transform=resize by default


# ----------------------------------------------------------------------------- bad input
def _corrupt_image(root):
    path = os.path.join(root, "data", "aircraft", "val", "0000001.jpg")
    with open(path, "wb") as f:
        f.write(b"not a jpeg at all")
    return "0000001.jpg"


BAD_INPUTS = {
    "missing_root": (lambda r: os.rename(os.path.join(r, "annotations"), os.path.join(r, "x")), "decathlon-1.0"),
    "missing_split_file": (lambda r: os.remove(_json(r, "aircraft", "val")), "aircraft_val.json: file not found"),
    "malformed_json": (lambda r: write_text(_json(r, "aircraft", "train"), '{"images": [\n{"id": 1,,}]}'),
                       r"aircraft_train.json:2:\d+: malformed JSON"),
    "label_out_of_range": (lambda r: _edit(r, "aircraft", "train",
                                           lambda d: d["annotations"][0].update(category_id=99)),
                           "category_id 99, outside the categories 10000001..10000003"),
    "missing_field": (lambda r: _edit(r, "aircraft", "val", lambda d: d["images"][1].pop("file_name")),
                      r"images\[1\] = .* lacks one of the fields"),
    "partly_annotated": (lambda r: _edit(r, "aircraft", "train", lambda d: d["annotations"].pop()),
                         "1 of 9 images have no annotation"),
    "unlabelled_train": (lambda r: _edit(r, "aircraft", "train", lambda d: d.update(annotations=[])),
                         "train and val splits must be labelled"),
    "empty_split": (lambda r: _edit(r, "aircraft", "val", lambda d: d.update(images=[], annotations=[])),
                    "aircraft_val.json: the 'images' list is empty"),
    "categories_differ": (lambda r: _edit(r, "aircraft", "val", lambda d: d["categories"].pop()),
                          "its 'categories' differ"),
    "missing_image": (lambda r: os.remove(os.path.join(r, "data", "aircraft", "train", "0000002.jpg")),
                      r"0000002.jpg: image not found \(listed in .*aircraft_train.json\)"),
    "corrupt_image": (_corrupt_image, r"0000001.jpg: not a readable image .*aircraft_val.json"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_one_clear_error(tmp_path, case):
    root = str(tmp_path)
    write_vdd(root, domains={"aircraft": 3}, per_class={"train": 3, "val": 1, "test": 1})
    mutate, message = BAD_INPUTS[case]
    mutate(root)
    with pytest.raises(DataError, match=message):
        load_vdd(root, domains=["aircraft"], **ID)


def test_bad_options(vdd_root):
    root, _ = vdd_root
    for kwargs, message in (({"split": "test"}, "split='test' is not valid"),
                            ({"transform": "big"}, "transform='big'"),
                            ({"domains": ["mnist"]}, "domain='mnist'")):
        with pytest.raises(DataError, match=message):
            load_vdd(root, **kwargs)


def test_decode_error_without_verification_names_file(tmp_path):
    root = str(tmp_path)
    write_vdd(root, domains={"aircraft": 3}, per_class={"train": 1, "val": 1, "test": 1})
    name = _corrupt_image(root)
    (task,) = load_vdd(root, domains=["aircraft"], verify_images=False, **ID)
    with pytest.raises(DataError, match=f"{name}: cannot decode image"):
        [task.test[i] for i in range(len(task.test))]


# ----------------------------------------------------------------------------- decathlon score
def test_decathlon_baseline_scores_2500_and_perfect_10000():
    base = decathlon_score(VDD_BASELINE_ACC)
    assert base["total"] == 2500.0 and all(v == 250.0 for v in base["per_domain"].values())
    assert set(base["per_domain"]) == set(VDD_DOMAINS)
    assert decathlon_score({d: 1.0 for d in VDD_DOMAINS})["total"] == 10000.0


def test_decathlon_hand_computed_mixed_case():
    # aircraft: E_base = 1 - 0.6034 = 0.3966, E_max = 0.7932, E = 0.2
    #           -> 1000 / 0.7932**2 * (0.7932 - 0.2)**2 = 1000 * (0.5932 / 0.7932)**2 = 559.2898
    # dtd:      E_max = 2 * 0.4447 = 0.8894, E = 0.7 -> 1000 * (0.1894 / 0.8894)**2 = 45.3488
    # svhn:     E_max = 2 * 0.0345 = 0.069,  E = 0.1 > E_max -> 0
    s = decathlon_score({"aircraft": 0.8, "dtd": 0.3, "svhn": 0.9})
    assert s["per_domain"]["aircraft"] == pytest.approx(559.2898, abs=1e-4)
    assert s["per_domain"]["dtd"] == pytest.approx(45.3488, abs=1e-4)
    assert s["per_domain"]["svhn"] == 0.0
    assert s["total"] == pytest.approx(604.6386, abs=1e-4)


def test_decathlon_rejects_percentages_and_unknown_domains():
    with pytest.raises(ValueError, match="expected a fraction in"):
        decathlon_score({"dtd": 55.53})
    with pytest.raises(ValueError, match="unknown domain 'mnist'"):
        decathlon_score({"mnist": 0.9})
