"""The one data contract every benchmark loader fulfils.

A loader returns a list of :class:`TaskData`, one per task, in stream order. Everything
downstream (Avalanche stream building, run.py, metrics) only sees this contract, so the
procedural decathlon, VDD, VTAB-1k, FGVC and 5-datasets share every code path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """Bad benchmark input: names the file and what was expected."""


def require_unique(names: Sequence[str], what: str) -> None:
    """Refuse a list that names something twice. Task names key the results, the accuracy matrix,
    the saved predictions and (independent protocol) each task's weights: a task listed twice would
    overwrite the first one's and leave inconsistent results."""
    names = [str(n) for n in names]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{what}: duplicate {', '.join(map(repr, twice))} in {names}; every task of a stream needs "
                        "its own name: list each once")


@dataclass
class TaskData:
    """One task of a stream: a train and a test split with labels 0..num_classes-1."""

    name: str
    train: Dataset
    test: Dataset
    num_classes: int
    # free-form facts a loader wants recorded in results.json (split used, sizes, ...)
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, (int, np.integer)) \
                or self.num_classes < 2:
            raise DataError(f"task {self.name!r}: num_classes={self.num_classes!r}; a classification task needs "
                            "at least 2 classes (with one, every prediction is right and the task measures nothing)")
        for split_name, split in (("train", self.train), ("test", self.test)):
            targets = getattr(split, "targets", None)
            if targets is None:
                raise DataError(f"task {self.name!r}: {split_name} dataset must expose .targets")
            if len(split) == 0:
                raise DataError(f"task {self.name!r}: the {split_name} split is empty")
            t = np.asarray(targets)
            if t.min() < 0 or t.max() >= self.num_classes:
                raise DataError(
                    f"task {self.name!r}: {split_name} label out of range "
                    f"[{int(t.min())}, {int(t.max())}], expected 0..{self.num_classes - 1}"
                )
            if split_name == "train" and t.min() == t.max():
                raise DataError(f"task {self.name!r}: every train label is {int(t.min())} although the task has "
                                f"{self.num_classes} classes; a classifier cannot be trained on one class")


class ArrayDataset(Dataset):
    """In-memory uint8 images (N, H, W, C) with integer labels; `transform` maps a PIL image."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], transform: Optional[Callable] = None):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise DataError(f"ArrayDataset expects uint8 images of shape (N, H, W, C), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise DataError(f"ArrayDataset: {len(images)} images but {len(labels)} labels")
        self.images = images
        self.targets = [int(y) for y in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: int):
        from PIL import Image

        arr = self.images[idx]
        img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB")
        x = self.transform(img) if self.transform is not None else torch.from_numpy(arr).permute(2, 0, 1)
        return x, self.targets[idx]
