"""VTAB-1k loader (single-task fine-tuning: a stream of one task).

On-disk layout: the folder release used by NOAH, FacT and most PEFT papers (exported from TFDS)::

    root/<task>/train800.txt          800 training images
    root/<task>/val200.txt            200 validation images
    root/<task>/train800val200.txt    the union, for the final run
    root/<task>/test.txt              the full test split
    root/<task>/<relative/path>       images

Each split file has one ``relative/path label`` a line, the path relative to ``root/<task>/`` and
the label already 0-based. Images are resized to ``image_size`` x ``image_size`` (aspect not kept)
with no augmentation, as in the official VTAB-1k protocol and the GIFT code (bilinear resize).
"""
from __future__ import annotations

import os
from typing import Sequence

from torchvision import transforms as T

from gift_cl.data.base import TaskData
from gift_cl.data.files import (
    ImageFileDataset,
    check_choice,
    check_label_range,
    check_within_root,
    read_list_file,
    require_dir,
    square_resize,
    to_tensor_normalize,
    verify_image_files,
)

# Number of classes of every VTAB-1k task, by its folder name.
VTAB_NUM_CLASSES = {
    # natural
    "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37,
    "svhn": 10, "sun397": 397,
    # specialized
    "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
    # structured
    "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
    "smallnorb_azi": 18, "smallnorb_ele": 9,
}
VTAB_TASKS = tuple(VTAB_NUM_CLASSES)
VTAB_GROUPS = {
    "natural": VTAB_TASKS[:7],
    "specialized": VTAB_TASKS[7:11],
    "structured": VTAB_TASKS[11:],
}
# mode -> (train split file, eval split file)
MODES = {"tune": ("train800.txt", "val200.txt"), "final": ("train800val200.txt", "test.txt")}


def load_vtab(
    root: str,
    task: str,
    mode: str = "tune",
    image_size: int = 224,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
    cache_decoded: bool = False,
    verify_images: bool = True,
) -> list[TaskData]:
    """Load one VTAB-1k task as a one-task stream.

    Args:
        root: the VTAB-1k folder holding one sub-folder per task.
        task: the task's folder name (``VTAB_TASKS``).
        mode: ``tune`` (train800 -> val200) or ``final`` (train800val200 -> test).
        image_size, mean, std: the backbone's input size and normalisation.
        cache_decoded: decode and resize every image once into memory (uint8 at ``image_size``:
            150 kB an image at 224 px, so the large test splits need GBs).
        verify_images: check every image decodes, at load time (see ``verify_image_files``).
    """
    check_choice(task, VTAB_TASKS, "task")
    check_choice(mode, MODES, "mode")
    task_dir = require_dir(os.path.join(root, task),
                           f"the VTAB-1k layout <root>/{task}/{{train800,val200,train800val200,test}}.txt "
                           "plus the images they list")
    num_classes = VTAB_NUM_CLASSES[task]
    transform = T.Compose(to_tensor_normalize(mean, std))
    train_file, eval_file = MODES[mode]

    def dataset(filename: str) -> ImageFileDataset:
        path = os.path.join(task_dir, filename)
        rows = read_list_file(path, f"'relative/path label' lines of VTAB-1k {task}")
        relpaths, labels, linenos = zip(*rows)
        check_label_range(labels, num_classes, [f"{path}:{n}" for n in linenos])
        check_within_root(task_dir, relpaths, [f"{path}:{n}" for n in linenos])
        if verify_images:
            verify_image_files(task_dir, relpaths, path, decode=not cache_decoded)
        return ImageFileDataset(task_dir, relpaths, labels, transform, pre_transform=square_resize(image_size),
                                cache_decoded=cache_decoded, source=path)

    train, evaluate = dataset(train_file), dataset(eval_file)
    info = {"benchmark": "vtab", "task": task, "mode": mode, "train_split": train_file,
            "eval_split": eval_file, "n_train": len(train), "n_eval": len(evaluate)}
    return [TaskData(name=task, train=train, test=evaluate, num_classes=num_classes, info=info)]
