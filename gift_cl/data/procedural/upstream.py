"""The upstream domains: pretraining only, disjoint from the decathlon (``UPSTREAM``)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from gift_cl.data.procedural.primitives import (
    _NO_SEG,
    _TAU,
    OBJECT,
    _colour_background,
    _disc,
    _draw_parts,
    _ell,
    _far_value,
    _finish,
    _grid_pm1,
    _hsv,
    _Mask,
    _paint,
    _place,
    _rect,
    _regular,
    _scatter_distractors,
    _smooth_noise,
    _step,
)

_BASIC_SHAPES = (
    [(_ell(0, 0, 1, 1), 255)],
    [(_rect(-0.85, -0.85, 0.85, 0.85), 255)],
    [(_regular(3, 1.1) + [0, 0.15], 255)],
    [(_regular(6), 255)],
    [(_rect(-1, -0.3, 1, 0.3), 255)],
    [(_ell(0, 0, 1, 1), 255), (_ell(0, 0, 0.55, 0.55), 0)],
)


def _up_shapes(label: int, rng: np.random.Generator, size: int, seg=_NO_SEG) -> np.ndarray:
    """Upstream: 36 classes = 6 basic shapes (disc, square, triangle, hexagon, bar, ring) x 6 hue
    bins. Class signal: shape and colour. Nuisance: exact hue, saturation, brightness, size, rotation,
    position, grey clutter, textured low-saturation background, noise."""
    shape, hue_bin = divmod(label, 6)
    img, v_bg = _colour_background(rng, size, cells=4, sat=(0.0, 0.2))
    img = _scatter_distractors(img, rng, size, (1, 4), sat=(0.0, 0.1), seg=seg)
    scale = rng.uniform(0.18, 0.35)
    cx, cy = rng.uniform(scale, 1 - scale, 2)
    mask = _Mask(size)
    _draw_parts(mask, _BASIC_SHAPES[shape], cx, cy, scale, rng.uniform(0, _TAU))
    colour = _hsv((hue_bin + rng.uniform(-0.25, 0.25)) / 6, rng.uniform(0.6, 1.0), _far_value(rng, v_bg, 0.25))
    alpha = mask.alpha()
    seg.paint(alpha, OBJECT)
    return _finish(_paint(img, alpha, colour), rng, 0.03)


def _up_edges(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Upstream, grey: 16 classes = orientation of straight structure in 11.25 deg bins. The
    structure is a step edge, thin line, thick bar, parallel grating or dashed line. Class signal:
    orientation. Nuisance: structure type, offset, width, polarity, contrast, blob clutter, noise."""
    x, y = _grid_pm1(size)
    theta = (label + rng.uniform(-0.45, 0.45)) * np.pi / 16
    d = x * np.cos(theta) + y * np.sin(theta) - rng.uniform(-0.4, 0.4)
    px = 2.0 / size
    kind = int(rng.integers(5))
    if kind == 0:
        p = _step(d, px)
    elif kind in (1, 2):
        w = rng.uniform(0.04, 0.1) if kind == 1 else rng.uniform(0.15, 0.3)
        p = _step(w - np.abs(d), px)
    elif kind == 3:
        period = rng.uniform(0.3, 0.5)
        p = _step(rng.uniform(0.04, 0.08) - np.abs((d / period) % 1.0 - 0.5) * period, px)
    else:
        along = -x * np.sin(theta) + y * np.cos(theta)
        f = rng.uniform(2, 4)
        p = _step(np.minimum(rng.uniform(0.05, 0.1) - np.abs(d), np.sin(_TAU * f * along) / (_TAU * f)), px)
    g1 = rng.uniform(0.1, 0.9)
    img = g1 + p * (_far_value(rng, g1, 0.25) - g1)
    img = img + 0.2 * (_smooth_noise(rng, size, 3, 1)[..., 0] - 0.5)
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.random(2)
        img = _paint(img, _disc(size, cx, cy, rng.uniform(0.03, 0.08)), rng.random())
    return _finish(img, rng, 0.04)


@lru_cache(maxsize=32)
def _spectral_coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    fy = np.fft.fftfreq(size) * size
    fx = np.fft.rfftfreq(size) * size
    fxx, fyy = np.meshgrid(fx, fy)
    return np.hypot(fxx, fyy), np.arctan2(fyy, fxx)


def _up_spectra(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Upstream: 15 classes = 3 spatial-frequency bands (about 2.5, 5, 10 cycles per image) x
    (isotropic or oriented at 0/45/90/135 deg) filtered noise. Class signal: texture statistics
    (scale, orientedness). Nuisance: the noise sample, band centre and orientation jitter, two random
    colours, contrast, noise."""
    band, orient = divmod(label, 5)
    radius, angle = _spectral_coords(size)
    centre = (2.5, 5.0, 10.0)[band] * np.exp(rng.uniform(-0.2, 0.2))
    with np.errstate(divide="ignore"):
        filt = np.exp(-np.log(radius / centre) ** 2 / (2 * 0.3**2))
    filt[0, 0] = 0.0
    if orient > 0:
        delta = (angle - ((orient - 1) * np.pi / 4 + rng.uniform(-0.25, 0.25)) + np.pi / 2) % np.pi - np.pi / 2
        filt = filt * np.exp(-delta**2 / (2 * 0.3**2))
    z = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * filt, s=(size, size))
    z = (z - z.mean()) / max(1e-8, z.std())
    p = (1.0 / (1.0 + np.exp(-1.5 * z))).astype(np.float32)
    v1 = rng.uniform(0.1, 0.9)
    c1 = _hsv(rng.random(), rng.uniform(0.0, 0.8), v1)
    c2 = _hsv(rng.random(), rng.uniform(0.0, 0.8), _far_value(rng, v1, 0.3))
    return _finish(c1 + p[..., None] * (c2 - c1), rng, 0.03)


_TETROMINOES = (  # one-sided: S/Z and L/J stay distinct under rotation
    [(0, 0), (1, 0), (2, 0), (3, 0)],  # I
    [(0, 0), (1, 0), (0, 1), (1, 1)],  # O
    [(0, 0), (1, 0), (2, 0), (1, 1)],  # T
    [(1, 0), (2, 0), (0, 1), (1, 1)],  # S
    [(0, 0), (1, 0), (1, 1), (2, 1)],  # Z
    [(0, 0), (0, 1), (0, 2), (1, 2)],  # L
    [(1, 0), (1, 1), (1, 2), (0, 2)],  # J
)


def _up_blocks(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Upstream: 7 classes = the one-sided tetrominoes (I, O, T, S, Z, L, J). Class signal: the
    arrangement of four squares (corners, junctions, part layout). Nuisance: rotation (any multiple of
    90 deg plus +-11 deg), cell size, position, colour, lone distractor squares, background, noise."""
    img, v_bg = _colour_background(rng, size)
    cells = np.array(_TETROMINOES[label], dtype=np.float64)
    cells = cells - cells.mean(axis=0)
    cell = rng.uniform(0.11, 0.16)
    angle = int(rng.integers(4)) * np.pi / 2 + rng.uniform(-0.2, 0.2)
    for _ in range(int(rng.integers(1, 4))):
        m = _Mask(size)
        px, py = rng.random(2)
        m.poly(_place(_rect(-0.45, -0.45, 0.45, 0.45), px, py, cell, rng.uniform(0, _TAU)))
        img = _paint(img, m.alpha(), _hsv(rng.random(), rng.uniform(0.2, 1.0), rng.uniform(0.1, 1.0)))
    cx, cy = 0.5 + rng.uniform(-0.15, 0.15, 2)
    mask = _Mask(size)
    squares = [(_rect(u - 0.45, v - 0.45, u + 0.45, v + 0.45), 255) for u, v in cells]
    _draw_parts(mask, squares, cx, cy, cell, angle)
    colour = _hsv(rng.random(), rng.uniform(0.3, 1.0), _far_value(rng, v_bg))
    return _finish(_paint(img, mask.alpha(), colour), rng, 0.03)
