"""Drawing primitives of the procedural domains: pixel grids, colour, noise, anti-aliased shapes, the
supersampled Pillow mask canvas, mask recording (``_Segmentation``), and the per-image generator wrappers.

Coordinates and the mask conventions: see the package docstring (:mod:`gift_cl.data.procedural`)."""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

# Mask labels shared by every domain with masks; labels >= OBJECT are the object's parts (MASK_LABELS).
BACKGROUND, DISTRACTOR, OBJECT = 0, 1, 2

_SS = 4  # supersampling factor of Pillow-drawn masks; Pillow polygons are not anti-aliased
_TAU = 2.0 * np.pi


@lru_cache(maxsize=32)
def _grid01(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = ((np.arange(size, dtype=np.float32) + 0.5) / size).astype(np.float32)
    x, y = np.meshgrid(c, c)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


@lru_cache(maxsize=32)
def _grid_pm1(size: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = _grid01(size)
    x2, y2 = 2.0 * x - 1.0, 2.0 * y - 1.0
    x2.flags.writeable = False
    y2.flags.writeable = False
    return x2, y2


def _hsv(h, s, v) -> np.ndarray:
    """HSV in [0, 1] to RGB; scalars give shape (3,), arrays of shape (n,) give (n, 3)."""
    h = np.asarray(h, dtype=np.float64)[..., None] % 1.0
    s = np.asarray(s, dtype=np.float64)[..., None]
    v = np.asarray(v, dtype=np.float64)[..., None]
    k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
    return (v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)).astype(np.float32)


def _far_value(rng: np.random.Generator, v: float, gap: float = 0.35) -> float:
    """A brightness at least `gap` away from `v`, so the foreground never vanishes into the background."""
    if v < 0.5:
        return float(rng.uniform(min(1.0, v + gap), 1.0))
    return float(rng.uniform(0.0, max(0.0, v - gap)))


@lru_cache(maxsize=64)
def _interp_matrix(cells: int, size: int) -> np.ndarray:
    x = np.clip((np.arange(size) + 0.5) / size * cells - 0.5, 0.0, cells - 1.0)
    i0 = np.floor(x).astype(np.int64)
    i1 = np.minimum(i0 + 1, cells - 1)
    w = (x - i0).astype(np.float32)
    m = np.zeros((size, cells), np.float32)
    np.add.at(m, (np.arange(size), i0), 1.0 - w)
    np.add.at(m, (np.arange(size), i1), w)
    return m


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 3) -> np.ndarray:
    """Bilinearly upsampled uniform noise on a cells x cells lattice: (size, size, channels) in [0, 1]."""
    m = _interp_matrix(cells, size)
    small = rng.random((cells, cells, channels), dtype=np.float32)
    rows = (m @ small.reshape(cells, cells * channels)).reshape(size, cells, channels)
    return np.einsum("ibc,jb->ijc", rows, m)


def _step(d: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased indicator of d > 0, where `pixel` is the size of one pixel in d's units."""
    return np.clip(0.5 + d / pixel, 0.0, 1.0)


def _disc(size: int, cx: float, cy: float, r: float) -> np.ndarray:
    x, y = _grid01(size)
    return _step(r - np.hypot(x - cx, y - cy), 1.0 / size)


def _box(size: int, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    x, y = _grid01(size)
    d = np.minimum(np.minimum(x - x0, x1 - x), np.minimum(y - y0, y1 - y))
    return _step(d, 1.0 / size)


def _band(size: int, angle: float, offset: float, width: float) -> np.ndarray:
    """An infinite straight stripe through the image (roads, poles, runway marks)."""
    x, y = _grid01(size)
    d = np.abs((x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle) - offset)
    return _step(width / 2.0 - d, 1.0 / size)


def _paint(img: np.ndarray, alpha: np.ndarray, colour) -> np.ndarray:
    if img.ndim == 3:
        alpha = alpha[..., None]
    return img + alpha * (np.asarray(colour, dtype=np.float32) - img)


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the two spatial axes (reflect padding)."""
    if sigma < 0.3:
        return img
    r = int(np.ceil(2.0 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (r, r)
        p = np.pad(img, pad, mode="reflect")
        n = img.shape[axis]
        img = sum(k[i] * np.take(p, np.arange(i, i + n), axis=axis) for i in range(2 * r + 1))
    return img


def _finish(img: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Add sensor noise, clip, quantise; grey (H, W) images become R=G=B."""
    if noise > 0:
        img = img + rng.normal(0.0, noise, img.shape).astype(np.float32)
    out = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    return out


def _rot(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def _place(pts, cx: float, cy: float, scale: float, angle: float = 0.0, sx: float = 1.0) -> np.ndarray:
    """Canonical points -> unit image coordinates: squash x by sx, rotate, scale, translate."""
    p = np.asarray(pts, dtype=np.float64) * np.array([sx, 1.0])
    return p @ _rot(angle).T * scale + np.array([cx, cy])


def _ell(cx: float, cy: float, rx: float, ry: float, a0: float = 0.0, a1: float = _TAU, k: int = 28) -> np.ndarray:
    t = np.linspace(a0, a1, k, endpoint=False) if a1 - a0 >= _TAU else np.linspace(a0, a1, k)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _regular(k: int, r: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(k) * _TAU / k
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _star(k: int, r_out: float, r_in: float) -> np.ndarray:
    t = -np.pi / 2 + np.arange(2 * k) * np.pi / k
    r = np.where(np.arange(2 * k) % 2 == 0, r_out, r_in)
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


class _Mask:
    """Supersampled Pillow 'L' canvas in unit coordinates; `alpha()` gives an anti-aliased mask."""

    def __init__(self, size: int):
        self.size = size
        self.dim = size * _SS
        self.im = Image.new("L", (self.dim, self.dim), 0)
        self.draw = ImageDraw.Draw(self.im)

    def _xy(self, pts) -> list[tuple[float, float]]:
        return [tuple(p) for p in (np.asarray(pts) * self.dim).tolist()]

    def poly(self, pts, fill: int = 255) -> None:
        self.draw.polygon(self._xy(pts), fill=fill)

    def line(self, pts, width: float, fill: int = 255) -> None:
        self.draw.line(self._xy(pts), fill=fill, width=max(1, int(round(width * self.dim))), joint="curve")

    def disc(self, cx: float, cy: float, r: float, fill: int = 255) -> None:
        d = self.dim
        self.draw.ellipse([(cx - r) * d, (cy - r) * d, (cx + r) * d, (cy + r) * d], fill=fill)

    def alpha(self) -> np.ndarray:
        small = self.im.resize((self.size, self.size), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------
# masks: per-pixel labels recorded while painting
# ---------------------------------------------------------------------------------------------


class _Segmentation:
    """Per-pixel labels written beside a rendering (module docstring, "Masks").

    The renderer reports every layer it paints with the same alpha it paints with, so a mask can never
    drift from its image; recording consumes no random numbers."""

    recording = True

    def __init__(self, size: int):
        self.labels = np.zeros((size, size), np.uint8)

    def paint(self, alpha: np.ndarray, label: int) -> None:
        """A layer painted with coverage `alpha` claims the pixels it covers at least half of."""
        self.labels[alpha >= 0.5] = label

    def paint_parts(self, alpha: np.ndarray, parts: list[tuple[int, np.ndarray]]) -> None:
        """One layer (coverage `alpha`) made of parts drawn in one colour: each claimed pixel gets the
        label of the part covering most of it; ties go to the earlier part in `parts` (the part on top
        where parts overlap). The object's extent is that of `alpha`, the union actually painted, even at
        edges where no single part reaches half a pixel."""
        claimed = alpha >= 0.5
        ids = np.array([label for label, _ in parts], np.uint8)
        best = np.argmax(np.stack([a for _, a in parts]), axis=0)
        self.labels[claimed] = ids[best[claimed]]

    def paint_canvas(self, canvas: Image.Image) -> None:
        """Replace the labels by those of a supersampled label canvas (a scene drawn with Pillow, one
        label per primitive, painter's order): each pixel takes the label most of its _SS x _SS
        subsamples carry (the one that dominates its box-filtered colour), ties to the higher label."""
        size = self.labels.shape[0]
        sub = np.asarray(canvas, dtype=np.uint8).reshape(size, _SS, size, _SS)
        present = np.unique(sub)
        counts = np.stack([(sub == k).sum(axis=(1, 3)) for k in present])
        # reversed so that argmax's first-maximum rule prefers the higher label on a tie
        self.labels[...] = present[::-1][np.argmax(counts[::-1], axis=0)]


class _NoSegmentation:
    """The default recorder: ignores every call, so renderers report layers unconditionally."""

    recording = False

    def paint(self, alpha: np.ndarray, label: int) -> None:
        pass

    def paint_parts(self, alpha: np.ndarray, parts: list[tuple[int, np.ndarray]]) -> None:
        pass

    def paint_canvas(self, canvas: Image.Image) -> None:
        pass


_NO_SEG = _NoSegmentation()  # stateless, so one shared default is safe


def _per_image_masked(render):
    """Like `_per_image`, with a `_Segmentation` per image: (labels, rng, size) -> (images, masks)."""

    def generate_masked(labels: np.ndarray, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        images = np.empty((len(labels), size, size, 3), np.uint8)
        masks = np.empty((len(labels), size, size), np.uint8)
        for i, y in enumerate(labels):
            seg = _Segmentation(size)
            images[i] = render(int(y), rng, size, seg)
            masks[i] = seg.labels
        return images, masks

    generate_masked.__name__ = render.__name__.lstrip("_") + "_masked"
    return generate_masked


class _Pen:
    """Draws each Pillow primitive on an image canvas and, when masks are recorded, the same primitive
    in its label on a label canvas of the same size (identical rasterisation, so labels match pixels)."""

    def __init__(self, image: Image.Image, labels: Image.Image | None):
        self.image = ImageDraw.Draw(image)
        self.labels = ImageDraw.Draw(labels) if labels is not None else None

    def _both(self, method: str, xy, fill: int, label: int, **kw) -> None:
        getattr(self.image, method)(xy, fill=fill, **kw)
        if self.labels is not None:
            getattr(self.labels, method)(xy, fill=label, **kw)

    def line(self, xy, fill: int, label: int, **kw) -> None:
        self._both("line", xy, fill, label, **kw)

    def ellipse(self, xy, fill: int, label: int) -> None:
        self._both("ellipse", xy, fill, label)

    def rectangle(self, xy, fill: int, label: int) -> None:
        self._both("rectangle", xy, fill, label)


def _draw_parts(mask: _Mask, parts, cx: float, cy: float, scale: float, angle: float = 0.0, sx: float = 1.0) -> None:
    """Draw canonical (points, fill) polygons; fill 0 cuts holes into what was drawn before."""
    for pts, fill in parts:
        mask.poly(_place(pts, cx, cy, scale, angle, sx), fill)


def _colour_background(rng: np.random.Generator, size: int, cells: int = 4, sat=(0.1, 0.6)) -> tuple[np.ndarray, float]:
    """Textured colour background; returns the image and its mean brightness for contrast choices."""
    v = float(rng.uniform(0.2, 0.9))
    base = _hsv(rng.random(), rng.uniform(*sat), v)
    img = base * (0.7 + 0.6 * _smooth_noise(rng, size, cells))
    return img, v


def _scatter_distractors(img: np.ndarray, rng: np.random.Generator, size: int, k_range=(2, 5), sat=(0.2, 1.0),
                         seg=_NO_SEG) -> np.ndarray:
    """Small discs and boxes of random colour: clutter that carries no class information."""
    for _ in range(int(rng.integers(*k_range))):
        cx, cy = rng.random(2)
        r = rng.uniform(0.04, 0.12)
        colour = _hsv(rng.random(), rng.uniform(*sat), rng.uniform(0.1, 1.0))
        alpha = _disc(size, cx, cy, r) if rng.random() < 0.5 else _box(size, cx - r, cy - r * 0.6, cx + r, cy + r * 0.6)
        img = _paint(img, alpha, colour)
        seg.paint(alpha, DISTRACTOR)
    return img


def _per_image(render: Callable[[int, np.random.Generator, int], np.ndarray]):
    """Lift a one-image renderer to the (labels, rng, size) -> (n, size, size, 3) generator contract."""

    def generate(labels: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
        out = np.empty((len(labels), size, size, 3), np.uint8)
        for i, y in enumerate(labels):
            out[i] = render(int(y), rng, size)
        return out

    generate.__doc__ = render.__doc__
    generate.__name__ = render.__name__.lstrip("_")
    return generate
