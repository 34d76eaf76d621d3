"""The on-disk cache of generated images and masks: ``.npz`` files under ``$GIFT_CL_CACHE/procedural``
(default ``~/.cache/gift_cl/procedural``), keyed by domain, ``VERSION``, seed, split, n and size."""
from __future__ import annotations

import os
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from gift_cl.atomic import atomic_path
from gift_cl.checkpoint import CheckpointError

# Bump whenever any generator's output changes: it is part of every cache key.
VERSION = 1
# Bump whenever a mask changes while the images do not: it is part of the mask cache key only.
MASK_VERSION = 1


def _cache_dir() -> Path:
    root = os.environ.get("GIFT_CL_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "gift_cl") / "procedural"


def _cache_path(domain: str, seed: int, split: str, n: int, size: int) -> Path:
    return _cache_dir() / f"{domain}-v{VERSION}-seed{seed}-{split}-n{n}-{size}px.npz"


def _mask_cache_path(domain: str, seed: int, split: str, n: int, size: int) -> Path:
    # a file of its own: runs that never ask for masks never read, write or depend on it
    return _cache_dir() / f"{domain}-v{VERSION}-seed{seed}-{split}-n{n}-{size}px-masks-m{MASK_VERSION}.npz"


# What a truncated, corrupt or foreign .npz raises: a cut-off archive is a BadZipFile (neither an
# OSError nor a ValueError), a damaged member a BadZipFile (CRC) or a zlib.error.
_CACHE_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


def _read_cache(path: Path, n: int, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached images and labels, or None (with a warning naming the file) if they must be
    regenerated: a cache is only ever a copy, so damage costs time, never a failed run.
    ``allow_pickle=False``: an object array in a crafted cache file cannot run code."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:  # fh: closed even when np.load fails
            images, labels = z["images"], z["labels"]
    except _CACHE_ERRORS as exc:
        warnings.warn(f"procedural: ignoring unreadable cache file {path} ({exc}); regenerating", stacklevel=3)
        return None
    if images.shape != (n, size, size, 3) or images.dtype != np.uint8 or labels.shape != (n,):
        warnings.warn(f"procedural: cache file {path} has unexpected shape {images.shape}; regenerating", stacklevel=3)
        return None
    return images, labels.astype(np.int64, copy=False)


def _read_mask_cache(path: Path, n: int, size: int, num_labels: int) -> np.ndarray | None:
    """The cached masks, or None (with a warning naming a damaged file), as `_read_cache`."""
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            masks = z["masks"]
    except _CACHE_ERRORS as exc:
        warnings.warn(f"procedural: ignoring unreadable cache file {path} ({exc}); regenerating", stacklevel=3)
        return None
    if masks.shape != (n, size, size) or masks.dtype != np.uint8 or (masks.size and masks.max() >= num_labels):
        warnings.warn(f"procedural: mask cache file {path} has unexpected shape, type or labels; regenerating",
                      stacklevel=3)
        return None
    return masks


def _write_cache(path: Path, **arrays: np.ndarray) -> None:
    """Write the archive atomically (concurrent workers never read a half-written one); a cache that cannot
    be written is a warning, not an error."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            # allow_pickle=True is savez's default; passed by name so no array name can be taken for it
            np.savez(fh, allow_pickle=True, **arrays)
    except (OSError, CheckpointError) as exc:
        warnings.warn(f"procedural: could not write cache file {path} ({exc}); continuing uncached", stacklevel=3)
