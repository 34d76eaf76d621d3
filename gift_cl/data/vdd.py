"""Visual Domain Decathlon (VDD) loader and the decathlon score.

Official on-disk layout (``decathlon-1.0`` from the VDD devkit), ``root`` being that folder::

    root/annotations/<domain>_{train,val,test}.json      COCO style
    root/data/<domain>/<split>/...                        images, 72 px on the shorter side

Each JSON holds ``images: [{id, file_name, width, height}]``, ``annotations: [{image_id,
category_id}]`` and ``categories: [{id, name}]``; ``file_name`` is relative to ``root``. Category
ids are offset per domain (imagenet12 from 1, aircraft from 10000001, ..., dtd from 40000001), so a
label is ``category_id - min(category ids of the domain)``, taken from the ``categories`` list so
that train, val and test agree even where a split lacks some classes. The official test JSONs
ship without annotations; see ``split`` in :func:`load_vdd` for what happens then.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

from torchvision import transforms as T

from gift_cl.data.base import DataError, TaskData, require_unique
from gift_cl.data.files import (
    ImageFileDataset,
    check_choice,
    read_json,
    require_dir,
    square_resize,
    to_tensor_normalize,
    verify_image_files,
)

logger = logging.getLogger(__name__)

# The usual stream order (that of the devkit and of the decathlon papers).
VDD_DOMAINS = (
    "imagenet12", "aircraft", "cifar100", "daimlerpedcls", "dtd",
    "gtsrb", "omniglot", "svhn", "ucf101", "vgg-flowers",
)
VDD_NUM_CLASSES = {
    "imagenet12": 1000, "aircraft": 100, "cifar100": 100, "daimlerpedcls": 2, "dtd": 47,
    "gtsrb": 43, "omniglot": 1623, "svhn": 10, "ucf101": 101, "vgg-flowers": 102,
}
# Test accuracy (as a fraction) of the baseline that defines the decathlon score
# (Rebuffi et al. 2017, "Learning multiple visual domains with residual adapters").
VDD_BASELINE_ACC = {
    "imagenet12": 0.5987, "aircraft": 0.6034, "cifar100": 0.8212, "daimlerpedcls": 0.9282,
    "dtd": 0.5553, "gtsrb": 0.9753, "omniglot": 0.8769, "svhn": 0.9655, "ucf101": 0.5120,
    "vgg-flowers": 0.8141,
}
# Orientation carries the class in these domains (traffic signs, characters, digits).
NO_FLIP_DOMAINS = frozenset({"gtsrb", "omniglot", "svhn"})
NATIVE_RESIZE, NATIVE_CROP = 72, 64
SPLITS = ("train_val", "trainval_test")
TRANSFORMS = ("native", "resize")


# ----------------------------------------------------------------------------- annotations
@dataclass
class VDDSplit:
    """One parsed ``<domain>_<split>.json``: image paths, labels (None if unannotated), category ids."""

    path: str
    relpaths: list[str]
    labels: list[int] | None
    category_ids: list[int]


def _records(doc: dict, key: str, fields: Sequence[str], path: str, required: bool = True) -> list[dict]:
    if key not in doc:
        if required:
            raise DataError(f"{path}: missing the {key!r} list; expected a COCO-style VDD annotation file")
        return []
    recs = doc[key]
    if not isinstance(recs, list):
        raise DataError(f"{path}: {key!r} must be a list, got {type(recs).__name__}")
    for i, rec in enumerate(recs):
        if not isinstance(rec, dict) or any(f not in rec for f in fields):
            raise DataError(f"{path}: {key}[{i}] = {rec!r} lacks one of the fields {list(fields)}")
    return recs


def read_vdd_split(root: str, domain: str, split: str) -> VDDSplit:
    """Parse ``annotations/<domain>_<split>.json`` with every consistency check that is cheap."""
    path = os.path.join(root, "annotations", f"{domain}_{split}.json")
    doc = read_json(path, f"the VDD annotation file of {domain}/{split} (COCO style)")
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object with 'images', 'annotations', 'categories'")
    images = _records(doc, "images", ("id", "file_name"), path)
    if not images:
        raise DataError(f"{path}: the 'images' list is empty; expected the images of {domain}/{split}")
    cats = _records(doc, "categories", ("id",), path, required=False)
    anns = _records(doc, "annotations", ("image_id", "category_id"), path, required=False)

    category_ids = sorted(int(c["id"]) for c in cats)
    relpaths = [str(im["file_name"]) for im in images]
    if not anns:
        return VDDSplit(path, relpaths, None, category_ids)

    image_ids = {im["id"] for im in images}
    by_image: dict = {}
    for i, a in enumerate(anns):
        if a["image_id"] not in image_ids:
            raise DataError(f"{path}: annotations[{i}] refers to unknown image_id {a['image_id']!r}")
        if a["image_id"] in by_image:
            raise DataError(f"{path}: image_id {a['image_id']!r} has more than one annotation")
        by_image[a["image_id"]] = int(a["category_id"])
    missing = [im["file_name"] for im in images if im["id"] not in by_image]
    if missing:
        # A partly annotated split would silently shrink the data: refuse it.
        raise DataError(f"{path}: {len(missing)} of {len(images)} images have no annotation (first: {missing[0]})")
    labels = [by_image[im["id"]] for im in images]
    return VDDSplit(path, relpaths, labels, category_ids)


def _categories(train: VDDSplit, others: Sequence[VDDSplit], domain: str) -> tuple[int, int]:
    """Return (min category id, number of classes) from the train categories, checked across splits."""
    ids = train.category_ids
    if not ids:
        raise DataError(f"{train.path}: the 'categories' list is empty; the label offset of {domain} comes from it")
    if ids != list(range(ids[0], ids[0] + len(ids))):
        raise DataError(f"{train.path}: category ids are not contiguous "
                        f"({ids[0]}..{ids[-1]} for {len(ids)} categories)")
    for split in others:
        if split.category_ids and split.category_ids != ids:
            raise DataError(f"{split.path}: its 'categories' differ from those of {train.path}")
    if len(ids) != VDD_NUM_CLASSES[domain]:
        logger.warning("VDD %s: %d categories in %s, the official domain has %d",
                       domain, len(ids), train.path, VDD_NUM_CLASSES[domain])
    return ids[0], len(ids)


def _labels(split: VDDSplit, offset: int, num_classes: int) -> list[int]:
    assert split.labels is not None  # only annotated splits are trained or evaluated on (_load_domain)
    labels = [c - offset for c in split.labels]
    for rel, y, c in zip(split.relpaths, labels, split.labels):
        if not 0 <= y < num_classes:
            raise DataError(f"{split.path}: {rel} has category_id {c}, outside the categories "
                            f"{offset}..{offset + num_classes - 1}")
    return labels


# ----------------------------------------------------------------------------- transforms
def vdd_transforms(domain: str, mode: str, image_size: int, mean, std):
    """``(pre, train, eval)`` transforms; ``pre`` is the deterministic part that gets cached.

    ``native``: the decathlon recipe on the 72 px images: Resize(72) shorter side, then a random
    64 px crop (+ horizontal flip except for gtsrb/omniglot/svhn) for training, a centre crop for
    evaluation. ``resize``: a plain square resize to the backbone's ``image_size``, no augmentation.
    """
    tail = to_tensor_normalize(mean, std)
    if mode == "native":
        pre = T.Resize(NATIVE_RESIZE)
        aug = [T.RandomCrop(NATIVE_CROP)]
        if domain not in NO_FLIP_DOMAINS:
            aug.append(T.RandomHorizontalFlip())
        return pre, T.Compose(aug + tail), T.Compose([T.CenterCrop(NATIVE_CROP)] + tail)
    # no pre-transform: a cache then holds the small decoded originals (~15 kB) rather than
    # image_size**2 * 3 bytes an image (150 kB at 224 px; 180 GB for imagenet12)
    plain = T.Compose([square_resize(image_size)] + tail)
    return None, plain, plain


# ----------------------------------------------------------------------------- loader
def load_vdd(
    root: str,
    domains: Sequence[str] = VDD_DOMAINS,
    split: str = "train_val",
    transform: str = "resize",
    image_size: int = 224,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    cache_decoded: bool = False,
    verify_images: bool = True,
) -> list[TaskData]:
    """Load VDD domains as a task stream, one :class:`TaskData` per domain in ``domains`` order.

    Args:
        root: the ``decathlon-1.0`` folder holding ``annotations/`` and ``data/``.
        domains: subset and order of the stream (default: all ten, imagenet12 first).
        split: ``train_val`` trains on train and evaluates on val; ``trainval_test`` trains on
            train+val and evaluates on test. Where a test JSON carries no annotations (the official
            release), that domain falls back to training on train and evaluating on val, with a
            warning, and ``info['eval_split'] == 'val'`` records it. (Training on train+val and
            scoring on val would score training images.)
        transform: ``resize`` (square, to ``image_size``) or ``native`` (64 px crops of the 72 px
            images, the decathlon recipe: the backbone must take 64 px inputs).
        image_size, mean, std: the backbone's input size and normalisation.
        cache_decoded: decode every image once into memory (VDD images are small; see files.py).
        verify_images: check every image decodes, at load time (see ``verify_image_files``).
    """
    check_choice(split, SPLITS, "split")
    check_choice(transform, TRANSFORMS, "transform")
    require_dir(os.path.join(root, "annotations"),
                "the VDD devkit layout <root>/annotations/<domain>_{train,val,test}.json and "
                "<root>/data/<domain>/<split>/... (root is the decathlon-1.0 folder)")
    for domain in domains:
        check_choice(domain, VDD_DOMAINS, "domain")
    require_unique(domains, "benchmark.domains")  # before any image is read
    tasks = []
    for domain in domains:
        tasks.append(_load_domain(root, domain, split, transform, image_size, mean, std,
                                  cache_decoded, verify_images))
    if not tasks:
        raise DataError("domains is empty; expected a subset of " + ", ".join(VDD_DOMAINS))
    return tasks


def _load_domain(root, domain, split, transform, image_size, mean, std, cache_decoded, verify_images) -> TaskData:
    train = read_vdd_split(root, domain, "train")
    val = read_vdd_split(root, domain, "val")
    test = read_vdd_split(root, domain, "test") if split == "trainval_test" else None
    for s in (train, val):
        if s.labels is None:
            raise DataError(f"{s.path}: no annotations; the train and val splits must be labelled")
    offset, num_classes = _categories(train, [val] + ([test] if test else []), domain)

    if split == "train_val":
        fit, evaluate, eval_split = [train], val, "val"
    else:
        assert test is not None  # split is trainval_test (check_choice): the test split was read above
        if test.labels is not None:
            fit, evaluate, eval_split = [train, val], test, "test"
        else:
            logger.warning(
                "VDD %s: %s has no annotations (the official test labels are withheld), so this domain "
                "trains on train and evaluates on val instead of train+val -> test; its accuracy is a "
                "val accuracy, not a test accuracy", domain, test.path)
            fit, evaluate, eval_split = [train], val, "val"

    pre, train_tf, eval_tf = vdd_transforms(domain, transform, image_size, mean, std)

    def dataset(splits: list[VDDSplit], tf) -> ImageFileDataset:
        relpaths = [p for s in splits for p in s.relpaths]
        labels = [y for s in splits for y in _labels(s, offset, num_classes)]
        source = " + ".join(s.path for s in splits)
        if verify_images:
            for s in splits:
                verify_image_files(root, s.relpaths, s.path, decode=not cache_decoded)
        return ImageFileDataset(root, relpaths, labels, tf, pre_transform=pre,
                                cache_decoded=cache_decoded, source=source)

    train_ds, eval_ds = dataset(fit, train_tf), dataset([evaluate], eval_tf)
    info = {
        "benchmark": "vdd",
        "domain": domain,
        "split": split,
        "train_splits": [os.path.basename(s.path) for s in fit],
        "eval_split": eval_split,
        "test_labels_available": None if test is None else test.labels is not None,
        "transform": transform,
        "n_train": len(train_ds),
        "n_eval": len(eval_ds),
    }
    return TaskData(name=domain, train=train_ds, test=eval_ds, num_classes=num_classes, info=info)


# ----------------------------------------------------------------------------- decathlon score
def decathlon_score(test_acc: Mapping[str, float]) -> dict:
    """The Visual Decathlon score of per-domain test accuracies.

    ``S = sum_d alpha_d * max(0, Emax_d - E_d)**2`` with ``E_d`` the test error (a fraction),
    ``Emax_d = 2 * Ebase_d`` and ``alpha_d = 1000 / Emax_d**2``: each domain gives 0..1000 points,
    the baseline (``VDD_BASELINE_ACC``) gets 250 per domain (2500 over ten), a perfect model 1000
    per domain (10000 over ten).

    Args:
        test_acc: domain name -> accuracy **as a fraction in [0, 1]** (not a percentage). Any
            subset of the ten domains; the total is over the domains given.

    Returns:
        ``{"per_domain": {domain: score}, "total": sum of the per-domain scores}``.

    Raises:
        ValueError: an unknown domain, or an accuracy outside [0, 1] (e.g. a percentage).
    """
    per_domain = {}
    for domain, acc in test_acc.items():
        if domain not in VDD_BASELINE_ACC:
            raise ValueError(f"decathlon_score: unknown domain {domain!r}; expected one of {list(VDD_DOMAINS)}")
        acc = float(acc)
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"decathlon_score: accuracy of {domain} is {acc}; expected a fraction in [0, 1] "
                             "(pass 0.8 for 80 %)")
        err_max = 2.0 * (1.0 - VDD_BASELINE_ACC[domain])
        err = 1.0 - acc
        # alpha * (Emax - E)^2 written as 1000 * ((Emax - E) / Emax)^2: identical maths, but the
        # baseline then scores exactly 250.0 (x / 2x == 0.5 in floating point).
        per_domain[domain] = 1000.0 * (max(0.0, err_max - err) / err_max) ** 2
    return {"per_domain": per_domain, "total": sum(per_domain.values())}
