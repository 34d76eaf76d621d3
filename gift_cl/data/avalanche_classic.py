"""Avalanche's classic benchmarks, read from local files, as task-incremental streams.

``benchmark=avalanche/<name>`` builds one of Avalanche's classic continual-learning benchmarks as a
list of :class:`TaskData` (one task per experience, labels 0..C-1 inside every task), so it flows
through the project's own stream builder (``gift_cl.data.stream``) like every other benchmark.

Nothing is downloaded: the files are read from ``root``. The class split follows Avalanche's
``nc_benchmark`` exactly (classes sorted, then shuffled with ``torch.randperm`` after
``manual_seed(class_order_seed)``, or ``fixed_class_order``; experience ``i`` takes the next
``n_classes / n_experiences`` classes; inside a task a class gets its position in that slice, as
with ``class_ids_from_zero_in_each_exp=True``), so ``split_mnist`` with seed 0 has the same class
order as ``avalanche.benchmarks.classic.SplitMNIST(5, seed=0, return_task_id=True)``.

Class-incremental splits ("B<base> Inc<inc>", as in L2P, CODA-Prompt and LAMDA-PILOT): ``first_task_classes``
gives the first task's classes and ``n_experiences`` the number of tasks, the rest equal (:func:`split_classes`);
``class_order_rule=pilot`` shuffles the classes as LAMDA-PILOT does (:func:`class_order`). Every task's
``info`` records its original ``classes`` and its ``class_offset`` (classes in all earlier tasks).

On-disk layouts (the default ``root`` is where Avalanche itself would have downloaded the data,
``~/.avalanche/data/<dataset>``, so a machine that ran Avalanche online once has them)::

    split_mnist          root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]   (torchvision)
                         or root/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]           (LeCun release)
    split_fmnist         root/FashionMNIST/raw/<the four IDX files>[.gz]                      (torchvision)
                         or root/<the four IDX files>[.gz]  (Zalando release; Debian's dataset-fashion-mnist
                         puts them in /usr/share/datasets/fashion-mnist, the default root)
    split_cifar10        root/cifar-10-batches-py/{data_batch_1..5,test_batch}                (python pickles)
    split_cifar100       root/cifar-100-python/{train,test}                                   (python pickles, fine labels)
    split_tiny_imagenet  root/tiny-imagenet-200/wnids.txt, train/<wnid>/images/*.JPEG,
                         val/images/*.JPEG, val/val_annotations.txt                          (the official zip)
    core50               root/core50_128x128/s<session>/o<object>/*.png (mini: root/core50_32x32/...)
                         root/batches_filelists/{NC_inc,NI_inc}[_cat]/run<r>/train_batch_<XX>_filelist.txt
                         and .../test_filelist.txt (lines "s11/o1/C_11_01_000.png 0")     (batches_filelists.zip)

Every image is resized (square) to ``image_size``, greyscale is replicated to RGB, and
``mean``/``std`` normalise it (by default the backbone's own, see ``gift_cl.config``).
"""
from __future__ import annotations

import gzip
import os
from typing import Iterable, Optional, Sequence

import numpy as np
import torch
from torchvision import transforms as T

from gift_cl.data.base import ArrayDataset, DataError, TaskData
from gift_cl.data.files import (
    ImageFileDataset,
    check_choice,
    check_label_range,
    read_list_file,
    read_pickled_dict,
    square_resize,
    to_tensor_normalize,
    verify_image_files,
)

IDX_FILES = tuple(f"{p}-{k}-idx{d}-ubyte" for p in ("train", "t10k") for k, d in (("images", 3), ("labels", 1)))

# name -> (what, torchvision folder name for IDX sets, default root, expected layout)
LAYOUTS = {
    "split_mnist": ("MNIST", "~/.avalanche/data/mnist",
                    "<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (torchvision) or the "
                    "same four files directly in <root>"),
    "split_fmnist": ("Fashion-MNIST", "/usr/share/datasets/fashion-mnist",
                     "<root>/FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] (torchvision) or "
                     "the same four files directly in <root> (the Zalando release; `apt-get install "
                     "dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist)"),
    "split_cifar10": ("CIFAR-10", "~/.avalanche/data/cifar10",
                      "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch} (python pickles, as in "
                      "cifar-10-python.tar.gz)"),
    "split_cifar100": ("CIFAR-100", "~/.avalanche/data/cifar100",
                       "<root>/cifar-100-python/{train,test} (python pickles, as in cifar-100-python.tar.gz)"),
    "split_tiny_imagenet": ("Tiny ImageNet", "~/.avalanche/data/tinyimagenet",
                            "<root>/tiny-imagenet-200/{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
                            "val/val_annotations.txt} (tiny-imagenet-200.zip unpacked)"),
    "core50": ("CORe50", "~/.avalanche/data/core50",
               "<root>/core50_128x128/s<1..11>/o<1..50>/*.png (core50_32x32/ with mini=true) and "
               "<root>/batches_filelists/<NC_inc|NI_inc>[_cat]/run<0..9>/{train_batch_<XX>_filelist.txt,"
               "test_filelist.txt} (core50_128x128.zip and batches_filelists.zip unpacked)"),
}
SPLIT_BENCHMARKS = ("split_mnist", "split_fmnist", "split_cifar10", "split_cifar100", "split_tiny_imagenet")
CORE50_SCENARIOS = {"nc": "NC_inc", "ni": "NI_inc"}
EVAL_SPLITS = ("test", "val")


def missing(name: str, folder: str, detail: str = "") -> DataError:
    """The one error for absent data: the folder, the expected layout, and that nothing downloads."""
    what, _, layout = LAYOUTS[name]
    return DataError(
        f"{folder}: {what} not found{' (' + detail + ')' if detail else ''}. Expected layout: {layout}. "
        f"Nothing is downloaded at run time: put the files there or point benchmark.root at them."
    )


def default_root(name: str) -> str:
    return LAYOUTS[name][1]


# ----------------------------------------------------------------------------- readers
def _read_idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
            raise ValueError("bad magic number (expected 0x0000080N: unsigned bytes)")
        ndim = data[3]
        dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
        body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(dims)):
            raise ValueError(f"header says {dims} but the file holds {body.size} values")
        return body.reshape(dims)
    except (OSError, EOFError, ValueError) as e:
        raise DataError(f"{path}: not a valid IDX file ({type(e).__name__}: {e})") from None


def find_idx_folder(name: str, root: str, tv_folder: str) -> str:
    """The folder holding the four IDX files (plain or .gz): torchvision's layout first, then flat."""
    for folder in (os.path.join(root, tv_folder, "raw"), root):
        if all(os.path.isfile(os.path.join(folder, f)) or os.path.isfile(os.path.join(folder, f + ".gz"))
               for f in IDX_FILES):
            return folder
    present = [f for f in IDX_FILES for folder in (os.path.join(root, tv_folder, "raw"), root)
               if os.path.isfile(os.path.join(folder, f)) or os.path.isfile(os.path.join(folder, f + ".gz"))]
    detail = f"only {sorted(set(present))} present" if present else ""
    raise missing(name, root, detail)


def read_idx_split(name: str, root: str, tv_folder: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """MNIST-format IDX -> (N, 28, 28, 1) uint8 images and int64 labels."""
    folder = find_idx_folder(name, root, tv_folder)
    prefix = "train" if train else "t10k"
    paths = []
    for kind, d in (("images", 3), ("labels", 1)):
        p = os.path.join(folder, f"{prefix}-{kind}-idx{d}-ubyte")
        paths.append(p if os.path.isfile(p) else p + ".gz")
    images, labels = _read_idx(paths[0]), _read_idx(paths[1]).astype(np.int64)
    if images.ndim != 3:
        raise DataError(f"{paths[0]}: expected N x H x W images, got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{paths[1]}: {labels.shape[0]} labels for {len(images)} images in {paths[0]}")
    return images[..., None], labels


def read_cifar(name: str, root: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10/100 python pickles -> (N, 32, 32, 3) uint8 images and int64 labels."""
    if name == "split_cifar10":
        folder, files, key = "cifar-10-batches-py", (
            [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]), "labels"
    else:
        folder, files, key = "cifar-100-python", ["train" if train else "test"], "fine_labels"
    folder = os.path.join(root, folder)
    if not os.path.isdir(folder):
        raise missing(name, root, f"no {folder}")
    images, labels = [], []
    for fname in files:
        path = os.path.join(folder, fname)
        if not os.path.isfile(path):
            raise missing(name, root, f"no {path}")
        what = f"{LAYOUTS[name][0]} python pickle with 'data' and '{key}'"
        entry = read_pickled_dict(path, ("data", key), what)
        try:
            data = np.asarray(entry["data"], dtype=np.uint8)
            y = np.asarray(entry[key], dtype=np.int64)
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}: not a {what} ({type(e).__name__}: {e})") from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(y):
            raise DataError(f"{path}: 'data' has shape {data.shape} for {len(y)} labels; expected N x 3072 uint8")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(y)
    return np.concatenate(images), np.concatenate(labels)


def list_tiny_imagenet(name: str, root: str, train: bool) -> tuple[str, list[str], list[int], list[str]]:
    """Tiny ImageNet -> (folder, relative paths, labels = index in wnids.txt, wnids)."""
    base = os.path.join(root, "tiny-imagenet-200")
    wnids_path = os.path.join(base, "wnids.txt")
    if not os.path.isfile(wnids_path):
        raise missing(name, root, f"no {wnids_path}")
    with open(wnids_path, encoding="utf-8") as f:
        wnids = list(dict.fromkeys(line.strip() for line in f if line.strip()))
    index = {w: i for i, w in enumerate(wnids)}
    relpaths, labels = [], []
    if train:
        for i, w in enumerate(wnids):
            folder = os.path.join(base, "train", w, "images")
            if not os.path.isdir(folder):
                raise missing(name, root, f"no {folder}")
            names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
            relpaths += [f"train/{w}/images/{n}" for n in names]
            labels += [i] * len(names)
    else:
        ann = os.path.join(base, "val", "val_annotations.txt")
        if not os.path.isfile(ann):
            raise missing(name, root, f"no {ann}")
        with open(ann, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                parts = line.rstrip("\n").split("\t")
                if len(parts) < 2 or parts[1] not in index:
                    raise DataError(f"{ann}:{lineno}: malformed line {line.strip()!r}; expected "
                                    "'<file>\\t<wnid listed in wnids.txt>\\t...'")
                relpaths.append(f"val/images/{parts[0]}")
                labels.append(index[parts[1]])
        # Avalanche lists the validation images class by class
        order = sorted(range(len(labels)), key=lambda k: labels[k])
        relpaths, labels = [relpaths[k] for k in order], [labels[k] for k in order]
    return base, relpaths, labels, wnids


# ----------------------------------------------------------------------------- class split
CLASS_ORDER_RULES = ("avalanche", "pilot")


def class_order(classes: Iterable[int], class_order_seed: Optional[int], fixed_class_order=None,
                shuffle: bool = True, rule: str = "avalanche") -> list[int]:
    """The order the classes are split into tasks in: ``fixed_class_order``; else, with ``shuffle``, the
    sorted classes permuted with ``class_order_seed`` by ``rule``; else the sorted classes.

    ``rule="avalanche"``: Avalanche's ``nc_benchmark`` (``torch.randperm`` after ``manual_seed(seed)``).
    ``rule="pilot"``: LAMDA-PILOT's ``DataManager`` (``np.random.seed(seed); np.random.permutation(n)``,
    its default seed 1993), drawn from a private ``np.random.RandomState(seed)`` (the same numbers, the
    global numpy state untouched); the permutation indexes the sorted classes, as PILOT's ImageFolder labels.
    """
    check_choice(rule, CLASS_ORDER_RULES, "class_order_rule")
    classes = sorted(int(c) for c in classes)
    if fixed_class_order is not None:
        order = [int(c) for c in fixed_class_order]
        if len(set(order)) != len(order) or not set(order) <= set(classes):
            raise DataError(f"fixed_class_order={order} must list distinct classes out of {classes}")
        return order
    if not shuffle:
        return classes
    if class_order_seed is None:
        raise DataError("class_order_seed is null: give a seed (or fixed_class_order, or shuffle=false) so "
                        "the class order is reproducible")
    if rule == "pilot":
        perm = np.random.RandomState(int(class_order_seed)).permutation(len(classes)).tolist()
    else:
        g = torch.Generator().manual_seed(int(class_order_seed))
        perm = torch.randperm(len(classes), generator=g).tolist()
    return [classes[i] for i in perm]


def split_classes(order: Sequence[int], n_experiences: int,
                  first_task_classes: Optional[int] = None) -> list[list[int]]:
    """The classes of every task, in order: the class-incremental "B<base> Inc<inc>" increments.

    ``first_task_classes=None``: ``n_experiences`` equal tasks (B0 Inc ``n/n_experiences``), which must
    divide the classes. ``first_task_classes=B``: ``n_experiences`` tasks in all, the first with ``B``
    classes, the other ``n_experiences - 1`` sharing the remaining classes equally (B50 Inc10 on
    CIFAR-100 is ``first_task_classes=50, n_experiences=6``); a remainder that does not divide evenly is
    refused (LAMDA-PILOT would append a smaller last task).
    """
    n = len(order)
    if first_task_classes is None:
        if n_experiences < 1 or n % n_experiences:
            raise DataError(f"n_experiences={n_experiences} does not divide the {n} classes evenly")
        sizes = [n // n_experiences] * n_experiences
    else:
        if isinstance(first_task_classes, bool) or not isinstance(first_task_classes, (int, np.integer)) \
                or not 1 <= first_task_classes <= n:
            raise DataError(f"first_task_classes={first_task_classes!r} must be an integer in [1, {n}] (the "
                            f"first task's classes, of {n}); null splits the classes equally")
        base = int(first_task_classes)
        rest, later = n - base, n_experiences - 1
        if n_experiences < 1 or (later == 0 and rest) or (later > 0 and (rest == 0 or rest % later)):
            raise DataError(f"first_task_classes={base}, n_experiences={n_experiences}: the {rest} classes after "
                            f"the first task do not split evenly into {max(later, 0)} further task(s) "
                            f"(n_experiences counts every task, the first included; B{base} Inc<k> on {n} "
                            f"classes needs n_experiences = 1 + {rest}/k)")
        sizes = [base] + ([rest // later] * later if later else [])
    starts = np.cumsum([0] + sizes).tolist()
    return [list(order[a:b]) for a, b in zip(starts[:-1], starts[1:])]


def class_offsets(tasks_classes: Sequence[Sequence[int]]) -> list[int]:
    """How many classes all earlier tasks hold, per task (a class-incremental head's first index)."""
    return np.cumsum([0] + [len(c) for c in tasks_classes[:-1]]).tolist() if tasks_classes else []


def _select(labels: np.ndarray, task_classes: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the task's samples (in dataset order) and their labels 0..C-1 within the task."""
    remap = np.full(int(max(labels.max(), max(task_classes))) + 1, -1, np.int64)
    remap[list(task_classes)] = np.arange(len(task_classes))
    idx = np.flatnonzero(remap[labels] >= 0)
    return idx, remap[labels[idx]]


def _first_per_class(idx: np.ndarray, y: np.ndarray, k: Optional[int]) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` samples of every class, in dataset order (all with ``k=None``)."""
    if k is None:
        return idx, y
    if int(k) < 1:
        raise DataError(f"per-class cap {k} must be a positive integer or null")
    rank = np.zeros(len(y), np.int64)
    for c in np.unique(y):
        where = np.flatnonzero(y == c)
        rank[where] = np.arange(len(where))
    keep = rank < int(k)
    return idx[keep], y[keep]


def _hold_out_last_per_class(idx: np.ndarray, y: np.ndarray, k: Optional[int], where: str
                             ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Split a task's training samples into (the rest, the last ``k`` of every class in dataset order): the
    held-out validation split, never trained on. ``k=None`` holds out nothing."""
    if k is None:
        return (idx, y), (idx[:0], y[:0])
    if int(k) < 1:
        raise DataError(f"val_per_class={k} must be a positive integer or null")
    from_end = np.zeros(len(y), np.int64)
    for c in np.unique(y):
        at = np.flatnonzero(y == c)
        if len(at) <= int(k):
            raise DataError(f"{where}: class {c} has {len(at)} training images; val_per_class={k} would leave "
                            "none to train on")
        from_end[at] = np.arange(len(at))[::-1]
    held = from_end < int(k)
    return (idx[~held], y[~held]), (idx[held], y[held])


def _transform(image_size: int, mean, std) -> T.Compose:
    return T.Compose([square_resize(int(image_size))] + to_tensor_normalize(mean, std))


# ----------------------------------------------------------------------------- loaders
def load_split(
    name: str,
    root: Optional[str] = None,
    n_experiences: int = 5,
    class_order_seed: Optional[int] = 0,
    fixed_class_order: Optional[Sequence[int]] = None,
    shuffle: bool = True,
    image_size: int = 224,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    cache_decoded: bool = False,
    verify_images: bool = False,
    train_per_class: Optional[int] = None,
    test_per_class: Optional[int] = None,
    first_task_classes: Optional[int] = None,
    class_order_rule: str = "avalanche",
    val_per_class: Optional[int] = None,
    eval_split: str = "test",
) -> list[TaskData]:
    """SplitMNIST / SplitFMNIST / SplitCIFAR10 / SplitCIFAR100 / SplitTinyImageNet as task-incremental tasks.

    Args:
        name: one of ``SPLIT_BENCHMARKS``.
        root: the dataset folder (module docstring); ``None`` = Avalanche's default location.
        n_experiences: tasks; must divide the number of classes (with ``first_task_classes``: all tasks,
            the first included, and must divide the classes after the first task).
        class_order_seed, fixed_class_order, shuffle: the class order, as in Avalanche's ``nc_benchmark``.
        first_task_classes: the class-incremental "B<base> Inc<inc>" split (:func:`split_classes`): the
            first task's classes; ``None`` (default) splits all classes equally (B0).
        class_order_rule: how ``class_order_seed`` shuffles the classes (:func:`class_order`):
            ``avalanche`` (default; Avalanche's ``nc_benchmark``) or ``pilot`` (LAMDA-PILOT's
            ``np.random.seed(seed); np.random.permutation(n)``; its runs use seed 1993).
        image_size, mean, std: the backbone's input size and normalisation.
        cache_decoded, verify_images: Tiny ImageNet only: decode every JPEG once into RAM (at its
            native 64 px) / check every file decodes, at load time.
        train_per_class, test_per_class: keep only the first k images of every class (file order),
            for quick runs on a CPU; ``None`` keeps all. Recorded in each task's ``info``.
        val_per_class: hold out the last ``k`` training images of every class (file order) as a validation
            split, never trained on (``train_per_class`` then caps the remaining ones); ``None``: none.
        eval_split: ``test`` (default) or ``val``: evaluate on the held-out validation images instead of the
            test split (hyperparameter selection; needs ``val_per_class``). Recorded as ``info['eval_split']``
            (Tiny ImageNet's test split is its official ``val`` folder, recorded as ``val`` as on VDD).

    Every task's ``info`` holds ``classes`` (the original class ids of the task, in label order) and
    ``class_offset`` (the number of classes in all earlier tasks).
    """
    check_choice(name, SPLIT_BENCHMARKS, "benchmark")
    check_choice(class_order_rule, CLASS_ORDER_RULES, "class_order_rule")
    check_choice(eval_split, EVAL_SPLITS, "eval_split")
    if eval_split == "val" and val_per_class is None:
        raise DataError("eval_split=val evaluates on images held out of training: set val_per_class (e.g. "
                        "benchmark.val_per_class=500)")
    root = os.path.expanduser(str(root if root is not None else default_root(name)))
    if not os.path.isdir(root):
        raise missing(name, root, "the folder does not exist")
    tf = _transform(image_size, mean, std)

    # per split (train: True / False): the labels, and the images in memory or Tiny ImageNet's (folder, files)
    labels: dict[bool, np.ndarray] = {}
    images: dict[bool, np.ndarray] = {}
    files: dict[bool, tuple[str, list[str]]] = {}
    class_names: Optional[list[str]]
    if name == "split_tiny_imagenet":
        for train in (True, False):
            base, rel, file_labels, wnids = list_tiny_imagenet(name, root, train)
            if verify_images:
                verify_image_files(base, rel, base, decode=not cache_decoded)
            files[train], labels[train] = (base, rel), np.asarray(file_labels, np.int64)
        class_names = wnids
    else:
        if name in ("split_mnist", "split_fmnist"):
            tv = "MNIST" if name == "split_mnist" else "FashionMNIST"
            arrays = {train: read_idx_split(name, root, tv, train) for train in (True, False)}
        else:
            arrays = {train: read_cifar(name, root, train) for train in (True, False)}
        for train, (x, y) in arrays.items():
            images[train], labels[train] = x, y
        class_names = None

    train_labels = labels[True]
    order = class_order(np.unique(train_labels), class_order_seed, fixed_class_order, shuffle, class_order_rule)
    for train in (True, False):
        bad = np.setdiff1d(np.unique(labels[train]), np.unique(train_labels))
        if bad.size:
            raise DataError(f"{root}: the {'train' if train else 'test'} split has classes {bad.tolist()} "
                            "that the training split lacks")
    split = split_classes(order, n_experiences, first_task_classes)
    offsets = class_offsets(split)
    tasks = []
    for t, task_classes in enumerate(split):
        # which images of which split: (split, indices, labels) for training and for evaluation
        (fit_idx, fit_y), val_sel = _hold_out_last_per_class(*_select(labels[True], task_classes), val_per_class,
                                                             f"{root} task {t}")
        fit = (True, *_first_per_class(fit_idx, fit_y, train_per_class))
        evaluate = (True, *val_sel) if eval_split == "val" else (
            False, *_first_per_class(*_select(labels[False], task_classes), test_per_class))
        parts: list[ArrayDataset | ImageFileDataset] = []
        for train, idx, y in (fit, evaluate):
            if name == "split_tiny_imagenet":
                base, rel = files[train]
                parts.append(ImageFileDataset(base, [rel[i] for i in idx], y.tolist(), tf,
                                              cache_decoded=cache_decoded, source=base))
            else:
                parts.append(ArrayDataset(images[train][idx], y.tolist(), tf))
        info = {"benchmark": f"avalanche/{name}", "experience": t, "classes": task_classes,
                "class_offset": offsets[t], "image_size": int(image_size), "train_per_class": train_per_class,
                "test_per_class": test_per_class, "val_per_class": val_per_class,
                "n_train": len(parts[0]), "n_eval": len(parts[1]),
                "eval_split": "val" if eval_split == "val" or name == "split_tiny_imagenet" else "test"}
        if class_names is not None:
            info["class_names"] = [class_names[c] for c in task_classes]
        tasks.append(TaskData(name=f"{name}_exp{t}", train=parts[0], test=parts[1],
                              num_classes=len(task_classes), info=info))
    return tasks


def load_core50(
    root: Optional[str] = None,
    scenario: str = "nc",
    run: int = 0,
    object_lvl: bool = True,
    mini: bool = False,
    image_size: int = 224,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    cache_decoded: bool = False,
    verify_images: bool = False,
) -> list[TaskData]:
    """CORe50 NC (new classes: each batch's classes become one task, labels 0..C-1 in it; its test
    images are the test-session images of those classes) or NI (new instances: every batch is a task
    over all classes; every task is tested on the whole test set), from the official filelists.

    Args:
        scenario: ``nc`` or ``ni``; run: which of the 10 official batch orders (0..9).
        object_lvl: 50 objects (True) or 10 categories (False, the ``*_cat`` filelists).
        mini: the 32 px images (``core50_32x32``) instead of the 128 px ones.
    """
    name = "core50"
    check_choice(scenario, list(CORE50_SCENARIOS), "scenario")
    root = os.path.expanduser(str(root if root is not None else default_root(name)))
    img_root = os.path.join(root, "core50_32x32" if mini else "core50_128x128")
    lists = os.path.join(root, "batches_filelists",
                         CORE50_SCENARIOS[scenario] + ("" if object_lvl else "_cat"), f"run{int(run)}")
    for folder in (img_root, lists):
        if not os.path.isdir(folder):
            raise missing(name, root, f"no {folder}")
    batch_files: list[str] = []
    while os.path.isfile(p := os.path.join(lists, f"train_batch_{len(batch_files):02d}_filelist.txt")):
        batch_files.append(p)
    test_file = os.path.join(lists, "test_filelist.txt")
    if not batch_files or not os.path.isfile(test_file):
        raise missing(name, root, f"no train_batch_00_filelist.txt and test_filelist.txt in {lists}")
    test_rows = read_list_file(test_file, "CORe50 test images 's<session>/o<object>/<file>.png <label>'")
    n_all = 50 if object_lvl else 10
    tf = _transform(image_size, mean, std)
    check_label_range([lab for _, lab, _ in test_rows], n_all, [f"{test_file}:{n}" for _, _, n in test_rows])
    all_paths = []
    tasks = []
    for t, path in enumerate(batch_files):
        rows = read_list_file(path, "CORe50 training images 's<session>/o<object>/<file>.png <label>'")
        check_label_range([lab for _, lab, _ in rows], n_all, [f"{path}:{n}" for _, _, n in rows])
        task_classes = sorted({label for _, label, _ in rows}) if scenario == "nc" else list(range(n_all))
        remap = {c: i for i, c in enumerate(task_classes)}
        test_sel = [(rel, remap[label]) for rel, label, _ in test_rows if label in remap]
        train_sel = [(rel, remap[label]) for rel, label, _ in rows]
        parts = []
        for sel in (train_sel, test_sel):
            rel, y = [r for r, _ in sel], [lab for _, lab in sel]
            all_paths += rel
            parts.append(ImageFileDataset(img_root, rel, y, tf, cache_decoded=cache_decoded, source=img_root))
        info = {"benchmark": f"avalanche/core50_{scenario}", "experience": t, "run": int(run),
                "classes": task_classes, "object_lvl": bool(object_lvl), "image_size": int(image_size),
                "n_train": len(parts[0]), "n_eval": len(parts[1]), "eval_split": "test"}
        tasks.append(TaskData(name=f"core50_{scenario}_exp{t}", train=parts[0], test=parts[1],
                              num_classes=len(task_classes), info=info))
    if verify_images:
        verify_image_files(img_root, sorted(set(all_paths)), img_root, decode=not cache_decoded)
    return tasks
