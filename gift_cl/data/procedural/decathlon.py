"""The ten downstream domains, one per Visual Domain Decathlon dataset they stand in for."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from gift_cl.data.procedural.fonts import _font
from gift_cl.data.procedural.primitives import (
    _NO_SEG,
    _SS,
    _TAU,
    BACKGROUND,
    DISTRACTOR,
    OBJECT,
    _band,
    _blur,
    _box,
    _colour_background,
    _disc,
    _draw_parts,
    _ell,
    _far_value,
    _finish,
    _grid01,
    _grid_pm1,
    _hsv,
    _Mask,
    _paint,
    _Pen,
    _place,
    _rect,
    _regular,
    _rot,
    _scatter_distractors,
    _smooth_noise,
    _star,
    _step,
)

_CHUNK = 256  # images per vectorised batch, bounds peak memory at large n and size


@lru_cache(maxsize=1)
def _object_icons() -> list[list[tuple[np.ndarray, int]]]:
    """20 icon silhouettes in a [-1, 1] frame, as (polygon, fill) lists; fill 0 cuts a hole."""
    e, r = _ell, _rect
    return [
        [(r(-0.6, -0.1, 0.6, 0.8), 255), (np.array([[-0.8, -0.1], [0, -0.85], [0.8, -0.1]]), 255),
         (r(-0.15, 0.35, 0.15, 0.8), 0)],  # house
        [(r(-0.12, 0.3, 0.12, 0.9), 255), (e(0, -0.2, 0.6, 0.6), 255)],  # tree
        [(r(-0.9, -0.05, 0.9, 0.4), 255), (np.array([[-0.5, -0.05], [-0.3, -0.45], [0.35, -0.45], [0.55, -0.05]]), 255),
         (e(-0.5, 0.45, 0.2, 0.2), 255), (e(0.5, 0.45, 0.2, 0.2), 255)],  # car
        [(e(0, 0.05, 0.85, 0.65, np.pi, _TAU), 255), (r(-0.2, 0.0, 0.2, 0.8), 255)],  # mushroom
        [(r(-0.85, -0.12, 0.2, 0.12), 255), (np.array([[0.2, -0.45], [0.85, 0], [0.2, 0.45]]), 255)],  # arrow
        [(e(-0.55, 0, 0.35, 0.35), 255), (e(-0.55, 0, 0.15, 0.15), 0), (r(-0.2, -0.08, 0.85, 0.08), 255),
         (r(0.5, 0.08, 0.6, 0.3), 255), (r(0.7, 0.08, 0.8, 0.25), 255)],  # key
        [(e(0, -0.05, 0.85, 0.6, np.pi, _TAU), 255), (r(-0.05, -0.05, 0.05, 0.72), 255),
         (r(-0.32, 0.62, 0.05, 0.72), 255), (r(-0.32, 0.45, -0.22, 0.72), 255)],  # umbrella
        [(np.array([[-0.6, -0.8], [0.6, -0.8], [0, 0]]), 255), (np.array([[0, 0], [0.6, 0.8], [-0.6, 0.8]]), 255),
         (r(-0.7, -0.92, 0.7, -0.78), 255), (r(-0.7, 0.78, 0.7, 0.92), 255)],  # hourglass
        [(r(-0.2, -0.8, 0.2, 0.8), 255), (r(-0.8, -0.2, 0.8, 0.2), 255)],  # plus
        [(_star(5, 0.95, 0.4), 255)],  # star
        [(e(0, 0, 0.8, 0.8), 255), (e(0.38, -0.12, 0.66, 0.66), 0)],  # crescent
        [(e(-0.36, -0.3, 0.42, 0.42), 255), (e(0.36, -0.3, 0.42, 0.42), 255),
         (np.array([[-0.77, -0.15], [0.77, -0.15], [0, 0.85]]), 255)],  # heart
        [(np.array([[-0.15, -0.8], [0.15, -0.8], [0.45, -0.3], [0.55, 0.35], [0.8, 0.55], [-0.8, 0.55], [-0.55, 0.35],
                    [-0.45, -0.3]]), 255), (e(0, 0.72, 0.15, 0.15), 255)],  # bell
        [(e(0.5, 0.0, 0.36, 0.32), 255), (e(0.5, 0.0, 0.18, 0.15), 0),
         (np.array([[-0.65, -0.6], [0.4, -0.6], [0.3, 0.7], [-0.55, 0.7]]), 255)],  # cup
        [(e(0, -0.35, 0.5, 0.5), 255), (r(-0.06, 0.1, 0.06, 0.92), 255)],  # lollipop
        [(e(0, 0.45, 0.45, 0.45), 255), (e(0, -0.22, 0.32, 0.32), 255), (e(0, -0.68, 0.2, 0.2), 255)],  # snowman
        [(r(-0.85, -0.35, 0.85, -0.15), 255), (r(-0.75, -0.15, -0.6, 0.75), 255), (r(0.6, -0.15, 0.75, 0.75), 255)],  # table
        [(r(-0.7, -0.9, -0.58, 0.9), 255), (r(-0.58, -0.85, 0.7, -0.15), 255)],  # flag
        [(e(0, 0, 0.75, 0.75), 255), (e(0, 0, 0.4, 0.4), 0)],  # ring
        [(e(-0.15, 0, 0.6, 0.35), 255), (np.array([[0.35, 0], [0.9, -0.42], [0.9, 0.42]]), 255),
         (e(-0.45, -0.08, 0.07, 0.07), 0)],  # fish
    ]


def _objects(label: int, rng: np.random.Generator, size: int, seg=_NO_SEG) -> np.ndarray:
    """Mimics ImageNet: 20 everyday-object icons (house, tree, car, key, cup, ...) on cluttered colour
    backgrounds. Class signal: the silhouette. Nuisance: object colour, size, aspect, position, rotation
    (+-35 deg), random coloured distractor blobs, background texture, noise."""
    img, v_bg = _colour_background(rng, size)
    img = _scatter_distractors(img, rng, size, seg=seg)
    mask = _Mask(size)
    scale = rng.uniform(0.26, 0.4)
    cx, cy = 0.5 + rng.uniform(-0.12, 0.12, 2)
    _draw_parts(mask, _object_icons()[label], cx, cy, scale, rng.uniform(-0.6, 0.6), rng.uniform(0.85, 1.15))
    colour = _hsv(rng.random(), rng.uniform(0.3, 1.0), _far_value(rng, v_bg))
    alpha = mask.alpha()
    img = _paint(img, alpha, colour)
    seg.paint(alpha, OBJECT)
    return _finish(img, rng, 0.03)


_WINGS = {
    # right half-wing polygons (nose at -y); x of the tip is multiplied by the span factor
    "straight": [(0.06, -0.08), (0.95, -0.02), (0.95, 0.12), (0.06, 0.16)],
    "swept": [(0.06, -0.2), (0.9, 0.28), (0.9, 0.4), (0.06, 0.14)],
    "delta": [(0.06, -0.45), (0.75, 0.42), (0.06, 0.5)],
}


_AIRCRAFT_PARTS = ("fuselage", "wings", "engines", "stabilisers")  # mask labels OBJECT, OBJECT + 1, ...
_FUSELAGE, _WING, _ENGINE, _STABILISER = (OBJECT + i for i in range(len(_AIRCRAFT_PARTS)))
# where parts overlap (nacelles on a wing, wing roots on the fuselage) the pixel goes to the part on top
_AIRCRAFT_PART_PRIORITY = (_ENGINE, _FUSELAGE, _STABILISER, _WING)


def _aircraft_parts(label: int, rng: np.random.Generator) -> list[tuple[np.ndarray, int, int]]:
    """Canonical (polygon, fill, mask label) parts of one airliner; the stabilisers are the tailplane or,
    for canard classes, the foreplane."""
    wing_kind = ("straight", "swept", "delta")[label // 4]
    four_engines = bool((label // 2) % 2)
    canard = bool(label % 2)
    span = rng.uniform(0.9, 1.08)
    length = rng.uniform(0.92, 1.05)
    mirror = np.array([-1.0, 1.0])

    wing = np.array(_WINGS[wing_kind], dtype=np.float64)
    wing[1:-1, 0] *= span
    parts = [(_ell(0, 0, 0.085, 0.9 * length), 255, _FUSELAGE), (wing, 255, _WING), (wing * mirror, 255, _WING)]

    root, tip = wing[0], wing[1]
    for f in ((0.32, 0.62) if four_engines else (0.42,)):
        # nacelles hang ahead of the leading edge, which is what makes them visible top-down
        x = root[0] + f * (tip[0] - root[0])
        y = root[1] + f * (tip[1] - root[1]) - 0.08
        for m in (1.0, -1.0):
            parts.append((_ell(m * x, y, 0.06, 0.12, k=12), 255, _ENGINE))

    if canard:
        fore = np.array([(0.04, -0.55), (0.27, -0.45), (0.27, -0.37), (0.04, -0.41)]) * np.array([1.0, length])
    else:
        fore = np.array([(0.04, 0.6), (0.33, 0.76), (0.33, 0.85), (0.04, 0.8)]) * np.array([1.0, length])
    parts += [(fore, 255, _STABILISER), (fore * mirror, 255, _STABILISER)]
    return parts


def _aircraft(label: int, rng: np.random.Generator, size: int, seg=_NO_SEG) -> np.ndarray:
    """Mimics FGVC-Aircraft (fine-grained), grey: top-down airliner silhouettes. Class signal: wing
    planform (straight / swept / delta) x 2 or 4 engine nacelles x rear tailplane or front canard
    (12 classes). Nuisance: any heading (0-360 deg), size, span and fuselage length, polarity and
    contrast, a cast shadow, runway stripes, ground texture, blur and noise."""
    g = rng.uniform(0.25, 0.75)
    img = g + 0.3 * (_smooth_noise(rng, size, 4, 1)[..., 0] - 0.5)
    for _ in range(int(rng.integers(0, 3))):
        stripe = _band(size, rng.uniform(0, np.pi), rng.uniform(-0.4, 0.4), rng.uniform(0.02, 0.08))
        img = _paint(img, stripe, rng.random())
        seg.paint(stripe, DISTRACTOR)

    mask = _Mask(size)
    scale = rng.uniform(0.36, 0.46)
    cx, cy = 0.5 + rng.uniform(-0.07, 0.07, 2)
    parts = _aircraft_parts(label, rng)
    heading = rng.uniform(0, _TAU)
    _draw_parts(mask, [(pts, fill) for pts, fill, _ in parts], cx, cy, scale, heading)
    alpha = mask.alpha()
    if rng.random() < 0.5:
        a = rng.uniform(0, _TAU)
        shift = np.round(rng.uniform(0.03, 0.08) * size * np.array([np.cos(a), np.sin(a)])).astype(int)
        shadow = np.roll(alpha, tuple(shift), axis=(0, 1))
        img = img * (1.0 - 0.35 * shadow)
        seg.paint(shadow, DISTRACTOR)  # the silhouette's look-alike, but not the aircraft
    img = _paint(img, alpha, _far_value(rng, g, 0.3))
    if seg.recording:
        part_alphas = []
        for part in _AIRCRAFT_PART_PRIORITY:
            m = _Mask(size)
            _draw_parts(m, [(pts, fill) for pts, fill, kind in parts if kind == part], cx, cy, scale, heading)
            part_alphas.append((part, m.alpha()))
        seg.paint_parts(alpha, part_alphas)
    img = _blur(img, rng.uniform(0.0, 0.7) * size / 32)
    return _finish(img, rng, 0.04)


def _gabor100(labels: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    """Mimics CIFAR-100's class count: 100 classes = 10 orientations (18 deg apart) x 10 hues of a
    Gabor patch. Class signal: grating orientation and hue. Nuisance: spatial frequency, phase,
    envelope position and width, saturation, brightness, background grey, pixel noise. Orientation
    needs the phase-invariant structure that raw-pixel linear models lack."""
    n = len(labels)
    x, y = _grid_pm1(size)
    theta = (labels // 10 + rng.uniform(-0.4, 0.4, n)) * (np.pi / 10)
    hue = (labels % 10 + rng.uniform(-0.4, 0.4, n)) / 10
    freq = rng.uniform(2.0, 3.5, n)  # cycles per half image width
    phase = rng.uniform(0, _TAU, n)
    cx, cy = rng.uniform(-0.3, 0.3, (2, n))
    sigma = rng.uniform(0.25, 0.6, n)
    amp = rng.uniform(0.35, 1.0, n)
    rgb = _hsv(hue, rng.uniform(0.35, 1.0, n), rng.uniform(0.6, 1.0, n))
    bg = rng.uniform(0.25, 0.65, n)
    out = np.empty((n, size, size, 3), np.uint8)
    for s in range(0, n, _CHUNK):
        sl = slice(s, s + _CHUNK)
        col = lambda a, sl=sl: a[sl, None, None].astype(np.float32)  # noqa: E731 - broadcast per-image params
        u = x * np.cos(col(theta)) + y * np.sin(col(theta))
        lum = 0.5 + 0.5 * np.cos(_TAU * col(freq) * u + col(phase))
        env = col(amp) * np.exp(-((x - col(cx)) ** 2 + (y - col(cy)) ** 2) / (2 * col(sigma) ** 2))
        img = col(bg)[..., None] * (1 - env[..., None]) + (env * lum)[..., None] * rgb[sl, None, None, :]
        img = img + rng.normal(0, 0.08, img.shape).astype(np.float32)
        out[sl] = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    return out


_PEDESTRIAN_PARTS = ("head", "torso", "arms", "legs")  # mask labels OBJECT, OBJECT + 1, ...
_HEAD, _TORSO, _ARM, _LEG = (OBJECT + i for i in range(len(_PEDESTRIAN_PARTS)))


def _stick_figure(pen: _Pen, rng: np.random.Generator, dim: int, fill: int) -> None:
    h = rng.uniform(0.45, 0.8)
    foot = rng.uniform(0.85, 0.96)
    top = foot - h
    xc = rng.uniform(0.3, 0.7)
    head_r = 0.1 * h
    neck = top + 2 * head_r
    hip = neck + 0.38 * h
    shoulder = neck + 0.05 * h
    width = max(1, int(round(rng.uniform(0.06, 0.1) * h * dim)))
    p = lambda xx, yy: (xx * dim, yy * dim)  # noqa: E731 - unit -> canvas pixels
    pen.ellipse([(xc - head_r) * dim, top * dim, (xc + head_r) * dim, (top + 2 * head_r) * dim], fill, _HEAD)
    pen.line([p(xc, neck), p(xc, hip)], fill, _TORSO, width=width)
    for side in (-1, 1):
        pen.line([p(xc, hip), p(xc + side * rng.uniform(0.0, 0.25) * h, foot)], fill, _LEG, width=width, joint="curve")
        pen.line([p(xc, shoulder), p(xc + side * rng.uniform(0.08, 0.25) * h, shoulder + rng.uniform(0.2, 0.4) * h)],
                 fill, _ARM, width=width)


def _pedestrians(label: int, rng: np.random.Generator, size: int, seg=_NO_SEG) -> np.ndarray:
    """Mimics Daimler pedestrians (DPed), binary, grey. Class signal: a walking stick figure (head,
    torso, two legs, two arms) is present (1) or not (0). Nuisance: street clutter drawn in both
    classes (poles, window boxes, lamp-like discs on poles, V-shaped struts), figure position, height,
    pose, stroke width and polarity, background texture, blur and noise."""
    dim = size * _SS
    g = rng.uniform(0.2, 0.8)
    canvas = Image.new("L", (dim, dim), int(g * 255))
    label_canvas = Image.new("L", (dim, dim), BACKGROUND) if seg.recording else None
    pen = _Pen(canvas, label_canvas)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = rng.random(2)
        fill = int(rng.uniform(0, 255))
        w = max(1, int(rng.uniform(0.02, 0.06) * dim))
        if rng.random() < 0.6:  # pole-like near-vertical stroke
            x1, y1 = x0 + rng.uniform(-0.1, 0.1), y0 + rng.uniform(0.3, 0.9)
            pen.line([(x0 * dim, y0 * dim), (x1 * dim, y1 * dim)], fill, DISTRACTOR, width=w)
        else:  # window / box
            x1, y1 = x0 + rng.uniform(0.05, 0.3), y0 + rng.uniform(0.05, 0.3)
            pen.rectangle([x0 * dim, y0 * dim, x1 * dim, y1 * dim], fill, DISTRACTOR)
    # confusers that share parts with a person, so 'a disc' or 'a vertical bar' never decides the class
    contrast = lambda: int(255 * np.clip(g + rng.choice([-1, 1]) * rng.uniform(0.2, 0.5), 0, 1))  # noqa: E731
    if rng.random() < 0.6:
        xc, top, h = rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.4), rng.uniform(0.4, 0.8)
        fill, w = contrast(), max(1, int(rng.uniform(0.03, 0.07) * dim))
        pen.line([(xc * dim, top * dim), (xc * dim, (top + h) * dim)], fill, DISTRACTOR, width=w)
        if rng.random() < 0.5:
            r = rng.uniform(0.04, 0.09)
            pen.ellipse([(xc - r) * dim, (top - r) * dim, (xc + r) * dim, (top + r) * dim], fill, DISTRACTOR)
    if rng.random() < 0.5:
        xc, yt, h = rng.uniform(0.2, 0.8), rng.uniform(0.3, 0.6), rng.uniform(0.2, 0.35)
        fill, w = contrast(), max(1, int(rng.uniform(0.03, 0.07) * dim))
        for side in (-1, 1):
            x1 = xc + side * rng.uniform(0.05, 0.15)
            pen.line([(xc * dim, yt * dim), (x1 * dim, (yt + h) * dim)], fill, DISTRACTOR, width=w)
    if label == 1:
        _stick_figure(pen, rng, dim, contrast())
    if label_canvas is not None:
        seg.paint_canvas(label_canvas)
    img = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0
    img = img + 0.25 * (_smooth_noise(rng, size, 3, 1)[..., 0] - 0.5)
    img = _blur(img, rng.uniform(0.0, 0.8) * size / 32)
    return _finish(img, rng, 0.05)


def _texture_pattern(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """The [0, 1] pattern field of texture family `label` under a random rotation, scale and phase."""
    x, y = _grid_pm1(size)
    theta = rng.uniform(0, np.pi)
    u = x * np.cos(theta) + y * np.sin(theta)
    v = -x * np.sin(theta) + y * np.cos(theta)
    f = rng.uniform(1.5, 3.0)  # pattern periods per half image width
    ou, ov = rng.random(2)
    U, V = u * f + ou, v * f + ov
    px = 2.0 * f / size  # one pixel in pattern units
    fr = lambda a: a - np.floor(a)  # noqa: E731
    sinw = lambda a: np.sin(_TAU * a) / _TAU  # noqa: E731 - slope 1 at its zero crossings
    if label == 0:  # stripes
        return _step(sinw(U) - rng.uniform(-0.06, 0.06), px)
    if label == 1:  # checkerboard
        return _step(sinw(U) * np.sin(_TAU * V), px)
    if label == 2:  # lattice dots
        return _step(rng.uniform(0.2, 0.34) - np.hypot(fr(U) - 0.5, fr(V) - 0.5), px)
    if label == 3:  # wavy lines
        return _step(sinw(U + rng.uniform(0.12, 0.25) * np.sin(_TAU * rng.uniform(0.5, 1.0) * V)), px)
    if label == 4:  # square grid of lines
        return _step(rng.uniform(0.06, 0.12) - np.minimum(np.abs(fr(U) - 0.5), np.abs(fr(V) - 0.5)), px)
    if label in (5, 6):  # concentric rings / spiral around an off-centre point
        cx, cy = rng.uniform(-0.6, 0.6, 2)
        r = np.hypot(x - cx, y - cy) * f
        twist = 0.0 if label == 5 else rng.choice([-3, -2, 2, 3]) * np.arctan2(y - cy, x - cx) / _TAU
        return _step(sinw(r + twist + rng.random()), px)
    if label == 7:  # brick wall: mortar lines, alternate rows offset by half a brick
        row = np.floor(V)
        ub = U * 0.5 + 0.5 * (row % 2)
        dh = np.minimum(fr(V), 1 - fr(V))
        dv = 2.0 * np.minimum(fr(ub), 1 - fr(ub))
        return _step(rng.uniform(0.07, 0.12) - np.minimum(dh, dv), px)
    if label == 8:  # zigzag / chevron stripes
        return _step(sinw(U + rng.uniform(0.6, 1.2) * 2.0 * np.abs(fr(V) - 0.5)), px)
    if label == 9:  # rhombic lattice: two line families 60 deg apart
        U2 = (u * 0.5 + v * np.sqrt(3) / 2) * f + ov
        w = rng.uniform(0.06, 0.12)
        return _step(w - np.minimum(np.abs(fr(U) - 0.5), np.abs(fr(U2) - 0.5)), px)
    if label == 10:  # marbled blotches: smooth noise split at its median
        cells = int(rng.integers(3, 6))
        nz = _smooth_noise(rng, size, cells, 1)[..., 0]
        return _step(nz - np.median(nz), 0.5 * cells / size)
    if label == 11:  # hexagonal spots: three plane waves 120 deg apart
        ph = rng.uniform(0, _TAU, 2)
        s = sum(np.cos(_TAU * f * (x * np.cos(theta + k * _TAU / 3) + y * np.sin(theta + k * _TAU / 3)) + p)
                for k, p in enumerate((ph[0], ph[1], -ph[0] - ph[1])))
        return _step((s - 1.2) / (_TAU * 1.5), px)
    if label == 12:  # fish scales: rows of overlapping arcs
        row = np.floor(V)
        us = fr(U + 0.5 * (row % 2)) - 0.5
        return _step(rng.uniform(0.05, 0.1) - np.abs(np.hypot(us, fr(V)) - 0.5), px)
    if label == 13:  # triangles: each lattice cell split along its diagonal
        return _step((fr(U) - fr(V)) / np.sqrt(2), px)
    if label == 14:  # plaid: two stripe sets of different period add to three tones
        g = rng.uniform(0.5, 1.5)
        return 0.5 * _step(sinw(U) - 0.05, px) + 0.5 * _step(sinw(g * V) - 0.05, px)
    if label == 15:  # scattered random dots
        k = int(rng.integers(8, 18))
        c = rng.uniform(-1, 1, (k, 1, 1, 2))
        r = rng.uniform(0.08, 0.16, (k, 1, 1))
        d = r - np.hypot(x - c[..., 0], y - c[..., 1])
        return _step(d.max(axis=0), 2.0 / size)
    if label == 16:  # dashed lines, dashes staggered between lines
        line = rng.uniform(0.1, 0.18) - np.abs(fr(U) - 0.5)
        dash = sinw(V * 0.6 + np.floor(U) * 0.37) + 0.04
        return _step(np.minimum(line, dash), px)
    if label == 17:  # cellular veins: boundaries of a random Voronoi tessellation
        k = int(rng.integers(8, 16))
        c = rng.uniform(-1.2, 1.2, (k, 1, 1, 2))
        d = np.partition(np.hypot(x - c[..., 0], y - c[..., 1]), 1, axis=0)
        return _step(rng.uniform(0.02, 0.05) - (d[1] - d[0]) / 2, 2.0 / size)
    if label == 18:  # starburst rays from an off-centre point
        cx, cy = rng.uniform(-0.5, 0.5, 2)
        m = int(rng.integers(5, 12))
        r = np.hypot(x - cx, y - cy)
        return _step(np.sin(m * np.arctan2(y - cy, x - cx) + rng.uniform(0, _TAU)) * r / m, 2.0 / size)
    # label 19: speckles: top quintile of fine-grained noise
    cells = int(rng.integers(10, 15))
    nz = _smooth_noise(rng, size, cells, 1)[..., 0]
    return _step(nz - np.quantile(nz, 0.8), 0.5 * cells / size)


def _textures(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Mimics the Describable Textures Dataset (DTD): 20 pattern families (stripes, checks, dots,
    waves, grid, rings, spiral, bricks, zigzag, rhombic lattice, marble, hex spots, scales, triangles,
    plaid, scattered dots, dashes, veins, starburst, speckles). Class signal: the pattern's structure.
    Nuisance: two random colours, orientation, scale, phase, uneven illumination, noise."""
    p = _texture_pattern(label, rng, size)
    v1 = rng.uniform(0.15, 0.95)
    c1 = _hsv(rng.random(), rng.uniform(0.2, 0.9), v1)
    c2 = _hsv(rng.random(), rng.uniform(0.2, 0.9), _far_value(rng, v1, 0.3))
    img = c1 + p[..., None] * (c2 - c1)
    img = img * (0.8 + 0.4 * _smooth_noise(rng, size, 2, 1))
    return _finish(img, rng, 0.03)


@lru_cache(maxsize=1)
def _sign_symbols() -> list[list[tuple[np.ndarray, int]]]:
    """10 pictograms in a [-1, 1] frame, as (polygon, fill) lists."""
    r = _rect
    arrow = [(r(-0.18, -0.1, 0.18, 0.9), 255), (np.array([[-0.6, -0.1], [0, -0.9], [0.6, -0.1]]), 255)]
    turn = lambda parts, a: [(p @ _rot(a).T, fill) for p, fill in parts]  # noqa: E731
    bar = r(-0.9, -0.18, 0.9, 0.18)
    zig = np.array([[-0.8, 0.5], [-0.3, -0.5], [0.1, 0.3], [0.5, -0.5], [0.85, 0.2]])
    # a zigzag polyline thickened into a polygon strip
    normal = np.array([0.0, 0.17])
    return [
        arrow,  # ahead
        turn(arrow, -np.pi / 2),  # left
        turn(arrow, np.pi / 2),  # right
        [(r(-0.8, -0.25, 0.8, 0.25), 255)],  # bar
        [(bar @ _rot(np.pi / 4).T, 255), (bar @ _rot(-np.pi / 4).T, 255)],  # cross
        [(r(-0.15, -0.9, 0.15, 0.35), 255), (_ell(0, 0.7, 0.18, 0.18), 255)],  # exclamation
        [(_ell(0, 0, 0.45, 0.45), 255)],  # dot
        [(r(-0.55, -0.8, -0.2, 0.8), 255), (r(0.2, -0.8, 0.55, 0.8), 255)],  # two bars
        [(np.concatenate([zig - normal, (zig + normal)[::-1]]), 255)],  # zigzag
        [(_ell(0, 0, 0.7, 0.7), 255), (_ell(0, 0, 0.4, 0.4), 0)],  # ring
    ]


_SIGN_PARTS = ("border", "face", "symbol")  # mask labels OBJECT, OBJECT + 1, OBJECT + 2
_SIGN_BORDER, _SIGN_FACE, _SIGN_SYMBOL = (OBJECT + i for i in range(len(_SIGN_PARTS)))


def _signs(label: int, rng: np.random.Generator, size: int, seg=_NO_SEG) -> np.ndarray:
    """Mimics GTSRB (43 classes): 4 sign types (red-rimmed disc, blue disc, red-rimmed warning
    triangle, yellow diamond) x 10 pictograms, plus stop octagon, yield triangle and end-of-restriction
    disc. Class signal: sign shape x rim/fill colour x pictogram. Nuisance: position, size, tilt,
    perspective squash, lighting (very dark to bright), background clutter, pole, blur and noise."""
    img, _ = _colour_background(rng, size, cells=4, sat=(0.0, 0.5))
    img = _scatter_distractors(img, rng, size, (1, 4), sat=(0.0, 0.6), seg=seg)
    cx, cy = 0.5 + rng.uniform(-0.1, 0.1, 2)
    radius = rng.uniform(0.3, 0.44)
    if rng.random() < 0.5:
        pole = _box(size, cx - 0.03, cy, cx + 0.03, 1.0)
        img = _paint(img, pole, rng.uniform(0.3, 0.6))
        seg.paint(pole, DISTRACTOR)  # carries no class information
    angle, sx = rng.uniform(-0.15, 0.15), rng.uniform(0.8, 1.0)
    jit = lambda: rng.uniform(-0.02, 0.02)  # noqa: E731 - colour jitter
    red = _hsv(0.99 + jit(), rng.uniform(0.7, 1), rng.uniform(0.6, 1))
    blue = _hsv(0.6 + jit(), rng.uniform(0.7, 1), rng.uniform(0.5, 1))
    yellow = _hsv(0.14 + jit(), rng.uniform(0.7, 1), rng.uniform(0.75, 1))
    white = np.full(3, rng.uniform(0.8, 1.0), np.float32)
    black = np.full(3, rng.uniform(0.0, 0.2), np.float32)
    circle, tri, diamond = _regular(32), _regular(3), _regular(4)

    # (outer polygon, colour), (inner polygon, colour), symbol colour, symbol scale, symbol offset
    if label < 40:
        kind, sym = divmod(label, 10)
        layers, sym_colour, sym_scale, sym_dy = {
            0: ([(circle, red), (circle * 0.76, white)], black, 0.45, 0.0),
            1: ([(circle, white), (circle * 0.9, blue)], white, 0.5, 0.0),
            2: ([(tri * 1.15 + [0, 0.2], red), (tri * 0.78 + [0, 0.2], white)], black, 0.3, 0.22),
            3: ([(diamond, black), (diamond * 0.86, yellow)], black, 0.4, 0.0),
        }[kind]
        symbol = _sign_symbols()[sym]
    elif label == 40:  # stop
        octagon = _regular(8, 1.0, np.pi / 8)
        layers, sym_colour, sym_scale, sym_dy = [(octagon, white), (octagon * 0.9, red)], white, 0.55, 0.0
        symbol = [(_rect(-0.9, -0.22, 0.9, 0.22), 255)]
    elif label == 41:  # yield: inverted triangle, no pictogram
        inv = _regular(3, 1.0, np.pi / 2)
        layers, sym_colour, sym_scale, sym_dy = [(inv * 1.15 - [0, 0.2], red), (inv * 0.7 - [0, 0.2], white)], None, 0, 0
        symbol = []
    else:  # end of restriction: white disc, thin black rim, diagonal stripe
        layers, sym_colour, sym_scale, sym_dy = [(circle, black), (circle * 0.92, white)], black, 0.75, 0.0
        symbol = [(_rect(-1.0, -0.12, 1.0, 0.12) @ _rot(-np.pi / 4).T, 255)]

    for (poly, colour), part in zip(layers, (_SIGN_BORDER, _SIGN_FACE), strict=True):  # outer, then inner
        m = _Mask(size)
        m.poly(_place(poly, cx, cy, radius, angle, sx))
        alpha = m.alpha()
        img = _paint(img, alpha, colour)
        seg.paint(alpha, part)
    if symbol:
        m = _Mask(size)
        _draw_parts(m, [(p * sym_scale + [0.0, sym_dy], fill) for p, fill in symbol], cx, cy, radius, angle, sx)
        alpha = m.alpha()
        img = _paint(img, alpha, sym_colour)
        seg.paint(alpha, _SIGN_SYMBOL)
    img = img * rng.uniform(0.35, 1.15) * (1 + rng.uniform(-0.1, 0.1, 3)).astype(np.float32)
    img = _blur(img, rng.uniform(0.0, 1.0) * size / 32)
    return _finish(img, rng, 0.03)


def _petal(length: float, width: float, pointed: bool, k: int = 10) -> np.ndarray:
    """Petal outline along +x from the flower centre: rounded (elliptic) or pointed (lanceolate) tip."""
    t = np.linspace(0.0, 1.0, k)
    w = width * (np.sin(np.pi * t**0.7) if pointed else np.sqrt(np.clip(1 - (2 * t - 1) ** 2, 0, 1)))
    upper = np.stack([t * length, w], axis=1)
    lower = np.stack([t * length, -w], axis=1)[::-1]
    return np.concatenate([upper, lower])


_FLOWER_PARTS = ("petals", "centre")  # mask labels OBJECT, OBJECT + 1
_PETALS, _FLOWER_CENTRE = OBJECT, OBJECT + 1


def _flowers(label: int, rng: np.random.Generator, size: int, seg=_NO_SEG) -> np.ndarray:
    """Mimics Oxford Flowers-102 (fine-grained): 24 classes = petal count 3..8 x rounded or pointed
    petals x warm (red-yellow) or cool (blue-purple) palette. Class signal: petal count and shape,
    coarse hue family. Nuisance: exact hue, saturation, brightness, rotation, size, position, per-petal
    angle and length jitter, centre disc colour and size, foliage background with leaves, noise."""
    count = 3 + label % 6
    pointed = bool((label // 6) % 2)
    warm = label < 12
    hue = rng.uniform(-0.06, 0.16) if warm else rng.uniform(0.55, 0.86)

    foliage = _hsv(rng.uniform(0.2, 0.4), rng.uniform(0.4, 0.9), rng.uniform(0.15, 0.45))
    img = foliage * (0.6 + 0.8 * _smooth_noise(rng, size, 4))
    x, y = _grid01(size)
    for _ in range(int(rng.integers(2, 6))):  # leaves: rotated ellipses in other greens
        lx, ly, a = rng.random(), rng.random(), rng.uniform(0, np.pi)
        du = (x - lx) * np.cos(a) + (y - ly) * np.sin(a)
        dv = -(x - lx) * np.sin(a) + (y - ly) * np.cos(a)
        rl, rw = rng.uniform(0.1, 0.25), rng.uniform(0.03, 0.07)
        leaf = _step(1.0 - np.hypot(du / rl, dv / rw), 2.0 / (size * rw))
        img = _paint(img, leaf, _hsv(rng.uniform(0.22, 0.4), rng.uniform(0.5, 1), rng.uniform(0.1, 0.55)))
        seg.paint(leaf, DISTRACTOR)

    cx, cy = 0.5 + rng.uniform(-0.08, 0.08, 2)
    radius = rng.uniform(0.34, 0.46)
    a0 = rng.uniform(0, _TAU)
    width = min(0.4, 0.75 * np.sin(np.pi / count))
    mask = _Mask(size)
    for i in range(count):
        a = a0 + i * _TAU / count + rng.uniform(-0.05, 0.05)
        mask.poly(_place(_petal(rng.uniform(0.9, 1.0), width, pointed), cx, cy, radius, a))
    petals = mask.alpha()
    img = _paint(img, petals, _hsv(hue, rng.uniform(0.45, 1.0), rng.uniform(0.75, 1.0)))
    seg.paint(petals, _PETALS)
    centre = _hsv(rng.uniform(0.06, 0.16), rng.uniform(0.6, 1.0), rng.uniform(0.3, 0.9))
    disc = _disc(size, cx, cy, radius * rng.uniform(0.15, 0.25))
    img = _paint(img, disc, centre)
    seg.paint(disc, _FLOWER_CENTRE)
    return _finish(img, rng, 0.03)


_ALL_GLYPH_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
                    "DejaVuSansMono.ttf", "DejaVuSans-Oblique.ttf")
# 100 characters from 8 non-Latin scripts, picked so that no two (and none with a Latin letter or
# digit) overlap by IoU > 0.55 once size-normalised; the fonts listed per script cover every
# character (checked against the DejaVu 2.35 cmaps bundled with matplotlib). Each font plays the
# role of one Omniglot "drawer".
_GLYPH_SCRIPTS = (
    ("\u0396\u03a8\u03a9\u03b1\u03b2\u03b6\u03b7\u03b9\u03bb\u03bd\u03c0\u03c2\u03c4", _ALL_GLYPH_FONTS),  # Greek
    ("\u0414\u0416\u0419\u041b\u0426\u0427\u0428\u0429\u042a\u042b\u042e\u0433\u0444", _ALL_GLYPH_FONTS),  # Cyrillic
    ("\u0531\u0533\u0534\u0536\u0539\u053a\u053b\u053c\u053d\u053e\u053f\u0540\u0541", _ALL_GLYPH_FONTS),  # Armenian
    ("\u10d0\u10d1\u10d2\u10d3\u10d4\u10d5\u10d6\u10d7\u10d9\u10da\u10e0\u10e1\u10e2", _ALL_GLYPH_FONTS),  # Georgian
    ("\u05d1\u05d2\u05d3\u05d4\u05da\u05dc\u05de\u05e2\u05e5\u05e6",
     ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf")),  # Hebrew
    ("\u143b\u148f\u148e\u1519\u157a\u1504\u1414\u1415\u158d\u14c5\u14f4\u147d\u1468\u1554",
     ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf")),  # Canadian syllabics
    ("\u2d30\u2d32\u2d38\u2d3a\u2d3b\u2d3c\u2d3d\u2d3e\u2d3f\u2d41\u2d42\u2d43",
     ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")),  # Tifinagh
    ("\u07cc\u07cd\u07ce\u07d0\u07d1\u07d2\u07d3\u07d6\u07d8\u07d9\u07da\u07dc",
     ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf")),  # N'Ko
)
_GLYPHS = tuple((ch, fonts) for chars, fonts in _GLYPH_SCRIPTS for ch in chars)


@lru_cache(maxsize=4096)
def _glyph_source(label: int, font_idx: int, stroke: int, m: int) -> Image.Image:
    """Character `label` in one font and pen width, size-normalised into an m x m 'L' mask."""
    ch, fonts = _GLYPHS[label]
    font = _font(fonts[font_idx], int(0.7 * m))
    big = Image.new("L", (2 * m, 2 * m), 0)
    ImageDraw.Draw(big).text((m, m), ch, font=font, fill=255, anchor="mm",
                             stroke_width=int(round(stroke * m / 64)), stroke_fill=255)
    glyph = big.crop(big.getbbox())
    w, h = glyph.size
    s = 0.8 * m / max(w, h)
    glyph = glyph.resize((max(1, round(w * s)), max(1, round(h * s))), Image.Resampling.LANCZOS)
    out = Image.new("L", (m, m), 0)
    out.paste(glyph, ((m - glyph.size[0]) // 2, (m - glyph.size[1]) // 2))
    return out


def _glyphs(label: int, rng: np.random.Generator, size: int, seg=_NO_SEG) -> np.ndarray:
    """Mimics Omniglot (few-shot, many classes), grey: 100 characters from Greek, Cyrillic, Armenian,
    Georgian, Hebrew, Canadian syllabics, Tifinagh and N'Ko. Class signal: character identity.
    Nuisance: 'drawer' (font face), pen width, rotation (+-15 deg), shear, scale, aspect, position,
    ink and paper tone, noise. With the default 500 training images this is 5-shot."""
    fonts = _GLYPHS[label][1]
    m = max(64, 2 * size)
    src = _glyph_source(label, int(rng.integers(len(fonts))), int(rng.integers(0, 3)), m)
    a = rng.uniform(-0.26, 0.26)
    shear = np.array([[1.0, rng.uniform(-0.25, 0.25)], [0.0, 1.0]])
    fwd = rng.uniform(0.75, 1.0) * _rot(a) @ shear @ np.diag([rng.uniform(0.85, 1.15), 1.0])
    t = rng.uniform(-0.08, 0.08, 2)
    inv = np.linalg.inv(fwd)
    out = 2 * size  # render at 2x, then box-reduce: bilinear alone aliases thin strokes
    # output pixel x -> normalised q = x/out - 0.5 -> source p = inv (q - t) -> source pixel (p + 0.5) m
    lin = inv * m / out
    const = m * (inv @ (-0.5 - t)) + 0.5 * m
    coeffs = (lin[0, 0], lin[0, 1], const[0], lin[1, 0], lin[1, 1], const[1])
    warped = src.transform((out, out), Image.Transform.AFFINE, coeffs, resample=Image.Resampling.BILINEAR,
                           fillcolor=0).reduce(2)
    ink = np.asarray(warped, dtype=np.float32) / 255.0
    seg.paint(ink, OBJECT)
    paper, pen = rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.25)
    return _finish(paper + ink * (pen - paper), rng, 0.03)


_DIGIT_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf",
                "DejaVuSansMono-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif-Italic.ttf")


def _digits(label: int, rng: np.random.Generator, size: int, seg=_NO_SEG) -> np.ndarray:
    """Mimics SVHN: a house-number crop, 10 classes. Class signal: the digit nearest the centre.
    Nuisance: typeface (8 DejaVu faces), digit size, colour and polarity, flanking digits of the same
    number cut by the crop, position jitter, tilt (+-10 deg), background texture, blur and noise."""
    bg, v_bg = _colour_background(rng, size, cells=3, sat=(0.0, 0.7))
    pad = size // 4  # draw on a larger canvas so the tilt below does not expose empty corners
    canvas = Image.new("RGB", (size + 2 * pad, size + 2 * pad))
    canvas.paste(Image.fromarray(_finish(bg, rng, 0.0)).resize(canvas.size, Image.Resampling.BILINEAR))
    font = _font(_DIGIT_FONTS[int(rng.integers(len(_DIGIT_FONTS)))], max(8, int(round(size * rng.uniform(0.5, 0.8)))))
    colour = tuple(int(c * 255) for c in _hsv(rng.random(), rng.uniform(0.0, 0.9), _far_value(rng, v_bg, 0.4)))
    draw = ImageDraw.Draw(canvas)
    xc = pad + size * (0.5 + rng.uniform(-0.08, 0.08))
    yc = pad + size * (0.5 + rng.uniform(-0.06, 0.06))
    gap = font.size * rng.uniform(-0.05, 0.15)
    centre_w = font.getlength(str(label))
    # coverage canvases: the same text in white on black, turned and cropped like the image
    centre_ink = Image.new("L", canvas.size, 0) if seg.recording else None
    flank_ink = Image.new("L", canvas.size, 0) if seg.recording else None
    draw.text((xc, yc), str(label), font=font, fill=colour, anchor="mm")
    if centre_ink is not None:
        ImageDraw.Draw(centre_ink).text((xc, yc), str(label), font=font, fill=255, anchor="mm")
    for side in (-1, 1):
        if rng.random() < 0.7:
            d = str(int(rng.integers(10)))
            xy = (xc + side * ((centre_w + font.getlength(d)) / 2 + gap), yc)
            draw.text(xy, d, font=font, fill=colour, anchor="mm")
            if flank_ink is not None:
                ImageDraw.Draw(flank_ink).text(xy, d, font=font, fill=255, anchor="mm")
    tilt = float(rng.uniform(-10, 10))
    crop = (pad, pad, pad + size, pad + size)
    canvas = canvas.rotate(tilt, resample=Image.Resampling.BILINEAR)
    if seg.recording:
        ink = lambda im: np.asarray(im.rotate(tilt, resample=Image.Resampling.BILINEAR).crop(crop),  # noqa: E731
                                    dtype=np.float32) / 255.0
        seg.paint(ink(flank_ink), DISTRACTOR)
        seg.paint(ink(centre_ink), OBJECT)  # the class digit wins where the glyphs touch
    img = np.asarray(canvas.crop(crop), dtype=np.float32) / 255.0
    img = _blur(img, rng.uniform(0.0, 0.9) * size / 32)
    return _finish(img, rng, 0.04)


_MOTION_FRAMES = 10


def _motion(label: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Mimics UCF101 as seen through 'dynamic images' (approximate rank pooling of a clip into one
    frame): 12 motion classes = straight motion in 8 compass directions, clockwise or anticlockwise
    circling, zoom (approach), and back-and-forth oscillation. Class signal: the temporal ordering
    encoded as a dark-to-bright trail. Nuisance: start point, speed, radius, object size and colour,
    a second distractor object with its own random straight motion, camera shake, static scene
    texture, noise."""
    x, y = _grid_pm1(size)
    t = np.linspace(0.0, 1.0, _MOTION_FRAMES)
    c = rng.uniform(-0.25, 0.25, 2)
    sigma = np.full(_MOTION_FRAMES, rng.uniform(0.07, 0.12))
    if label < 8:
        d = np.array([np.cos(label * np.pi / 4), np.sin(label * np.pi / 4)])
        path = c + (t[:, None] - 0.5) * rng.uniform(0.9, 1.3) * d
    elif label < 10:
        sign = 1.0 if label == 8 else -1.0  # y points down, so +angle is clockwise on screen
        a = rng.uniform(0, _TAU) + sign * 1.5 * np.pi * t
        path = c + rng.uniform(0.35, 0.55) * np.stack([np.cos(a), np.sin(a)], axis=1)
    elif label == 10:
        path = np.repeat(c[None], _MOTION_FRAMES, axis=0)
        sigma = rng.uniform(0.04, 0.07) + t * rng.uniform(0.2, 0.3)
    else:
        axis = rng.uniform(0, np.pi)
        path = c + rng.uniform(0.3, 0.5) * np.sin(2 * _TAU * t)[:, None] * np.array([np.cos(axis), np.sin(axis)])
    path = path + rng.normal(0, 0.02, path.shape)  # camera shake

    # a weaker distractor moving in a random straight line keeps 'any trail' from being the answer
    da = rng.uniform(0, _TAU)
    dpath = rng.uniform(-0.5, 0.5, 2) + (t[:, None] - 0.5) * rng.uniform(0.5, 1.0) * np.array([np.cos(da), np.sin(da)])

    w = (2 * np.arange(_MOTION_FRAMES) - _MOTION_FRAMES + 1) / (_MOTION_FRAMES - 1)  # rank-pooling weights in [-1, 1]
    blob = lambda p, s: np.exp(-((x - p[:, 0, None, None]) ** 2 + (y - p[:, 1, None, None]) ** 2)  # noqa: E731
                               / (2 * s[:, None, None] ** 2))
    dyn = np.tensordot(w, blob(path, sigma), axes=1)
    dyn = dyn / max(1e-6, float(np.abs(dyn).max()))
    ddyn = np.tensordot(w, blob(dpath, np.full(_MOTION_FRAMES, 0.06)), axes=1)
    ddyn = 0.5 * ddyn / max(1e-6, float(np.abs(ddyn).max()))

    img = 0.5 + 0.12 * (_smooth_noise(rng, size, 4) - 0.5)
    img = img + dyn[..., None] * 0.5 * _hsv(rng.random(), rng.uniform(0.5, 1.0), 1.0)
    img = img + ddyn[..., None] * 0.5 * _hsv(rng.random(), rng.uniform(0.5, 1.0), 1.0)
    return _finish(img, rng, 0.03)
