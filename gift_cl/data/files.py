"""Shared pieces of the image-file benchmarks (VDD, VTAB-1k, FGVC, notMNIST).

Every real benchmark here is "a split file that lists relative image paths and labels" plus a
folder of images. This module holds what they share:

* checks that stop bad input with ONE :class:`DataError` naming the file and what was expected,
  raised at load time in the main process (missing root or split file, malformed line or JSON,
  unreadable image), so a user never debugs a traceback from inside a DataLoader worker;
* :class:`ImageFileDataset`, a dataset over image files with ``.targets``, optionally decoded once
  into memory (``cache_decoded``) so that PNG/JPEG decoding does not bottleneck a 2-core machine;
* the torchvision transform pieces the loaders compose.
"""
from __future__ import annotations

import json
import os
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision import transforms as T

from gift_cl.data.base import DataError

# What PIL raises for missing, unidentifiable, truncated or otherwise undecodable files.
_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


# ----------------------------------------------------------------------------- file checks
def require_dir(path: str, what: str) -> str:
    """Return ``path`` if it is a directory, else raise a DataError describing the expected layout."""
    if not os.path.isdir(path):
        raise DataError(f"{path}: directory not found; expected {what}")
    return path


def require_file(path: str, what: str) -> str:
    """Return ``path`` if it is a file, else raise a DataError saying what the file should be."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; expected {what}")
    return path


def read_json(path: str, what: str):
    """Parse a JSON file; a syntax error becomes a DataError with the file, line and column."""
    require_file(path, what)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg}); expected {what}") from None


def read_list_file(path: str, what: str) -> list[tuple[str, int, int]]:
    """Read a ``relative/path label`` split file into ``(relpath, label, line_number)`` triples.

    The label is the last whitespace-separated field, so paths may contain spaces. Blank lines are
    skipped; anything else that is not ``<path> <integer>`` is an error naming file and line.
    """
    require_file(path, what)
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not _is_int(parts[1]):
                raise DataError(f"{path}:{lineno}: malformed line {line!r}; expected 'relative/path label'")
            rows.append((parts[0], int(parts[1]), lineno))
    if not rows:
        raise DataError(f"{path}: the split file lists no images; expected {what}")
    return rows


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


def check_label_range(labels: Iterable[int], num_classes: int, where: Sequence[str]) -> None:
    """Raise a DataError naming the first entry whose label is outside 0..num_classes-1."""
    for label, loc in zip(labels, where):
        if not 0 <= label < num_classes:
            raise DataError(f"{loc}: label {label} out of range, expected 0..{num_classes - 1}")


def check_within_root(root: str, relpaths: Sequence[str], where: Sequence[str]) -> None:
    """Every listed image path must be relative and stay inside ``root``: a split file that lists
    ``../../x.png`` or ``/etc/x.png`` would otherwise read files from anywhere on the machine."""
    real_root = os.path.realpath(root)
    for rel, loc in zip(relpaths, where):
        if os.path.isabs(rel):
            raise DataError(f"{loc}: image path {rel!r} is absolute; split files must list paths relative to {root}")
        real = os.path.realpath(os.path.join(real_root, rel))
        if os.path.commonpath([real_root, real]) != real_root:
            raise DataError(f"{loc}: image path {rel!r} resolves outside the benchmark root {root}")


def verify_image_files(root: str, relpaths: Sequence[str], source: str) -> None:
    """Check every listed image exists and has a readable header, in the main process.

    ``Image.verify()`` parses the header without decoding pixels (for PNG it also checks the
    chunk CRCs), so this is cheap: see ``analysis/bench_loaders.py`` for the measured cost.
    Truncated JPEG *pixel data* is only found by a full decode; that still raises a DataError
    naming the file, from ``ImageFileDataset.__getitem__`` or at once with ``cache_decoded``.
    """
    check_within_root(root, relpaths, [f"{source}: entry {i + 1}" for i in range(len(relpaths))])
    for rel in relpaths:
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise DataError(f"{path}: image not found (listed in {source})")
        try:
            with Image.open(path) as im:
                im.verify()
        except _IMAGE_ERRORS as e:
            raise DataError(f"{path}: not a readable image ({e}) (listed in {source})") from None


def load_rgb(path: str, source: str = "") -> Image.Image:
    """Decode one image as RGB; any decode failure becomes a DataError naming the file."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except _IMAGE_ERRORS as e:
        where = f" (listed in {source})" if source else ""
        raise DataError(f"{path}: cannot decode image ({e}){where}") from None


# ----------------------------------------------------------------------------- dataset
class ImageFileDataset(Dataset):
    """Images read from ``root/relpath`` with integer labels; exposes ``.targets``.

    Args:
        root: folder the relative paths are relative to.
        relpaths: image paths relative to ``root``.
        labels: one integer label per image.
        transform: maps a PIL RGB image to the model input (applied on every access).
        pre_transform: deterministic PIL -> PIL step applied before ``transform`` (e.g. a resize).
            With ``cache_decoded`` its output is what gets cached, so it runs once, not every epoch.
        cache_decoded: decode (and ``pre_transform``) every image once, now, in the main process,
            and keep uint8 arrays in memory. Worth it for small images (VDD's 72 px) and small
            splits; also a full decode check of every file. Same-shaped images are stacked into
            one array so forked DataLoader workers share it copy-on-write.
        source: the split file the paths came from, named in error messages.
    """

    def __init__(
        self,
        root: str,
        relpaths: Sequence[str],
        labels: Sequence[int],
        transform: Optional[Callable] = None,
        pre_transform: Optional[Callable] = None,
        cache_decoded: bool = False,
        source: str = "",
    ):
        if len(relpaths) != len(labels):
            raise DataError(f"{source or root}: {len(relpaths)} images but {len(labels)} labels")
        check_within_root(root, relpaths, [f"{source or root}: entry {i + 1}" for i in range(len(relpaths))])
        self.root = root
        self.relpaths = list(relpaths)
        self.targets = [int(y) for y in labels]
        self.transform = transform
        self.pre_transform = pre_transform
        self.source = source
        self.cache: Optional[object] = None
        if cache_decoded:
            self.cache = self._decode_all()

    def _load(self, idx: int) -> Image.Image:
        img = load_rgb(os.path.join(self.root, self.relpaths[idx]), self.source)
        return self.pre_transform(img) if self.pre_transform is not None else img

    def _decode_all(self):
        arrays = [np.asarray(self._load(i), dtype=np.uint8) for i in range(len(self.relpaths))]
        if arrays and all(a.shape == arrays[0].shape for a in arrays):
            return np.stack(arrays)
        return arrays

    def __len__(self) -> int:
        return len(self.relpaths)

    def __getitem__(self, idx: int):
        if self.cache is not None:
            img = Image.fromarray(self.cache[idx])
        else:
            img = self._load(idx)
        x = self.transform(img) if self.transform is not None else T.functional.pil_to_tensor(img)
        return x, self.targets[idx]


# ----------------------------------------------------------------------------- transforms
def to_tensor_normalize(mean: Sequence[float], std: Sequence[float]) -> list:
    """ToTensor + Normalize; mean/std arrive as OmegaConf lists from Hydra, so coerce to floats."""
    return [T.ToTensor(), T.Normalize([float(m) for m in mean], [float(s) for s in std])]


def square_resize(size: int, interpolation=T.InterpolationMode.BILINEAR) -> T.Resize:
    """Resize to ``size x size`` without keeping the aspect ratio (VTAB / "resize to backbone")."""
    return T.Resize((int(size), int(size)), interpolation=interpolation)


def check_choice(value: str, choices: Iterable[str], key: str) -> str:
    """Validate a string option from the config with a message that lists the valid values."""
    choices = list(choices)
    if value not in choices:
        raise DataError(f"{key}={value!r} is not valid; expected one of {choices}")
    return value

