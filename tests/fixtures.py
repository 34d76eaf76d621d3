"""Writers of tiny but format-exact benchmark folders (VDD, VTAB-1k, FGVC, 5-datasets).

Each ``write_*`` function writes a dataset into a directory in the official on-disk layout the
matching loader in ``gift_cl.data`` reads, with a few classes and a handful of images a split, and
returns what a test needs to check the loader. Every image is filled with :func:`class_value` of
its label, so a test can check that each loaded image carries the label it was written with.

:func:`benchmark_from_config` instantiates a benchmark config on such a folder as a run would.

Usable from any test: ``from fixtures import write_vdd`` (pytest puts ``tests/`` on sys.path;
``tests.fixtures`` would resolve to the ``tests`` package that avalanche-lib installs).
"""
from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import struct
from typing import Iterable, Mapping, Optional

import numpy as np
import pytest
from PIL import Image

from gift_cl.data.vdd import VDD_DOMAINS

CONFIGS = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "configs"))
# loader arguments that leave pixel values as they are, so that :func:`decode_label` reads each label back
ID = dict(mean=[0.0, 0.0, 0.0], std=[1.0, 1.0, 1.0])


def class_value(label: int) -> int:
    """The grey level images of class ``label`` are filled with (distinct for labels 0..9)."""
    return 20 + 23 * (label % 10)


def save_image(path: str, label: int, size: tuple[int, int] = (40, 32), grey: bool = False) -> None:
    """Write a solid image of class ``label``; the format follows the extension (.png / .jpg)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    v = class_value(label)
    w, h = size
    if grey:
        img = Image.fromarray(np.full((h, w), v, np.uint8), "L")
    else:
        img = Image.fromarray(np.full((h, w, 3), v, np.uint8), "RGB")
    img.save(path, quality=95) if path.endswith(".jpg") else img.save(path)


def decode_label(x, mean: float = 0.0, std: float = 1.0) -> int:
    """Inverse of :func:`class_value` for a loaded tensor normalised with ``mean``/``std``."""
    v = float(x.float().mean()) * std + mean
    return int(np.argmin([abs(v * 255 - class_value(k)) for k in range(10)]))


def write_text(path: str, text: str) -> None:
    """Overwrite a file of a written fixture (a split file, an annotation) with ``text``."""
    with open(path, "w") as f:
        f.write(text)


def benchmark_from_config(benchmark: str, root: str, *overrides: str) -> list:
    """The tasks of ``configs/benchmark/<benchmark>.yaml`` on the folder ``root``, instantiated as a run does,
    with 16 px images normalised with mean = std = 0.5 standing in for the model group's values."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=CONFIGS, version_base=None):
        cfg = compose(overrides=[f"+benchmark={benchmark}", f"benchmark.root={root}", *overrides,
                                 "+model.image_size=16", "+model.mean=[0.5,0.5,0.5]", "+model.std=[0.5,0.5,0.5]"])
    return instantiate(cfg.benchmark)


# ----------------------------------------------------------------------------- VDD
VDD_FIXTURE_CLASSES = {"aircraft": 3, "dtd": 2, "gtsrb": 4, "omniglot": 5}


def vdd_offset(domain: str) -> int:
    """First category id of a VDD domain: 1, 10000001, 20000001, ... in the devkit order."""
    return VDD_DOMAINS.index(domain) * 10_000_000 + 1


def write_vdd(
    root: str,
    domains: Mapping[str, int] | None = None,
    per_class: Mapping[str, int] | None = None,
    test_labels: bool | Iterable[str] = True,
    size: tuple[int, int] = (96, 72),
) -> dict:
    """Write ``root/annotations/<domain>_{train,val,test}.json`` + ``root/data/<domain>/<split>/*.jpg``.

    Args:
        domains: domain -> number of classes (default :data:`VDD_FIXTURE_CLASSES`).
        per_class: split -> images per class (default train 3, val 2, test 2).
        test_labels: whether the test JSONs carry annotations; ``True``/``False`` for all domains
            or the domains whose test split is labelled (the official release has none).
        size: (width, height); VDD images are 72 px on the shorter side.

    Returns:
        ``{domain: {"num_classes": C, "counts": {split: n}, "labels": {split: [label, ...]}}}``.
    """
    domains = dict(domains or VDD_FIXTURE_CLASSES)
    per_class = dict(per_class or {"train": 3, "val": 2, "test": 2})
    labelled = set(domains) if test_labels is True else set() if test_labels is False else set(test_labels)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    out = {}
    for domain, n_cls in domains.items():
        offset = vdd_offset(domain)
        cats = [{"id": offset + k, "name": f"{domain}_class{k}"} for k in range(n_cls)]
        out[domain] = {"num_classes": n_cls, "counts": {}, "labels": {}}
        for s_idx, (split, n) in enumerate(per_class.items()):
            images, anns, labels = [], [], []
            # interleave classes so that file order and label order differ
            for i in range(n * n_cls):
                label = (n_cls - 1 - i) % n_cls
                image_id = offset + 100_000 * (s_idx + 1) + i  # ids as in the devkit: unique, offset
                rel = f"data/{domain}/{split}/{i:07d}.jpg"
                save_image(os.path.join(root, rel), label, size)
                images.append({"id": image_id, "file_name": rel, "width": size[0], "height": size[1]})
                anns.append({"id": image_id, "image_id": image_id, "category_id": offset + label,
                             "segmentation": [], "area": size[0] * size[1], "iscrowd": 0,
                             "bbox": [0, 0, size[0], size[1]]})
                labels.append(label)
            doc = {"info": {}, "licenses": [], "images": images, "categories": cats,
                   "annotations": anns if (split != "test" or domain in labelled) else []}
            with open(os.path.join(root, "annotations", f"{domain}_{split}.json"), "w") as f:
                json.dump(doc, f)
            out[domain]["counts"][split] = len(images)
            out[domain]["labels"][split] = labels
    return out


# ----------------------------------------------------------------------------- VTAB-1k
VTAB_SPLITS = ("train800", "val200", "test")


def write_vtab(
    root: str,
    task: str = "dtd",
    num_classes: int = 3,
    per_class: Mapping[str, int] | None = None,
    size: tuple[int, int] = (40, 30),
) -> dict:
    """Write ``root/<task>/{train800,val200,train800val200,test}.txt`` and the images they list.

    Returns ``{"labels": {split_file_stem: [label, ...]}, "dir": root/<task>}``.
    """
    per_class = dict(per_class or {"train800": 2, "val200": 1, "test": 2})
    task_dir = os.path.join(root, task)
    os.makedirs(task_dir, exist_ok=True)
    lines, labels = {}, {}
    for split, n in per_class.items():
        lines[split], labels[split] = [], []
        for i in range(n * num_classes):
            label = (num_classes - 1 - i) % num_classes
            rel = f"images/{split}/{i:05d}.jpg"
            save_image(os.path.join(task_dir, rel), label, size)
            lines[split].append(f"{rel} {label}")
            labels[split].append(label)
    lines["train800val200"] = lines["train800"] + lines["val200"]
    labels["train800val200"] = labels["train800"] + labels["val200"]
    for split, rows in lines.items():
        with open(os.path.join(task_dir, f"{split}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
    return {"labels": labels, "dir": task_dir}


# ----------------------------------------------------------------------------- FGVC
FGVC_IMAGE_DIRS = {"cub": "images", "nabirds": "images", "stanford_dogs": "Images",
                   "stanford_cars": "", "oxford_flowers": ""}


def fgvc_class_ids(dataset: str, num_classes: int) -> list:
    """Class ids as the dataset's JSON spells them: zero-padded strings for CUB, sparse ints else."""
    if dataset == "cub":
        return [f"{k * 4 + 1:03d}" for k in range(num_classes)]  # "001", "005", "009", ...
    return [k * 7 + 3 for k in range(num_classes)]  # 3, 10, 17, ...: exercises the remap


def write_fgvc(
    root: str,
    dataset: str = "cub",
    num_classes: int = 3,
    per_class: Mapping[str, int] | None = None,
    size: tuple[int, int] = (50, 40),
    val_classes: Optional[int] = None,
) -> dict:
    """Write ``root/{train,val,test}.json`` and the images under the dataset's image root.

    Args:
        val_classes: how many of the classes val uses (NABirds val lacks 2 of 555); default all.

    Returns ``{"class_ids": [...], "labels": {split: [label, ...]}}`` with labels 0..C-1 as the
    loader should assign them (the index of the class id in the sorted train ids).
    """
    per_class = dict(per_class or {"train": 2, "val": 1, "test": 2})
    ids = fgvc_class_ids(dataset, num_classes)
    img_root = os.path.join(root, FGVC_IMAGE_DIRS[dataset])
    labels = {}
    for split, n in per_class.items():
        used = range(val_classes) if (split == "val" and val_classes is not None) else range(num_classes)
        # use the *last* classes for a reduced val, so per-split remapping would misalign them
        used = [num_classes - len(used) + k for k in range(len(used))]
        mapping, labels[split] = {}, []
        for label in used:
            for i in range(n):
                rel = f"{ids[label]}.class/{split}_{i}.jpg"
                save_image(os.path.join(img_root, rel), label, size)
                mapping[rel] = ids[label]
                labels[split].append(label)
        with open(os.path.join(root, f"{split}.json"), "w") as f:
            json.dump(mapping, f)
    return {"class_ids": ids, "labels": labels}


# ----------------------------------------------------------------------------- 5-datasets
def _idx_write(path: str, array: np.ndarray) -> None:
    """Write an uint8 IDX file (magic 0x08 type byte, big-endian dims) as MNIST ships it."""
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def _class_images(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    return np.stack([np.full(shape, class_value(int(y)), np.uint8) for y in labels])


def write_mnist_like(root: str, name: str = "MNIST", n_train: int = 20, n_test: int = 10) -> None:
    """Write ``root/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (torchvision layout)."""
    raw = os.path.join(root, name, "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        _idx_write(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), _class_images(y, (28, 28)))
        _idx_write(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), y)


def write_cifar10(root: str, per_batch: int = 4, n_test: int = 10) -> None:
    """Write ``root/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}`` pickles."""
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    batches = [(f"data_batch_{b}", per_batch, b * per_batch) for b in range(1, 6)] + [("test_batch", n_test, 0)]
    for name, n, start in batches:
        y = (np.arange(n) + start) % 10
        data = _class_images(y, (3, 32, 32)).reshape(n, 3072)  # rows: 1024 R, 1024 G, 1024 B
        entry = {"batch_label": name, "labels": y.tolist(), "data": data,
                 "filenames": [f"{name}_{i}.png" for i in range(n)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": [f"class{k}" for k in range(10)], "num_cases_per_batch": per_batch}, f)


def write_svhn(root: str, n_train: int = 20, n_test: int = 10) -> None:
    """Write ``root/{train,test}_32x32.mat``: X is 32x32x3xN, y is Nx1 with 10 for the digit 0."""
    import scipy.io

    for split, n in (("train", n_train), ("test", n_test)):
        y = np.arange(n) % 10
        x = _class_images(y, (32, 32, 3)).transpose(1, 2, 3, 0)
        scipy.io.savemat(os.path.join(root, f"{split}_32x32.mat"),
                         {"X": x, "y": np.where(y == 0, 10, y).reshape(-1, 1).astype(np.uint8)})


def write_notmnist(root: str, n_train: int = 2, n_test: int = 1) -> None:
    """Write ``root/notMNIST/{train,test}/<A..J>/*.png`` (28 px greyscale, as notMNIST_small)."""
    for split, n in (("train", n_train), ("test", n_test)):
        for label, letter in enumerate("ABCDEFGHIJ"):
            for i in range(n):
                path = os.path.join(root, "notMNIST", split, letter, f"img{i}_{letter}.png")
                save_image(path, label, (28, 28), grey=True)


def write_five_datasets(root: str) -> dict:
    """Write all five datasets under ``root``; returns ``{dataset: (n_train, n_test)}``."""
    write_cifar10(root, per_batch=4, n_test=10)
    write_mnist_like(root, "MNIST", 20, 10)
    write_mnist_like(root, "FashionMNIST", 20, 10)
    write_svhn(root, 20, 10)
    write_notmnist(root, 2, 1)
    return {"cifar10": (20, 10), "mnist": (20, 10), "fashion_mnist": (20, 10), "svhn": (20, 10), "notmnist": (20, 10)}


FASHION_MNIST_DEB_DIR = "/usr/share/datasets/fashion-mnist"


def require_debian_fashion_mnist() -> None:
    """The real-data tests' guard: without Debian's ``dataset-fashion-mnist`` a ``-m real_data`` test is skipped
    with the install command, except under ``GIFT_CL_REQUIRE_REAL_DATA=1`` (CI, after ``make real-data``), where
    missing data is a failure."""
    if not os.path.isfile(os.path.join(FASHION_MNIST_DEB_DIR, "train-images-idx3-ubyte.gz")):
        message = (f"Debian package dataset-fashion-mnist not installed (no IDX .gz files in {FASHION_MNIST_DEB_DIR}); "
                   "apt-get install dataset-fashion-mnist")
        if os.environ.get("GIFT_CL_REQUIRE_REAL_DATA") == "1":
            pytest.fail(message)
        pytest.skip(message)


def install_debian_fashion_mnist(root: str, src: str = FASHION_MNIST_DEB_DIR) -> bool:
    """Gunzip the Debian ``dataset-fashion-mnist`` files into ``root/FashionMNIST/raw``.

    Returns False (writing nothing) if the package files are absent.
    """
    names = [f"{p}-{k}-idx{d}-ubyte" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1))]
    if not all(os.path.isfile(os.path.join(src, n + ".gz")) for n in names):
        return False
    raw = os.path.join(root, "FashionMNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for n in names:
        with gzip.open(os.path.join(src, n + ".gz"), "rb") as fin, open(os.path.join(raw, n), "wb") as fout:
            shutil.copyfileobj(fin, fout)
    return True


# ----------------------------------------------------------------------------- Avalanche classics
def write_idx_gz_flat(root: str, n_train: int = 20, n_test: int = 10) -> None:
    """Write the four MNIST-format IDX files gzipped, directly in ``root`` (LeCun/Zalando/Debian layout)."""
    os.makedirs(root, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = np.arange(n) % 10
        for kind, arr in (("images-idx3", _class_images(y, (28, 28))), ("labels-idx1", y)):
            plain = os.path.join(root, f"{prefix}-{kind}-ubyte")
            _idx_write(plain, arr)
            with open(plain, "rb") as fin, gzip.open(plain + ".gz", "wb") as fout:
                shutil.copyfileobj(fin, fout)
            os.remove(plain)


def write_cifar100(root: str, n_classes: int = 20, n_train: int = 3, n_test: int = 2) -> None:
    """Write ``root/cifar-100-python/{train,test,meta}`` with ``fine_labels`` 0..n_classes-1.

    The samples of a class are spread through the file (class = index mod n_classes).
    """
    folder = os.path.join(root, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for name, per_class in (("train", n_train), ("test", n_test)):
        y = np.arange(per_class * n_classes) % n_classes
        data = _class_images(y, (3, 32, 32)).reshape(len(y), 3072)
        entry = {"filenames": [f"{name}_{i}.png" for i in range(len(y))], "batch_label": name,
                 "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist(), "data": data}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(entry, f, protocol=2)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({"fine_label_names": [f"class{k}" for k in range(n_classes)],
                     "coarse_label_names": [f"super{k}" for k in range(n_classes // 5)]}, f)


def write_tiny_imagenet(root: str, n_classes: int = 4, n_train: int = 3, n_val: int = 2) -> list[str]:
    """Write ``root/tiny-imagenet-200`` as the official zip unpacks: wnids.txt, words.txt,
    train/<wnid>/images/<wnid>_<i>.JPEG (+ <wnid>_boxes.txt), val/images/val_<i>.JPEG and
    val/val_annotations.txt (tab-separated, classes interleaved). Returns the wnids; the label of a
    wnid is its line in wnids.txt, which is deliberately not sorted order.
    """
    base = os.path.join(root, "tiny-imagenet-200")
    wnids = [f"n0{9 - k:07d}" for k in range(n_classes)]  # descending: the file order is the label order
    os.makedirs(base, exist_ok=True)
    with open(os.path.join(base, "wnids.txt"), "w") as f:
        f.write("\n".join(wnids) + "\n")
    with open(os.path.join(base, "words.txt"), "w") as f:
        f.write("".join(f"{w}\tthing {k}\n" for k, w in enumerate(wnids)))
    for k, w in enumerate(wnids):
        folder = os.path.join(base, "train", w, "images")
        for i in range(n_train):
            save_image(os.path.join(folder, f"{w}_{i}.JPEG"), k, (64, 64))
        with open(os.path.join(base, "train", w, f"{w}_boxes.txt"), "w") as f:
            f.write("".join(f"{w}_{i}.JPEG\t0\t0\t63\t63\n" for i in range(n_train)))
    rows = []
    for i in range(n_val * n_classes):
        k = (n_classes - 1 - i) % n_classes
        save_image(os.path.join(base, "val", "images", f"val_{i}.JPEG"), k, (64, 64))
        rows.append(f"val_{i}.JPEG\t{wnids[k]}\t0\t0\t63\t63\n")
    with open(os.path.join(base, "val", "val_annotations.txt"), "w") as f:
        f.write("".join(rows))
    return wnids


CORE50_FIXTURE = {  # scenario -> training batches as lists of object ids (labels 0..49)
    "nc": [[3, 7, 11], [0, 5], [20, 9]],
    "ni": [[0, 1, 2, 3], [0, 1, 2, 3]],
}


def write_core50(root: str, mini: bool = False, run: int = 0, per_class: int = 2) -> dict:
    """Write ``root/core50_128x128/s<s>/o<o>/C_<ss>_<oo>_<iii>.png`` and
    ``root/batches_filelists/{NC_inc,NI_inc}/run<run>/{train_batch_<XX>_filelist.txt,test_filelist.txt}``
    as the official zips unpack (filelist lines ``s1/o4/C_01_04_000.png 3``: object o has label o-1).

    Training images come from sessions 1-2 (NI: batch b uses session b+1), test images from session 3.
    Returns ``{scenario: {"batches": [[labels]], "test_labels": [...]}}``.
    """
    img_root = os.path.join(root, "core50_32x32" if mini else "core50_128x128")
    size = (32, 32) if mini else (128, 128)

    def image(session: int, label: int, i: int) -> str:
        rel = f"s{session}/o{label + 1}/C_{session:02d}_{label + 1:02d}_{i:03d}.png"
        path = os.path.join(img_root, rel)
        if not os.path.isfile(path):
            save_image(path, label, size)
        return rel

    out = {}
    for scenario, batches in CORE50_FIXTURE.items():
        lists = os.path.join(root, "batches_filelists", f"{scenario.upper()}_inc", f"run{run}")
        os.makedirs(lists, exist_ok=True)
        for b, labels in enumerate(batches):
            session = b + 1 if scenario == "ni" else 1 + (b % 2)
            rows = [f"{image(session, y, i)} {y}" for i in range(per_class) for y in labels]
            with open(os.path.join(lists, f"train_batch_{b:02d}_filelist.txt"), "w") as f:
                f.write("\n".join(rows) + "\n")
        test = sorted({y for labels in batches for y in labels})
        rows = [f"{image(3, y, i)} {y}" for y in test for i in range(per_class)]
        with open(os.path.join(lists, "test_filelist.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")
        out[scenario] = {"batches": batches, "test_labels": [y for y in test for _ in range(per_class)]}
    return out


# ----------------------------------------------------------------------------- ImageNet-R
def write_imagenet_r(
    root: str,
    wnids: Iterable[str],
    per_class: int | Iterable[int] = 5,
    layout: str = "flat",
    test_per_class: Optional[int] = None,
    size: tuple[int, int] = (24, 18),
) -> dict:
    """Write ImageNet-R as ``imagenet-r.tar`` unpacks (``layout="flat"``: ``root/<wnid>/<style>_<i>.jpg`` and
    ``root/README.txt``) or pre-split (``layout="folders"``: ``root/{train,test}/<wnid>/...``, LAMDA-PILOT's layout).

    Args:
        wnids: the class folders, in any order; a class's label is its index in the *sorted* wnids, and its
            images are filled with ``class_value(label)``.
        per_class: images a class (one count for all, or one per wnid in the order given); with
            ``layout="folders"`` the train images.
        test_per_class: ``layout="folders"``: test images a class (default: half of per_class, at least 1).

    Returns ``{split: {wnid: [relative paths, sorted]}}`` with split ``all`` (flat) or ``train`` and ``test``.
    """
    wnids = list(wnids)
    counts = [per_class] * len(wnids) if isinstance(per_class, int) else list(per_class)
    label = {w: k for k, w in enumerate(sorted(wnids))}
    styles = ("art", "cartoon", "sketch", "toy")
    os.makedirs(root, exist_ok=True)
    out: dict = {}
    if layout == "flat":
        with open(os.path.join(root, "README.txt"), "w") as f:
            f.write("ImageNet-R: 200 classes, renditions of ImageNet classes (fixture)\n")
        plan = {"all": ("", counts)}
    elif layout == "folders":
        plan = {"train": ("train", counts),
                "test": ("test", [test_per_class if test_per_class is not None else max(1, n // 2) for n in counts])}
    else:
        raise ValueError(f"layout={layout!r}: flat or folders")
    for split, (sub, split_counts) in plan.items():
        out[split] = {}
        for w, n in zip(wnids, split_counts):
            rel = [os.path.join(sub, w, f"{styles[i % len(styles)]}_{split}_{i}.jpg") if sub
                   else os.path.join(w, f"{styles[i % len(styles)]}_{i}.jpg") for i in range(n)]
            for r in rel:
                save_image(os.path.join(root, r), label[w], size)
            os.makedirs(os.path.join(root, sub, w), exist_ok=True)  # a class of 0 images: an empty folder
            out[split][w] = sorted(rel)
    return out
