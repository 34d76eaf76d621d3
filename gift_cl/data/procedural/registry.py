"""The domain registry (``DOMAINS``, ``DECATHLON``, ``UPSTREAM``, ``PART_DOMAINS``, ``MASK_LABELS``) and the entry points:
:func:`generate` (images, labels and masks of one domain and split) and :func:`load_procedural` (one
``TaskData`` per domain, the benchmark's ``_target_``)."""
from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Literal, overload

import numpy as np

from gift_cl.data.base import ArrayDataset, DataError, TaskData, require_unique
from gift_cl.data.procedural.cache import (
    VERSION,
    _cache_path,
    _mask_cache_path,
    _read_cache,
    _read_mask_cache,
    _write_cache,
)
from gift_cl.data.procedural.decathlon import (
    _AIRCRAFT_PARTS,
    _FLOWER_PARTS,
    _PEDESTRIAN_PARTS,
    _SIGN_PARTS,
    _aircraft,
    _digits,
    _flowers,
    _gabor100,
    _glyphs,
    _motion,
    _objects,
    _pedestrians,
    _signs,
    _textures,
)
from gift_cl.data.procedural.parts import PART_DOMAINS, VOCABULARIES, part_domains
from gift_cl.data.procedural.primitives import OBJECT, _per_image, _per_image_masked
from gift_cl.data.procedural.upstream import _up_blocks, _up_edges, _up_shapes, _up_spectra

_SPLITS = ("train", "val", "test")
_MIN_SIZE, _MAX_SIZE = 16, 256


@dataclass(frozen=True)
class DomainSpec:
    """One procedural domain. ``generate(labels, rng, size)`` returns uint8 images (n, size, size, 3).

    Domains that draw an object also have ``generate_masked(labels, rng, size)``, returning the same
    images (same draws, same order) and uint8 label masks (n, size, size), and ``mask_labels``, the name
    of every mask label (index = label value)."""

    name: str
    num_classes: int
    grey: bool
    description: str
    generate: Callable[[np.ndarray, np.random.Generator, int], np.ndarray]
    mimics: str
    # True when a horizontal mirror image keeps the class (safe for flip augmentation)
    hflip_ok: bool
    generate_masked: Callable[[np.ndarray, np.random.Generator, int], tuple[np.ndarray, np.ndarray]] | None = None
    mask_labels: tuple[str, ...] = ()


def _derive_seed(seed: int, domain: str, split: str) -> int:
    # SHA-256 rather than hash(): Python's str hash is salted per process
    key = f"gift_cl.procedural|{domain}|{split}|{seed}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little")


def _balanced_labels(n: int, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(np.arange(n, dtype=np.int64) % num_classes)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------


def _spec(name: str, num_classes: int, grey: bool, fn, mimics: str, hflip_ok: bool, vectorised: bool = False,
          parts: tuple[str, ...] = ()) -> DomainSpec:
    """`parts`: names of the object's mask labels (OBJECT, OBJECT + 1, ...); empty for a domain without
    objects, which then has no masks."""
    return DomainSpec(name=name, num_classes=num_classes, grey=grey, description=" ".join(fn.__doc__.split()),
                      generate=fn if vectorised else _per_image(fn), mimics=mimics, hflip_ok=hflip_ok,
                      generate_masked=_per_image_masked(fn) if parts else None,
                      mask_labels=("background", "distractor") + parts if parts else ())


DOMAINS: dict[str, DomainSpec] = {
    s.name: s
    for s in (
        _spec("objects", 20, False, _objects, "ImageNet", True, parts=("object",)),
        _spec("aircraft", 12, True, _aircraft, "FGVC-Aircraft", True, parts=_AIRCRAFT_PARTS),
        _spec("gabor100", 100, False, _gabor100, "CIFAR-100", False, vectorised=True),
        _spec("pedestrians", 2, True, _pedestrians, "Daimler pedestrians (DPed)", True, parts=_PEDESTRIAN_PARTS),
        _spec("textures", 20, False, _textures, "DTD", True),
        _spec("signs", 43, False, _signs, "GTSRB", False, parts=_SIGN_PARTS),
        _spec("flowers", 24, False, _flowers, "Flowers-102", True, parts=_FLOWER_PARTS),
        _spec("glyphs", 100, True, _glyphs, "Omniglot", False, parts=("glyph",)),
        _spec("digits", 10, False, _digits, "SVHN", False, parts=("digit",)),
        _spec("motion", 12, False, _motion, "UCF101 (dynamic images)", False),
        _spec("up_shapes", 36, False, _up_shapes, "upstream: shape and colour", True, parts=("shape",)),
        _spec("up_edges", 16, True, _up_edges, "upstream: oriented edges", False),
        _spec("up_spectra", 15, False, _up_spectra, "upstream: texture statistics", False),
        _spec("up_blocks", 7, False, _up_blocks, "upstream: part layout", False),
        # the part-vocabulary experiment (parts.py): left/right classes are not mirror-safe
        *(_spec(name, 4, False, fn, "part-vocabulary experiment", not name.endswith("_position"),
                parts=VOCABULARIES[vocabulary]) for name, vocabulary, fn in part_domains()),
    )
}

# VDD's usual task order: ImageNet, Aircraft, CIFAR-100, DPed, DTD, GTSRB, Flowers, Omniglot, SVHN, UCF101
DECATHLON: list[str] = ["objects", "aircraft", "gabor100", "pedestrians", "textures", "signs", "flowers", "glyphs",
                        "digits", "motion"]
UPSTREAM: list[str] = ["up_shapes", "up_edges", "up_spectra", "up_blocks"]
# part-vocabulary experiment (parts.py): {domain: vocabulary}; out of pretraining and of the decathlon
PART_VOCABULARY: dict[str, str] = dict(PART_DOMAINS)
# {domain: name of every mask label (index = label value)} for the domains that draw an object
MASK_LABELS: dict[str, tuple[str, ...]] = {name: spec.mask_labels for name, spec in DOMAINS.items() if spec.mask_labels}


def object_mask(masks: np.ndarray) -> np.ndarray:
    """Boolean object mask (all object parts) of label masks from ``generate(..., masks=True)``."""
    return np.asarray(masks) >= OBJECT


# ---------------------------------------------------------------------------------------------
# generation, caching, loading
# ---------------------------------------------------------------------------------------------


def _lookup(domain: str) -> DomainSpec:
    spec = DOMAINS.get(domain) if isinstance(domain, str) else None
    if spec is None:
        raise DataError(f"unknown procedural domain {domain!r}; known domains: {', '.join(DOMAINS)}")
    return spec


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataError(f"procedural: {name} must be an integer, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise DataError(f"procedural: {name}={value} out of range [{lo}, {hi if hi is not None else 'inf'}]")
    return int(value)


@overload
def generate(domain: str, n: int, *, split: str = "train", seed: int = 0, image_size: int = 32,
             masks: Literal[False] = False) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def generate(domain: str, n: int, *, split: str = "train", seed: int = 0, image_size: int = 32,
             masks: Literal[True]) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...
def generate(domain: str, n: int, *, split: str = "train", seed: int = 0, image_size: int = 32,
             masks: bool = False) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` images of `domain`: uint8 (n, image_size, image_size, 3) and balanced int64 labels.

    A pure function of its arguments (and VERSION); results are cached on disk. Different splits and
    seeds are independent draws.

    ``masks=True`` also returns uint8 label masks (n, image_size, image_size): values index
    ``MASK_LABELS[domain]`` (0 background, 1 distractor, >= OBJECT the object's parts; module docstring).
    Images and labels are the same, bit for bit, as without masks. Only domains in ``MASK_LABELS`` have
    masks. Masks are cached in a file of their own (rendering them costs a full image rendering).
    """
    spec = _lookup(domain)
    n = _check_int("n", n, 1)
    seed = _check_int("seed", seed, 0)
    image_size = _check_int("image_size", image_size, _MIN_SIZE, _MAX_SIZE)
    if split not in _SPLITS:
        raise DataError(f"procedural: split must be one of {_SPLITS}, got {split!r}")
    if not isinstance(masks, (bool, np.bool_)):
        raise DataError(f"procedural: masks must be True or False, got {masks!r}")
    if masks and spec.generate_masked is None:
        raise DataError(f"procedural: domain {domain!r} draws no object, so it has no masks; "
                        f"domains with masks: {', '.join(MASK_LABELS)}")

    path = _cache_path(domain, seed, split, n, image_size)
    cached = _read_cache(path, n, image_size)
    if not masks:
        if cached is not None:
            return cached
        rng = np.random.default_rng(_derive_seed(seed, domain, split))
        labels = _balanced_labels(n, spec.num_classes, rng)
        images = spec.generate(labels, rng, image_size)
        _check_images(domain, images, n, image_size)
        _write_cache(path, images=images, labels=labels)
        return images, labels

    mask_path = _mask_cache_path(domain, seed, split, n, image_size)
    cached_masks = _read_mask_cache(mask_path, n, image_size, len(spec.mask_labels))
    if cached is not None and cached_masks is not None:
        return (*cached, cached_masks)
    assert spec.generate_masked is not None  # domains without it were refused above
    # the same seed, the same draws in the same order as the image-only path: the same images
    rng = np.random.default_rng(_derive_seed(seed, domain, split))
    labels = _balanced_labels(n, spec.num_classes, rng)
    images, label_masks = spec.generate_masked(labels, rng, image_size)
    _check_images(domain, images, n, image_size)
    if label_masks.shape != (n, image_size, image_size) or label_masks.dtype != np.uint8:
        raise DataError(f"procedural: generator {domain!r} returned masks {label_masks.dtype} {label_masks.shape}")
    if cached is None:
        _write_cache(path, images=images, labels=labels)
    elif not (np.array_equal(cached[0], images) and np.array_equal(cached[1], labels)):
        # only a generator changed without a VERSION bump gets here; serve and store what the code draws now
        warnings.warn(f"procedural: cache file {path} differs from the regenerated images (a generator changed "
                      "without a VERSION bump?); replacing it", stacklevel=2)
        _write_cache(path, images=images, labels=labels)
    _write_cache(mask_path, masks=label_masks)
    return images, labels, label_masks


def _check_images(domain: str, images: np.ndarray, n: int, size: int) -> None:
    if images.shape != (n, size, size, 3) or images.dtype != np.uint8:
        raise DataError(f"procedural: generator {domain!r} returned {images.dtype} {images.shape}")


def _per_domain(value, domains: list[str], what: str, default: int) -> dict[str, int]:
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in DOMAINS]
        if unknown:
            raise DataError(f"procedural: {what} names unknown domains {unknown}; known domains: {', '.join(DOMAINS)}")
        return {d: _check_int(f"{what}[{d!r}]", value.get(d, default), 1) for d in domains}
    v = _check_int(what, value, 1)
    return {d: v for d in domains}


def _per_domain_or_zero(value, domains: list[str]) -> dict[str, int]:
    """Like `_per_domain`, but 0 (no split) is allowed and is the default for unnamed domains."""
    if isinstance(value, Mapping):
        unknown = [k for k in value if k not in DOMAINS]
        if unknown:
            raise DataError(f"procedural: n_val names unknown domains {unknown}; known domains: {', '.join(DOMAINS)}")
        return {d: _check_int(f"n_val[{d!r}]", value.get(d, 0), 0) for d in domains}
    v = _check_int("n_val", value, 0)
    return {d: v for d in domains}


def _transform(size: int, resize_to: int | None, mean, std, augment: bool, hflip: bool):
    from torchvision import transforms as T

    steps = []
    if resize_to is not None:
        steps.append(T.Resize((resize_to, resize_to), interpolation=T.InterpolationMode.BILINEAR, antialias=True))
    if augment:
        final = resize_to or size
        steps.append(T.RandomCrop(final, padding=max(1, final // 8)))
        if hflip:
            steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


_EVAL_SPLITS = ("test", "val")


def load_procedural(domains: list[str] | None = None, *, n_train=500, n_test=200, image_size: int = 32,
                    resize_to: int | None = None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), data_seed: int = 0,
                    augment: bool = False, n_val=0, eval_split: str = "test") -> list[TaskData]:
    """One TaskData per domain (default: the DECATHLON, in stream order).

    `n_train` / `n_test` / `n_val` are ints or {domain: int} overrides (domains not named keep 500 / 200 / 0).
    Flip augmentation is applied only to domains whose spec says mirroring keeps the class.
    `data_seed` draws the images (every split); it is independent of the run's initialisation seed
    (`benchmark.data_seed`, which defaults to the run's `seed`), so seed spread splits into data and init.

    Validation split: `n_val` images per domain drawn from their own seed stream (split "val" enters the
    SHA-256 seed, like "train" and "test"), so val is deterministic and independent of train and test, and
    adding it changes no train/test image. `n_val=0` (default) generates none. With `eval_split="val"` each
    task's evaluation split (`TaskData.test`) is the validation split, for hyperparameter selection;
    `info["eval_split"]` records which split the run evaluated on.
    """
    names = list(DECATHLON if domains is None else [domains] if isinstance(domains, str) else domains)
    if not names:
        raise DataError("procedural: the domain list is empty")
    for name in names:
        _lookup(name)
    require_unique(names, "procedural: benchmark.domains")
    if resize_to is not None:
        resize_to = _check_int("resize_to", resize_to, 1)
    mean = tuple(float(m) for m in mean)
    std = tuple(float(s) for s in std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise DataError(f"procedural: mean/std need 3 entries and std > 0, got {mean} / {std}")
    sizes_train = _per_domain(n_train, names, "n_train", 500)
    sizes_test = _per_domain(n_test, names, "n_test", 200)
    if eval_split not in _EVAL_SPLITS:
        raise DataError(f"procedural: eval_split must be one of {_EVAL_SPLITS}, got {eval_split!r}")
    sizes_val = _per_domain_or_zero(n_val, names)
    if eval_split == "val":
        empty = [d for d in names if sizes_val[d] == 0]
        if empty:
            raise DataError(f"procedural: eval_split=val needs n_val > 0; domains without a validation split: {empty}")

    tasks = []
    for name in names:
        spec = DOMAINS[name]
        xs, ys = generate(name, sizes_train[name], split="train", seed=data_seed, image_size=image_size)
        if eval_split == "val":
            xt, yt = generate(name, sizes_val[name], split="val", seed=data_seed, image_size=image_size)
        else:
            xt, yt = generate(name, sizes_test[name], split="test", seed=data_seed, image_size=image_size)
        info = dict(source="procedural", version=VERSION, data_seed=data_seed, mimics=spec.mimics, grey=spec.grey,
                    native_size=image_size, resize_to=resize_to, n_train=len(ys), n_test=len(yt), augment=augment,
                    eval_split=eval_split, n_val=sizes_val[name])
        tasks.append(TaskData(
            name=name,
            train=ArrayDataset(xs, ys.tolist(), _transform(image_size, resize_to, mean, std, augment, spec.hflip_ok)),
            test=ArrayDataset(xt, yt.tolist(), _transform(image_size, resize_to, mean, std, False, False)),
            num_classes=spec.num_classes,
            info=info,
        ))
    return tasks
