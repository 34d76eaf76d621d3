"""FGVC loader: CUB-200-2011, NABirds, Oxford Flowers, Stanford Dogs, Stanford Cars.

On-disk layout: the VPT release (also used by the GIFT code), ``root`` being one dataset's folder::

    root/{train,val,test}.json    {"relative/image/path": class_id, ...}
    root/<image root>/<relative/image/path>

Image roots: CUB ``images/``, NABirds ``images/``, Stanford Dogs ``Images/``; Stanford Cars and
Oxford Flowers paths are relative to ``root`` itself. Class ids are ints, or zero-padded strings
("001") for CUB.

Labels: the official code remaps each split on its own with ``sorted(set(values))``. NABirds val
holds only 553 of the 555 classes, so that misaligns its val labels with train. Here every split is
mapped through the sorted *train* class ids, and a val/test class absent from train is an error.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence

from torchvision import transforms as T

from gift_cl.data.base import DataError, TaskData
from gift_cl.data.files import (
    ImageFileDataset,
    check_choice,
    read_json,
    require_dir,
    to_tensor_normalize,
    verify_image_files,
)

logger = logging.getLogger(__name__)

FGVC_DATASETS = {
    # name: (image root inside the dataset folder, number of classes)
    "cub": ("images", 200),
    "nabirds": ("images", 555),
    "oxford_flowers": ("", 102),
    "stanford_dogs": ("Images", 120),
    "stanford_cars": ("", 196),
}
# mode -> (train split, eval split); official final runs train on train.json only.
MODES = {"tune": ("train", "val"), "final": ("train", "test")}


def read_fgvc_split(path: str) -> dict[str, int | str]:
    """Read ``{relative/path: class_id}``; each id must be an int or a string of digits."""
    doc = read_json(path, "a JSON object mapping relative image paths to class ids")
    if not isinstance(doc, dict):
        raise DataError(f"{path}: expected a JSON object {{relative/path: class_id}}, got {type(doc).__name__}")
    if not doc:
        raise DataError(f"{path}: the split lists no images")
    for rel, cid in doc.items():
        if isinstance(cid, bool) or not isinstance(cid, (int, str)) or (isinstance(cid, str) and not cid.isdigit()):
            raise DataError(f"{path}: {rel!r} has class id {cid!r}; expected an integer or a string of digits")
    return doc


def fgvc_transforms(image_size: int, mean, std):
    """``(pre, train, eval)``: Resize(256) shorter side, then RandomCrop(224) + flip for training
    and CenterCrop(224) for evaluation. ``pre`` (the resize) is deterministic, hence cacheable.

    256 and 224 scale with ``image_size`` (resize = round(image_size * 256 / 224)), so small test
    sizes keep the official crop ratio.
    """
    pre = T.Resize(int(round(image_size * 256 / 224)))
    tail = to_tensor_normalize(mean, std)
    train = T.Compose([T.RandomCrop(image_size), T.RandomHorizontalFlip()] + tail)
    evaluate = T.Compose([T.CenterCrop(image_size)] + tail)
    return pre, train, evaluate


def load_fgvc(
    root: str,
    dataset: str,
    mode: str = "tune",
    image_size: int = 224,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    cache_decoded: bool = False,
    verify_images: bool = True,
) -> list[TaskData]:
    """Load one FGVC dataset as a one-task stream.

    Args:
        root: the dataset folder holding ``{train,val,test}.json`` and the images.
        dataset: one of ``FGVC_DATASETS``.
        mode: ``tune`` (train -> val) or ``final`` (train -> test, as the official final runs).
        image_size, mean, std: the backbone's input size and normalisation.
        cache_decoded: decode and resize (shorter side 256) every image once into memory
            (about 256x340x3 bytes an image: 1.4 GB for CUB train, 5.6 GB for NABirds train).
        verify_images: check every image decodes, at load time (see ``verify_image_files``).
    """
    check_choice(dataset, FGVC_DATASETS, "dataset")
    check_choice(mode, MODES, "mode")
    image_dir, official_classes = FGVC_DATASETS[dataset]
    require_dir(root, f"the VPT FGVC layout <root>/{{train,val,test}}.json plus images under "
                      f"<root>/{image_dir or '.'}/ for {dataset}")
    img_root = os.path.join(root, image_dir)
    train_name, eval_name = MODES[mode]
    splits = {name: read_fgvc_split(os.path.join(root, f"{name}.json")) for name in (train_name, eval_name)}

    class_ids = sorted({int(c) for c in splits[train_name].values()})
    to_label = {c: i for i, c in enumerate(class_ids)}
    if len(class_ids) != official_classes:
        logger.warning("FGVC %s: %d classes in train.json, the official dataset has %d",
                       dataset, len(class_ids), official_classes)
    pre, train_tf, eval_tf = fgvc_transforms(image_size, mean, std)

    def make(name: str, tf) -> ImageFileDataset:
        path = os.path.join(root, f"{name}.json")
        relpaths, labels = [], []
        for rel, cid in splits[name].items():
            if int(cid) not in to_label:
                raise DataError(f"{path}: {rel!r} has class id {cid!r}, which train.json never uses; "
                                "labels are defined by the train classes")
            relpaths.append(rel)
            labels.append(to_label[int(cid)])
        if verify_images:
            verify_image_files(img_root, relpaths, path, decode=not cache_decoded)
        return ImageFileDataset(img_root, relpaths, labels, tf, pre_transform=pre,
                                cache_decoded=cache_decoded, source=path)

    train, evaluate = make(train_name, train_tf), make(eval_name, eval_tf)
    info = {"benchmark": "fgvc", "dataset": dataset, "mode": mode, "train_split": f"{train_name}.json",
            "eval_split": f"{eval_name}.json", "n_train": len(train), "n_eval": len(evaluate)}
    return [TaskData(name=dataset, train=train, test=evaluate, num_classes=len(class_ids), info=info)]
