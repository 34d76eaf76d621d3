"""ImageNet-R (Hendrycks et al. 2021) as a class-incremental stream of tasks, read from local files.

ImageNet-R holds 30,000 renditions (art, cartoons, sketches, toys, ...) of 200 ImageNet classes. It is
the harder benchmark of the pretrained-ViT continual-learning literature (L2P, DualPrompt, CODA-Prompt,
LAMDA-PILOT), usually as 10 tasks of 20 classes. Nothing is downloaded: the files are read from ``root``.

On-disk layouts (``split``)::

    flat     root/<wnid>/<name>.jpg               the official imagenet-r.tar unpacked (README.txt is ignored);
                                                  split=random makes a seeded per-class train/test split
    folders  root/train/<wnid>/<name>.jpg         a fixed split, e.g. LAMDA-PILOT's (``ImageFolder`` on
             root/test/<wnid>/<name>.jpg          ``imagenet-r/train`` and ``imagenet-r/test``)

``split=auto`` (default) reads ``root/train`` and ``root/test`` when both exist, else makes the random split
of the flat layout. Classes are the sorted class-folder names (wnids), labelled 0..199 in that order (as
torchvision's ``ImageFolder``); the class order and the increments follow
:func:`gift_cl.data.avalanche_classic.class_order` and :func:`~gift_cl.data.avalanche_classic.split_classes`,
the same rules as ``benchmark=avalanche/*``. Inside a task labels are 0..C-1; ``info`` records the task's
original ``classes``, their wnids (``class_names``) and ``class_offset`` (the classes of all earlier tasks).
"""
from __future__ import annotations

import os
import zlib
from typing import Optional, Sequence

import numpy as np
from torchvision import transforms as T

from gift_cl.data.avalanche_classic import CLASS_ORDER_RULES, class_offsets, class_order, split_classes
from gift_cl.data.base import DataError, TaskData
from gift_cl.data.files import (
    ImageFileDataset,
    check_choice,
    square_resize,
    to_tensor_normalize,
    verify_image_files,
)

SPLITS = ("auto", "random", "folders")
SPLIT_FOLDERS = ("train", "test")
# what torchvision's ImageFolder reads (ImageNet-R itself holds only .jpg); other files are ignored
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
LAYOUT = ("<root>/<wnid>/*.jpg (imagenet-r.tar unpacked: 200 class folders and README.txt; split=random "
          "or auto) or <root>/{train,test}/<wnid>/*.jpg (a fixed split, as LAMDA-PILOT reads it; split=folders "
          "or auto)")


def missing(root: str, detail: str = "") -> DataError:
    """The one error for absent data: the folder, the expected layout, and that nothing downloads."""
    return DataError(
        f"{root}: ImageNet-R not found{' (' + detail + ')' if detail else ''}. Expected layout: {LAYOUT}. "
        f"Nothing is downloaded at run time: put the files there or point benchmark.root at them."
    )


def _class_folders(folder: str, exclude: Sequence[str] = ()) -> list[str]:
    """The class folders (sorted names) directly under ``folder``; hidden ones and ``exclude`` skipped."""
    return sorted(n for n in os.listdir(folder)
                  if not n.startswith(".") and n not in exclude and os.path.isdir(os.path.join(folder, n)))


def _images(folder: str) -> list[str]:
    """The image files (sorted names) directly in ``folder``."""
    return sorted(n for n in os.listdir(folder) if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS)
                  and os.path.isfile(os.path.join(folder, n)))


def _list_layout(root: str, sub: str, exclude: Sequence[str] = ()) -> dict[str, list[str]]:
    """``{wnid: [relative image path, ...]}`` of the class folders of ``root/sub``; refuses an empty class."""
    base = os.path.join(root, sub) if sub else root
    wnids = _class_folders(base, exclude)
    if not wnids:
        hint = "; it holds train/ and test/: use split=folders or auto" if exclude and all(
            os.path.isdir(os.path.join(base, e)) for e in exclude) else ""
        raise missing(root, f"no class folders in {base}{hint}")
    out = {}
    for w in wnids:
        names = _images(os.path.join(base, w))
        if not names:
            raise DataError(f"{os.path.join(base, w)}: class folder holds no images (expected "
                            f"{', '.join(IMAGE_EXTENSIONS)} files); remove the folder or restore its images")
        out[w] = [os.path.join(sub, w, n) if sub else os.path.join(w, n) for n in names]
    return out


def random_split(files: dict[str, list[str]], test_fraction: float, split_seed: int,
                 root: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """A seeded, stratified train/test split: in every class (its files sorted by name) a permutation drawn
    from ``numpy.random.default_rng([split_seed, crc32(wnid)])`` puts ``round(test_fraction * n)`` images
    (at least 1, at most n - 1) into test, the rest into train, each kept in file-name order. Seeding each
    class by its wnid makes a class's split independent of which other classes are present."""
    train, test = {}, {}
    for w, rel in files.items():
        n = len(rel)
        if n < 2:
            raise DataError(f"{os.path.join(root, w)}: the class holds {n} image; the random train/test split "
                            "needs at least 2 images in every class (or use split=folders with a fixed split)")
        n_test = min(n - 1, max(1, int(np.floor(n * test_fraction + 0.5))))
        perm = np.random.default_rng([int(split_seed), zlib.crc32(w.encode("utf-8"))]).permutation(n)
        is_test = np.zeros(n, bool)
        is_test[perm[:n_test]] = True
        train[w] = [r for r, t in zip(rel, is_test) if not t]
        test[w] = [r for r, t in zip(rel, is_test) if t]
    return train, test


def _resolve_split(root: str, split: str) -> str:
    has = {s: os.path.isdir(os.path.join(root, s)) for s in SPLIT_FOLDERS}
    if split == "auto":
        if all(has.values()):
            return "folders"
        if any(has.values()):
            present = "train" if has["train"] else "test"
            absent = "test" if present == "train" else "train"
            raise missing(root, f"{os.path.join(root, present)} exists but {os.path.join(root, absent)} does not; "
                                "a fixed split needs both (split=random ignores them and splits <root>/<wnid>/)")
        return "random"
    if split == "folders" and not all(has.values()):
        raise missing(root, f"split=folders needs {os.path.join(root, 'train')} and {os.path.join(root, 'test')}")
    return split


def load_imagenet_r(
    root: str,
    n_experiences: int = 10,
    first_task_classes: Optional[int] = None,
    class_order_seed: Optional[int] = 0,
    fixed_class_order: Optional[Sequence[int]] = None,
    shuffle: bool = True,
    class_order_rule: str = "avalanche",
    split: str = "auto",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    image_size: int = 224,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    train_per_class: Optional[int] = None,
    test_per_class: Optional[int] = None,
    cache_decoded: bool = False,
    verify_images: bool = False,
) -> list[TaskData]:
    """ImageNet-R as ``n_experiences`` tasks (the module docstring gives the layouts).

    Args:
        root: the ``imagenet-r`` folder.
        n_experiences, first_task_classes: the increments: ``n_experiences`` tasks in all; with
            ``first_task_classes=B`` the first has B classes and the rest share the others equally
            ("B<B> Inc<k>"), else all are equal (the usual 10 x 20, "B0 Inc20").
        class_order_seed, fixed_class_order, shuffle, class_order_rule: the class order. Classes are the
            indices of the sorted wnids (``fixed_class_order`` lists those indices); ``class_order_rule``
            is ``avalanche`` (``torch.randperm`` after ``manual_seed(seed)``) or ``pilot`` (LAMDA-PILOT's
            ``np.random.seed(seed); np.random.permutation(200)``; its runs use seed 1993).
        split: ``auto`` (``root/train`` + ``root/test`` if both exist, else ``random``), ``random`` (a
            seeded per-class split of ``root/<wnid>/*``; class folders named ``train``/``test`` are not
            classes), or ``folders`` (require ``root/train/<wnid>`` and ``root/test/<wnid>``, the same classes).
        test_fraction, split_seed: the random split (:func:`random_split`): in every class
            ``round(test_fraction * n)`` images (at least 1, at most n - 1) go to test, drawn by a
            permutation from ``numpy.random.default_rng([split_seed, crc32(wnid)])``. L2P and DualPrompt
            (JH-LEE-KR's PyTorch ports) split 80/20 with an unstratified ``torch.utils.data.random_split`` of all
            30,000 images under the run's global seed and move the files into ``train/`` and ``test/``
            (which LAMDA-PILOT then reads); CODA-Prompt ships fixed 80/20 split lists. None of these is
            reproduced image for image: to compare with one of them, put its split in ``train/`` and
            ``test/`` and use ``split=folders``. The split used is recorded in every task's ``info``.
        image_size, mean, std: the backbone's input size (square resize) and normalisation.
        train_per_class, test_per_class: keep only the first k images (file-name order) of every class of
            the split, for quick runs on a CPU; ``None`` keeps all.
        cache_decoded: decode and resize every image once, at load time, into RAM (``image_size``² x 3
            bytes an image: 4.5 GB for all of ImageNet-R at 224 px).
        verify_images: check that every image decodes, at load time.

    Raises:
        DataError: the folder is absent or holds no class folders, a class has no images or too few for the
            random split, the train and test folders hold different classes, a bad option.
    """
    check_choice(split, SPLITS, "split")
    check_choice(class_order_rule, CLASS_ORDER_RULES, "class_order_rule")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise DataError(f"test_fraction={test_fraction!r} must be a number in (0, 1) (0.2: the usual 80/20 split)")
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or split_seed < 0:
        raise DataError(f"split_seed={split_seed!r} must be an integer >= 0")
    for key, cap in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, np.integer)) or cap < 1):
            raise DataError(f"{key}={cap!r} must be a positive integer or null")
    root = os.path.expanduser(str(root))
    if not os.path.isdir(root):
        raise missing(root, "the folder does not exist")

    used = _resolve_split(root, split)
    if used == "folders":
        train_files, test_files = _list_layout(root, "train"), _list_layout(root, "test")
        if set(train_files) != set(test_files):
            only_train, only_test = sorted(set(train_files) - set(test_files)), sorted(set(test_files) - set(train_files))
            raise DataError(f"{root}: train/ and test/ hold different classes: only in train/ {only_train[:10]}"
                            f"{' ...' if len(only_train) > 10 else ''}, only in test/ {only_test[:10]}"
                            f"{' ...' if len(only_test) > 10 else ''}; a fixed split needs the same class folders in both")
    else:
        train_files, test_files = random_split(_list_layout(root, "", SPLIT_FOLDERS), test_fraction, split_seed, root)
    wnids = sorted(train_files)

    order = class_order(range(len(wnids)), class_order_seed, fixed_class_order, shuffle, class_order_rule)
    tasks_classes = split_classes(order, n_experiences, first_task_classes)
    offsets = class_offsets(tasks_classes)
    pre, tf = square_resize(int(image_size)), T.Compose(to_tensor_normalize(mean, std))
    split_info = {"split": used, "test_fraction": float(test_fraction) if used == "random" else None,
                  "split_seed": int(split_seed) if used == "random" else None}
    selected = []  # per task: ((train paths, labels), (test paths, labels)), labels 0..C-1 in the task
    for task_classes in tasks_classes:
        pair = []
        for files, cap in ((train_files, train_per_class), (test_files, test_per_class)):
            rel: list[str] = []
            y: list[int] = []
            for label, c in enumerate(task_classes):
                chosen = files[wnids[c]][:cap] if cap is not None else files[wnids[c]]
                rel += chosen
                y += [label] * len(chosen)
            pair.append((rel, y))
        selected.append(pair)
    if verify_images:  # before anything is decoded into the cache: the bad file's name, not a worker's traceback
        verify_image_files(root, [r for pair in selected for rel, _ in pair for r in rel], root,
                           decode=not cache_decoded)
    tasks = []
    for t, (task_classes, pair) in enumerate(zip(tasks_classes, selected)):
        parts = [ImageFileDataset(root, rel, y, tf, pre_transform=pre, cache_decoded=cache_decoded, source=root)
                 for rel, y in pair]
        info = {"benchmark": "imagenet_r", "experience": t, "classes": list(task_classes),
                "class_names": [wnids[c] for c in task_classes], "class_offset": offsets[t],
                "class_order_rule": class_order_rule, **split_info, "image_size": int(image_size),
                "train_per_class": train_per_class, "test_per_class": test_per_class,
                "n_train": len(parts[0]), "n_eval": len(parts[1]), "eval_split": "test"}
        tasks.append(TaskData(name=f"imagenet_r_exp{t}", train=parts[0], test=parts[1],
                              num_classes=len(task_classes), info=info))
    return tasks
