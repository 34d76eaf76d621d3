"""5-datasets: CIFAR-10, MNIST, Fashion-MNIST, SVHN and notMNIST as a 5-task stream, 10 classes each.

On-disk layout under one ``root``, exactly what torchvision's ``download=True`` leaves there when
every dataset is given the same root, plus notMNIST as image folders::

    root/cifar-10-batches-py/{data_batch_1..5,test_batch}      CIFAR10 python pickles
    root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte          MNIST IDX (uncompressed)
    root/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte   Fashion-MNIST IDX
    root/{train,test}_32x32.mat                                  SVHN (MATLAB, label 10 = digit 0)
    root/notMNIST/{train,test}/<A..J>/*.png                      notMNIST, letter = class

MNIST and Fashion-MNIST go through torchvision's dataset classes (``download=False``). CIFAR-10 and
SVHN are parsed here, in torchvision's format: torchvision's classes refuse any file whose md5 is
not that of the official download, which rules out partial copies and test fixtures and hides
which file is wrong. ``verify_checksums=True`` performs that md5 check with torchvision's own list.
"""
from __future__ import annotations

import os
import pickle
from typing import Callable, Sequence

import numpy as np
from torchvision import datasets as tvd, transforms as T
from torchvision.datasets.utils import check_integrity

from gift_cl.data.base import ArrayDataset, DataError, TaskData, require_unique
from gift_cl.data.files import (
    ImageFileDataset,
    check_choice,
    read_pickled_dict,
    require_dir,
    require_file,
    square_resize,
    to_tensor_normalize,
    verify_image_files,
)

FIVE_DATASETS = ("svhn", "mnist", "cifar10", "notmnist", "fashion_mnist")
# The order of L2P/DualPrompt/CODA-Prompt, the usual ViT continual-learning papers.
DEFAULT_ORDER = FIVE_DATASETS
NATIVE_SIZE = 32
NOTMNIST_CLASSES = tuple("ABCDEFGHIJ")
TRANSFORMS = ("native", "resize")


# ----------------------------------------------------------------------------- readers
def _check_arrays(images: np.ndarray, labels: np.ndarray, path: str, label_range=(0, 9)) -> None:
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{path}: the split holds no images")
    lo, hi = label_range
    bad = np.flatnonzero((labels < lo) | (labels > hi))
    if bad.size:
        raise DataError(f"{path}: label {int(labels[bad[0]])} at index {int(bad[0])} out of range, expected {lo}..{hi}")


def _md5_check(path: str, md5: str, verify: bool) -> None:
    if verify and not check_integrity(path, md5):
        raise DataError(f"{path}: md5 differs from the official file's ({md5}); the download is corrupt or partial")


def read_cifar10(root: str, train: bool, verify_checksums: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python pickles -> (N, 32, 32, 3) uint8 images and int64 labels."""
    folder = require_dir(os.path.join(root, tvd.CIFAR10.base_folder),
                         "CIFAR-10 in torchvision's layout <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}")
    images, labels = [], []
    for name, md5 in (tvd.CIFAR10.train_list if train else tvd.CIFAR10.test_list):
        path = require_file(os.path.join(folder, name), "a CIFAR-10 python pickle batch")
        _md5_check(path, md5, verify_checksums)
        what = "CIFAR-10 batch: a pickled dict with 'data' (N x 3072 uint8) and 'labels'"
        entry = read_pickled_dict(path, ("data", "labels"), what)
        try:
            data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = np.asarray(entry["labels"], dtype=np.int64)
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: not a {what} ({type(e).__name__}: {e})") from None
        _check_arrays(data, batch_labels, path)
        images.append(data.transpose(0, 2, 3, 1))
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def read_mnist_like(root: str, train: bool, cls=tvd.MNIST) -> tuple[np.ndarray, np.ndarray]:
    """MNIST / Fashion-MNIST through torchvision -> (N, 28, 28, 1) uint8 images and labels."""
    raw = os.path.join(root, cls.__name__, "raw")
    files = {p: [os.path.join(raw, f"{p}-images-idx3-ubyte"), os.path.join(raw, f"{p}-labels-idx1-ubyte")]
             for p in ("train", "t10k")}
    # torchvision wants all four files present, whichever split is asked for
    for path in files["train"] + files["t10k"]:
        if not os.path.isfile(path):
            hint = "; gunzip the .gz next to it" if os.path.isfile(path + ".gz") else ""
            raise DataError(f"{path}: file not found; expected {cls.__name__} in torchvision's layout "
                            f"<root>/{cls.__name__}/raw/<uncompressed IDX files>{hint}")
    split_files = files["train" if train else "t10k"]
    kind = "IDX"
    legacy = [os.path.join(root, cls.__name__, "processed", f) for f in (cls.training_file, cls.test_file)]
    if all(os.path.isfile(p) for p in legacy):
        # torchvision reads these instead of the raw files (with torch.load(weights_only=True)): name them
        split_files, kind = [legacy[0 if train else 1]], "legacy torchvision .pt"
    try:
        ds = cls(root, train=train, download=False)
    except (AssertionError, RuntimeError, TypeError, ValueError, OSError, EOFError, pickle.UnpicklingError) as e:
        raise DataError(f"{' / '.join(split_files)}: not valid {kind} files ({type(e).__name__}: {e})") from None
    images, labels = ds.data.numpy()[..., None], ds.targets.numpy().astype(np.int64)
    _check_arrays(images, labels, split_files[0])
    return images, labels


def read_svhn(root: str, train: bool, verify_checksums: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """SVHN ``<split>_32x32.mat`` -> (N, 32, 32, 3) uint8 images and labels, 10 mapped to 0."""
    import scipy.io

    split = "train" if train else "test"
    _, filename, md5 = tvd.SVHN.split_list[split]
    path = require_file(os.path.join(root, filename), f"SVHN in torchvision's layout <root>/{filename}")
    _md5_check(path, md5, verify_checksums)
    try:
        mat = scipy.io.loadmat(path)
        images = np.ascontiguousarray(np.transpose(mat["X"], (3, 0, 1, 2)), dtype=np.uint8)
        labels = np.asarray(mat["y"], dtype=np.int64).reshape(-1)
    # NotImplementedError: scipy's answer to a MATLAB v7.3 (HDF5) file, which SVHN's official files are not
    except (scipy.io.matlab.MatReadError, ValueError, KeyError, TypeError, OSError, NotImplementedError) as e:
        raise DataError(f"{path}: not an SVHN .mat file ({type(e).__name__}: {e}); expected 'X' "
                        "(32 x 32 x 3 x N uint8) and 'y' (N x 1, labels 1..10)") from None
    if images.shape[1:] != (32, 32, 3):
        raise DataError(f"{path}: 'X' has images of shape {images.shape[1:]}, expected 32 x 32 x 3")
    _check_arrays(images, labels, path, label_range=(1, 10))
    labels[labels == 10] = 0  # SVHN stores the digit 0 as class 10
    return images, labels


def list_notmnist(root: str, train: bool) -> tuple[str, list[str], list[int]]:
    """notMNIST image folders -> (split folder, sorted relative paths, labels A..J -> 0..9)."""
    split = "train" if train else "test"
    folder = require_dir(os.path.join(root, "notMNIST", split),
                         "notMNIST as image folders <root>/notMNIST/{train,test}/<A..J>/*.png")
    relpaths, labels = [], []
    for label, letter in enumerate(NOTMNIST_CLASSES):
        class_dir = require_dir(os.path.join(folder, letter), f"the notMNIST class folder of letter {letter}")
        names = sorted(n for n in os.listdir(class_dir)
                       if not n.startswith(".") and n.lower().endswith((".png", ".jpg", ".jpeg")))
        if not names:
            raise DataError(f"{class_dir}: no images; expected the {letter} images as .png files")
        relpaths += [f"{letter}/{n}" for n in names]
        labels += [label] * len(names)
    return folder, relpaths, labels


# ----------------------------------------------------------------------------- loader
def load_five_datasets(
    root: str,
    order: Sequence[str] = DEFAULT_ORDER,
    transform: str = "native",
    image_size: int = 224,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    verify_checksums: bool = False,
    verify_images: bool = True,
    cache_decoded: bool = True,
) -> list[TaskData]:
    """Load the 5-datasets stream, one task per dataset in ``order``.

    Args:
        root: the folder described in the module docstring.
        order: dataset names (``FIVE_DATASETS``) in stream order; a subset is allowed.
        transform: ``native`` (everything at 32 x 32; greyscale replicated to 3 channels) or
            ``resize`` (square resize to ``image_size``). No augmentation either way.
        image_size, mean, std: the backbone's input size and normalisation.
        verify_checksums: md5-check the CIFAR-10 and SVHN files against torchvision's list.
        verify_images: check every notMNIST image decodes, at load time (a full decode unless
            ``cache_decoded`` decodes them all anyway).
        cache_decoded: decode the notMNIST images once into memory (28 px RGB: 45 MB for notMNIST_small).
    """
    check_choice(transform, TRANSFORMS, "transform")
    size = NATIVE_SIZE if transform == "native" else int(image_size)
    resize, tail = square_resize(size), to_tensor_normalize(mean, std)
    for name in order:
        check_choice(name, FIVE_DATASETS, "dataset")
    require_unique(order, "benchmark.order")  # before any file is read
    tasks = []
    for name in order:
        train, test = (_load_split(root, name, is_train, resize, tail, verify_checksums, verify_images, cache_decoded)
                       for is_train in (True, False))
        info = {"benchmark": "five_datasets", "dataset": name, "transform": transform, "image_size": size,
                "n_train": len(train), "n_eval": len(test), "eval_split": "test"}
        tasks.append(TaskData(name=name, train=train, test=test, num_classes=10, info=info))
    if not tasks:
        raise DataError("order is empty; expected a subset of " + ", ".join(FIVE_DATASETS))
    return tasks


def _load_split(root, name, train, resize: Callable, tail: list, verify_checksums, verify_images, cache_decoded):
    if name == "notmnist":
        folder, relpaths, file_labels = list_notmnist(root, train)
        if verify_images:
            verify_image_files(folder, relpaths, folder, decode=not cache_decoded)
        # the cache holds the 28 px originals (2.4 kB each), the resize runs per access as for the arrays
        return ImageFileDataset(folder, relpaths, file_labels, T.Compose([resize] + tail),
                                cache_decoded=cache_decoded, source=folder)
    if name == "cifar10":
        images, labels = read_cifar10(root, train, verify_checksums)
    elif name == "svhn":
        images, labels = read_svhn(root, train, verify_checksums)
    else:
        images, labels = read_mnist_like(root, train, tvd.MNIST if name == "mnist" else tvd.FashionMNIST)
    return ArrayDataset(images, labels.tolist(), T.Compose([resize] + tail))
