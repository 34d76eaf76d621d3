"""Shared pieces of the image-file benchmarks (VDD, VTAB-1k, FGVC, notMNIST).

Every real benchmark here is "a split file that lists relative image paths and labels" plus a
folder of images. This module holds what they share:

* checks that stop bad input with ONE :class:`DataError` naming the file and what was expected,
  raised at load time in the main process (missing root or split file, malformed line or JSON,
  unreadable image), so a user never debugs a traceback from inside a DataLoader worker;
* :class:`ImageFileDataset`, a dataset over image files with ``.targets``, optionally decoded once
  into memory (``cache_decoded``) so that PNG/JPEG decoding does not bottleneck a 2-core machine;
* :func:`to_rgb`, the one place an image of any PIL mode becomes 8-bit RGB (or is refused), so no
  mode is decoded wrongly in silence (16-bit greyscale clipped to white, alpha kept in one loader
  and dropped in another);
* :func:`read_pickle`, the one reader of the pickle-based formats (CIFAR python batches), which
  admits only the globals those files reference: a crafted file in a data root cannot run code;
* the torchvision transform pieces the loaders compose.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
from PIL import Image, ImageFile
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


# ----------------------------------------------------------------------------- images
def verify_image_files(root: str, relpaths: Sequence[str], source: str, decode: bool = True) -> None:
    """Check every listed image exists, decodes completely and has a mode :func:`to_rgb` accepts,
    in the main process, so a bad file stops the run at load time with its name, not mid-training
    from inside a DataLoader worker.

    ``decode=True`` decodes every file (``Image.verify()`` reads only headers: a truncated JPEG
    passes it). JPEGs are decoded at 1/8 scale (``Image.draft``), which still reads all of their
    entropy-coded data, so truncation is found, at 70 % of a full decode's cost. Measured (one busy
    core, 300 images each, ms an image for header check / this check / full decode): VDD-sized
    96x72 JPEG 0.04 / 0.08 / 0.08, VTAB-sized 400x300 JPEG 0.04 / 0.31 / 0.44, FGVC-sized 500x375
    JPEG 0.04 / 0.45 / 0.64, 28 px PNG 0.04 / 0.06 / 0.04: a second per 3000 photos, against the
    minutes a run loses when a worker meets the file mid-training. ``decode=False`` keeps the
    header check, for loaders that decode every image now anyway (``cache_decoded``).
    """
    check_within_root(root, relpaths, [f"{source}: entry {i + 1}" for i in range(len(relpaths))])
    for rel in relpaths:
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise DataError(f"{path}: image not found (listed in {source})")
        try:
            with _strict_decoding(), Image.open(path) as im:
                if not decode:
                    im.verify()
                    continue
                _rgb_recipe(im, path, source)  # refuse a mode without an RGB meaning before decoding it
                if im.format in ("JPEG", "MPO"):  # MPO: a camera's multi-picture JPEG
                    im.draft(im.mode, (1, 1))
                im.load()
        except DataError:
            raise
        except _IMAGE_ERRORS as e:
            raise DataError(f"{path}: not a readable image ({e}) (listed in {source})") from None


def _listed(source: str) -> str:
    return f" (listed in {source})" if source else ""


@contextlib.contextmanager
def _strict_decoding():
    """Truncated files fail to decode, whatever another library set ``LOAD_TRUNCATED_IMAGES`` to
    (with it on, PIL fills the missing part with grey and says nothing)."""
    saved, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


# Modes PIL converts to RGB by their definition: bilevel and greyscale replicated, palette expanded,
# YCbCr/CMYK/HSV by their formulas. (LAB is not among them: PIL's LAB -> RGB is not a colour conversion.)
_RGB_MODES = frozenset({"1", "L", "P", "RGB", "RGBX", "YCbCr", "CMYK", "HSV"})
# Modes with an alpha channel -> the straight-alpha mode they pass through: the alpha is dropped and
# the colour kept, in every loader and for every such mode (palette transparency included), as
# torchvision's default loader does, so the official recipes' numbers stay comparable.
# Premultiplied modes (La, RGBa) are un-premultiplied first; a palette with transparency goes through RGBA.
_ALPHA_MODES = {"LA": "LA", "La": "LA", "PA": "RGBA", "RGBA": "RGBA", "RGBa": "RGBA"}
# 16-bit greyscale: PIL's convert() clips it to 0..255 (mid-grey 32768 becomes white).
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N"})
# Formats whose 32-bit "I" mode holds 16-bit samples (PNG bit depth 16, PGM maxval <= 65535); "I"
# from any other format (a 32-bit TIFF) has no defined range.
_SIXTEEN_BIT_I_FORMATS = frozenset({"PNG", "PPM"})


def _rgb_recipe(im: Image.Image, path: str, source: str = "") -> str:
    """How :func:`to_rgb` converts ``im``'s mode (``convert``, ``alpha``, ``16bit``), or a DataError
    naming the file where the mode has no defined 8-bit RGB meaning."""
    if im.mode in _ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        return "alpha"
    if im.mode in _RGB_MODES:
        return "convert"
    if im.mode in _SIXTEEN_BIT_MODES or (im.mode == "I" and im.format in _SIXTEEN_BIT_I_FORMATS):
        return "16bit"
    kind = {"F": "32-bit float", "I": "32-bit integer", "LAB": "CIELAB"}.get(im.mode, "unsupported")
    raise DataError(f"{path}: {kind} image (PIL mode {im.mode!r}) has no defined 8-bit RGB value range; expected "
                    f"8-bit greyscale/RGB/palette (with or without alpha), CMYK, or 16-bit greyscale{_listed(source)}")


def to_rgb(im: Image.Image, path: str, source: str = "") -> Image.Image:
    """Any image as 8-bit RGB, with each mode's own meaning (see the ``_*_MODES`` tables); a mode
    without a defined meaning (32-bit float, 32-bit integer, LAB) is a DataError naming ``path``
    (and the split file ``source`` that lists it).

    16-bit greyscale keeps its high byte (32768 -> 128), as PIL itself reduces 16-bit RGB and
    16-bit greyscale+alpha PNGs, so all 16-bit files get the same scaling.
    """
    recipe = _rgb_recipe(im, path, source)
    if recipe == "convert":
        return im.convert("RGB")
    if recipe == "alpha":
        return im.convert(_ALPHA_MODES.get(im.mode, "RGBA")).convert("RGB")
    values = np.asarray(im)
    if values.min() < 0 or values.max() > 65535:
        raise DataError(f"{path}: 16-bit image (PIL mode {im.mode!r}) holds values "
                        f"{int(values.min())}..{int(values.max())}, outside 0..65535{_listed(source)}")
    return Image.fromarray((values.astype(np.uint32) >> 8).astype(np.uint8), "L").convert("RGB")


def load_rgb(path: str, source: str = "") -> Image.Image:
    """Decode one image as 8-bit RGB (:func:`to_rgb`); any decode failure, truncation included,
    becomes a DataError naming the file."""
    try:
        with _strict_decoding(), Image.open(path) as im:
            im.load()
            return to_rgb(im, path, source)
    except DataError:
        raise
    except _IMAGE_ERRORS as e:
        raise DataError(f"{path}: cannot decode image ({e}){_listed(source)}") from None


# ----------------------------------------------------------------------------- pickles
def _numpy_reconstructors() -> tuple:
    """numpy's array/scalar rebuilders, under numpy 2.x names (``numpy._core``) or 1.x ones."""
    # numpy 1.x names them numpy.core (1.26's numpy._core is only a forwarding shim)
    core = "numpy._core" if int(np.__version__.split(".")[0]) >= 2 else "numpy.core"
    multiarray = importlib.import_module(f"{core}.multiarray")
    numeric = importlib.import_module(f"{core}.numeric")
    return multiarray._reconstruct, multiarray.scalar, numeric._frombuffer


def _plain_dtype(*args):
    """``numpy.dtype`` for pickles, refusing object dtypes: CIFAR arrays hold uint8 pixels, and an
    object array is how a pickle would smuggle arbitrary objects past the array rebuilders."""
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"object dtype {dtype} refused: the format holds plain numeric arrays")
    return dtype


def _latin1_encode(text, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as Python 3 pickles (protocol < 3) use it, to store ``bytes``: only the
    latin-1 round trip is admitted, not an arbitrary codec."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise pickle.UnpicklingError(f"_codecs.encode({type(text).__name__}, {encoding!r}) refused: "
                                     "only the latin1 encoding of a str stores bytes")
    return text.encode("latin1")


def _pickle_globals() -> dict:
    """Every global a CIFAR-10/100 python batch references, whoever wrote it: Python 2 cPickle with
    numpy 1.x (the official files: ``numpy.core.multiarray._reconstruct``, ``numpy.ndarray``,
    ``numpy.dtype``), Python 3 with numpy 1.x or 2.x (``numpy._core.*``), protocols 0-5 (protocol 5
    rebuilds arrays with ``numeric._frombuffer``, numpy scalars with ``multiarray.scalar``, protocol
    < 3 stores bytes through ``_codecs.encode``). Dicts, lists, tuples, str, bytes and numbers need
    no global at all."""
    reconstruct, scalar, frombuffer = _numpy_reconstructors()
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): _plain_dtype,
               ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _DataUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :func:`_pickle_globals`; any other global (``os.system``,
    ``builtins.eval``, a class) stops the load before it is called, naming the file and the global."""

    def __init__(self, file, path: str, what: str):
        super().__init__(file, encoding="latin1")  # latin1: Python 2 str, as the official files hold
        self.path, self.what, self.allowed = path, what, _pickle_globals()

    def find_class(self, module: str, name: str):
        found = self.allowed.get((module, name))
        if found is None:
            raise DataError(f"{self.path}: refused to load the pickled global {module}.{name}; a {self.what} "
                            "holds only dicts, lists, strings, numbers and numpy arrays (nothing in the file was run)")
        return found

    def persistent_load(self, pid):
        raise DataError(f"{self.path}: refused a pickle persistent id; a {self.what} has none")


# What a malformed (truncated, foreign, corrupt) pickle raises while it is parsed.
_PICKLE_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
                  KeyError, OverflowError)


def read_pickle(path: str, what: str):
    """Load a pickle-based data file (CIFAR python batches) with the restricted unpickler.

    The official CIFAR format is a pickle, and ``pickle.load`` runs whatever a crafted file asks for;
    this admits only the containers, numbers, strings and numpy arrays the format holds. A refused
    global, or a file that is not a pickle at all, is one DataError naming the file.
    """
    require_file(path, what)
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f, path, what).load()
    except DataError:
        raise
    except _PICKLE_ERRORS as e:
        raise DataError(f"{path}: not a {what} ({type(e).__name__}: {e})") from None


def read_pickled_dict(path: str, keys: Sequence[str], what: str) -> dict:
    """:func:`read_pickle` of a file that must hold a dict with ``keys`` (a CIFAR batch)."""
    entry = read_pickle(path, what)
    if not isinstance(entry, dict):
        raise DataError(f"{path}: holds a pickled {type(entry).__name__}; expected a {what}")
    absent = [k for k in keys if k not in entry]
    if absent:
        raise DataError(f"{path}: the pickled dict lacks {absent} (has {sorted(map(str, entry))}); expected a {what}")
    return entry


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
        self.cache: Optional[np.ndarray | list[np.ndarray]] = None
        if cache_decoded:
            self.cache = self._decode_all()

    def _load(self, idx: int) -> Image.Image:
        img = load_rgb(os.path.join(self.root, self.relpaths[idx]), self.source)
        return self.pre_transform(img) if self.pre_transform is not None else img

    def _decode_all(self) -> np.ndarray | list[np.ndarray]:
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

