"""Formula-driven images for supervised pretraining: IFS fractals and radial-contour "atoms", rendered in torch.

No real image or pretrained weight can be downloaded here, so the project's backbone is pretrained on images
that formulas make (formula-driven supervised learning: FractalDB, Kataoka et al. 2020 / Nakashima et al.
2021; VisualAtom, Takashima et al. 2023). Two families, each a set of *categories*:

- **fractal**: an iterated function system of 2–4 contractive affine maps (FractalDB's construction). A
  category is one system, accepted only if its attractor fills enough of its bounding box; an instance perturbs
  the linear part of every map by ±``jitter`` (FractalDB's intra-category variation) and is rendered by the
  chaos game, each point coloured by the map that placed it.
- **atom**: concentric closed contours ρ = r_k (1 + a₁ sin(n₁φ + φ₁) + a₂ sin(n₂φ + φ₂)) (VisualAtom's
  orbits of two sinusoidal waves); a category fixes the frequencies, amplitudes, phases, the number of
  orbits and whether the shape is outlined or filled; an instance varies line width and amplitude slightly.

Every instance is then posed and painted with nuisance parameters that are *also labels*: hue of the
foreground (12 bins), rotation (8 bins), scale (3 bins), position (3×3 bins), and its *layout*: how much of
each cell of an 8×8 grid the shape covers (a soft mask the renderer knows exactly). Supervising them keeps
colour, orientation, size, location and shape layout in the pooled feature instead of training them away,
which the downstream domains (hue × orientation gratings, signs, glyphs, motion paths) need. 20 % of images
are grey (hue label ignored).

Everything runs batched in torch (on a GPU as fast as training consumes it) and is a pure function of the
category table (``seed``, ``VERSION``) and the ``torch.Generator`` passed to :meth:`FormulaImages.batch`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Bump whenever a category table or a rendered image changes: it is recorded in every pretrained model card.
VERSION = 1
IGNORE = -100  # label of an attribute an image does not have (hue of a grey image, rotation of an atom)
ATTRIBUTE_CLASSES = {"hue": 12, "angle": 8, "scale": 3, "position": 9}
LAYOUT_GRID = 8  # the "layout" target: the object's coverage of each cell of an 8 x 8 grid, in [0, 1]
_SCALE_RANGE = (0.45, 0.95)  # object size as a fraction of the image side
_MAX_MAPS = 4


@dataclass(frozen=True)
class FormulaSpec:
    """The category table: ``n_fractal`` fractal and ``n_atom`` atom categories drawn from ``seed``."""

    n_fractal: int = 500
    n_atom: int = 500
    seed: int = 0

    @property
    def num_categories(self) -> int:
        return self.n_fractal + self.n_atom


def _sample_fractals(n: int, rng: np.random.Generator, min_fill: float = 0.12) -> tuple[np.ndarray, np.ndarray]:
    """``n`` IFS categories: maps (n, 4, 6) as [a, b, c, d, e, f] (x' = [[a, b], [c, d]] x + [e, f]), probs (n, 4).

    A map's spectral norm is capped at 0.8 so that a ±10 % perturbed instance stays contractive; a system is
    kept only if its attractor covers at least ``min_fill`` of a 32×32 raster of its bounding box (FractalDB
    discards systems that collapse to a line or a point the same way).
    """
    maps = np.zeros((n, _MAX_MAPS, 6), np.float32)
    probs = np.zeros((n, _MAX_MAPS), np.float32)
    found = 0
    while found < n:
        k = int(rng.integers(2, _MAX_MAPS + 1))
        m = rng.uniform(-1.0, 1.0, (k, 6))
        lin = m[:, :4].reshape(k, 2, 2)
        sv = np.linalg.svd(lin, compute_uv=False)
        if sv[:, 0].max() > 0.8 or sv[:, 1].min() < 0.05:
            continue
        det = np.abs(np.linalg.det(lin))
        p = det / det.sum()
        pts = _chaos_numpy(m, p, rng)
        lo, hi = pts.min(0), pts.max(0)
        extent = float((hi - lo).max())
        if not np.isfinite(extent) or extent < 1e-6:
            continue
        cells = np.floor((pts - lo) / extent * 31.999).astype(np.int64)
        fill = len(np.unique(cells[:, 0] * 32 + cells[:, 1])) / (32 * 32)
        if fill < min_fill:
            continue
        maps[found, :k] = m
        probs[found, :k] = p
        found += 1
    return maps, probs


def _chaos_numpy(m: np.ndarray, p: np.ndarray, rng: np.random.Generator, walkers: int = 64, steps: int = 40) -> np.ndarray:
    x = rng.uniform(-1.0, 1.0, (walkers, 2))
    out = []
    for s in range(steps):
        i = rng.choice(len(p), size=walkers, p=p)
        a = m[i]
        x = np.stack([a[:, 0] * x[:, 0] + a[:, 1] * x[:, 1] + a[:, 4], a[:, 2] * x[:, 0] + a[:, 3] * x[:, 1] + a[:, 5]], 1)
        if s >= 12:
            out.append(x)
    return np.concatenate(out)


def _sample_atoms(n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` atom categories: (n, 8) = [n₁, n₂, a₁, a₂, φ₁, φ₂, orbits, filled]."""
    n1 = rng.integers(1, 13, n)
    n2 = rng.integers(1, 25, n)
    a1 = rng.uniform(0.05, 0.35, n)
    a2 = rng.uniform(0.0, 0.25, n)
    ph1 = rng.uniform(0, 2 * math.pi, n)
    ph2 = rng.uniform(0, 2 * math.pi, n)
    orbits = rng.integers(1, 4, n)
    filled = (rng.random(n) < 0.3).astype(np.float64)
    return np.stack([n1, n2, a1, a2, ph1, ph2, orbits, filled], 1).astype(np.float32)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] (any shape) to RGB with a trailing channel dimension."""
    k = (torch.tensor([5.0, 3.0, 1.0], device=h.device) + (h % 1.0).unsqueeze(-1) * 6.0) % 6.0
    return v.unsqueeze(-1) - v.unsqueeze(-1) * s.unsqueeze(-1) * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0)


class FormulaImages:
    """Batches of formula-driven images with their labels: ``batch(n, generator)``.

    Labels: ``category`` (0..n_fractal-1 fractals, then atoms) and the attribute heads of
    :data:`ATTRIBUTE_CLASSES`, :data:`IGNORE` where an image has no such attribute.
    """

    def __init__(self, spec: FormulaSpec = FormulaSpec(), image_size: int = 32, device: str | torch.device = "cpu"):
        if spec.n_fractal < 0 or spec.n_atom < 0 or spec.num_categories == 0:
            raise ValueError(f"formula: need at least one category, got {spec}")
        self.spec, self.image_size, self.device = spec, int(image_size), torch.device(device)
        rng = np.random.default_rng([spec.seed, VERSION, 7477])
        maps, probs = _sample_fractals(spec.n_fractal, rng)
        self.maps = torch.from_numpy(maps).to(self.device)
        self.probs = torch.from_numpy(probs).to(self.device)
        self.atoms = torch.from_numpy(_sample_atoms(spec.n_atom, rng)).to(self.device)
        self.raster = 2 * self.image_size  # render at twice the size, average down: anti-aliasing

    @property
    def heads(self) -> dict[str, int]:
        """Output size of every head: classification heads, then ``layout`` (a regression, ``LAYOUT_GRID``²)."""
        return {"category": self.spec.num_categories, **ATTRIBUTE_CLASSES, "layout": LAYOUT_GRID ** 2}

    # ----------------------------------------------------------------------------- pose and paint
    def _uniform(self, n: int, g: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
        return torch.rand(n, generator=g, device=self.device) * (hi - lo) + lo

    def _pose(self, n: int, g: torch.Generator):
        angle = self._uniform(n, g, 0.0, 2 * math.pi)
        scale = self._uniform(n, g, *_SCALE_RANGE)
        centre = torch.rand(n, 2, generator=g, device=self.device) - 0.5  # in [-0.5, 0.5]² of the [-1, 1]² image
        labels = {
            "angle": (angle / (2 * math.pi) * ATTRIBUTE_CLASSES["angle"]).long().clamp_max(ATTRIBUTE_CLASSES["angle"] - 1),
            "scale": ((scale - _SCALE_RANGE[0]) / (_SCALE_RANGE[1] - _SCALE_RANGE[0]) * 3).long().clamp_max(2),
            "position": ((centre + 0.5) * 3).long().clamp(0, 2) @ torch.tensor([3, 1], device=self.device),
        }
        return angle, scale, centre, labels

    def _background(self, n: int, g: torch.Generator, fg_value: torch.Tensor) -> torch.Tensor:
        """Smooth low-frequency colour noise whose brightness stays away from the foreground's: (n, 3, R, R)."""
        value = torch.where(fg_value > 0.5, self._uniform(n, g, 0.0, 0.35), self._uniform(n, g, 0.65, 1.0))
        base = _hsv_to_rgb(self._uniform(n, g), self._uniform(n, g, 0.0, 0.6), value)  # (n, 3)
        noise = torch.rand(n, 3, 4, 4, generator=g, device=self.device) - 0.5
        noise = F.interpolate(noise, size=(self.raster, self.raster), mode="bilinear", align_corners=False)
        return (base[:, :, None, None] + 0.25 * noise).clamp(0.0, 1.0)

    def _finish(self, fg: torch.Tensor, alpha: torch.Tensor, g: torch.Generator, hue_labels: torch.Tensor, value):
        """Composite, average down to ``image_size``, turn 20 % grey; returns images in [0, 1] and hue labels."""
        n = fg.shape[0]
        layout = F.adaptive_avg_pool2d(alpha, LAYOUT_GRID).flatten(1)
        img = self._background(n, g, value) * (1 - alpha) + fg * alpha
        img = F.avg_pool2d(img, 2)
        grey = self._uniform(n, g) < 0.2
        lum = (img * torch.tensor([0.299, 0.587, 0.114], device=self.device)[:, None, None]).sum(1, keepdim=True)
        img = torch.where(grey[:, None, None, None], lum.expand_as(img), img)
        img = (img + 0.02 * torch.randn(img.shape, generator=g, device=self.device)).clamp(0.0, 1.0)
        return img, torch.where(grey, torch.full_like(hue_labels, IGNORE), hue_labels), layout

    def _colour(self, n: int, g: torch.Generator):
        hue = self._uniform(n, g)
        sat = self._uniform(n, g, 0.45, 1.0)
        value = self._uniform(n, g, 0.25, 1.0)
        label = (hue * ATTRIBUTE_CLASSES["hue"]).long().clamp_max(ATTRIBUTE_CLASSES["hue"] - 1)
        return hue, sat, value, label

    # ----------------------------------------------------------------------------- families
    def _fractals(self, cats: torch.Tensor, g: torch.Generator, walkers: int = 64, steps: int = 44, burn: int = 8):
        n, dev, R = len(cats), self.device, self.raster
        maps = self.maps[cats].clone()  # (n, 4, 6)
        jitter = 1.0 + 0.1 * (2 * torch.rand(n, _MAX_MAPS, 4, generator=g, device=dev) - 1)
        maps[..., :4] *= jitter
        probs = self.probs[cats]
        x = torch.rand(n, walkers, 2, generator=g, device=dev) * 2 - 1
        pts_steps: list[torch.Tensor] = []
        which_steps: list[torch.Tensor] = []
        for s in range(steps):
            i = torch.multinomial(probs, walkers, replacement=True, generator=g)  # (n, walkers)
            a = torch.gather(maps, 1, i.unsqueeze(-1).expand(n, walkers, 6))
            x = torch.stack([a[..., 0] * x[..., 0] + a[..., 1] * x[..., 1] + a[..., 4],
                             a[..., 2] * x[..., 0] + a[..., 3] * x[..., 1] + a[..., 5]], -1)
            if s >= burn:
                pts_steps.append(x)
                which_steps.append(i)
        pts, which = torch.cat(pts_steps, 1), torch.cat(which_steps, 1)  # (n, P, 2), (n, P)
        lo, hi = pts.amin(1, keepdim=True), pts.amax(1, keepdim=True)
        extent = (hi - lo).amax(-1, keepdim=True).clamp_min(1e-6)
        pts = (pts - (lo + hi) / 2) / extent * 2  # the attractor's box becomes [-1, 1] (aspect kept)

        angle, scale, centre, labels = self._pose(n, g)
        cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
        px = (cos * pts[..., 0] - sin * pts[..., 1]) * scale[:, None] + centre[:, :1]
        py = (sin * pts[..., 0] + cos * pts[..., 1]) * scale[:, None] + centre[:, 1:]
        col = ((px + 1) / 2 * R).floor().long()
        row = ((py + 1) / 2 * R).floor().long()
        inside = (col >= 0) & (col < R) & (row >= 0) & (row < R)
        flat = (torch.arange(n, device=dev)[:, None] * R * R + row * R + col)[inside]

        hue, sat, value, hue_label = self._colour(n, g)
        map_hue = hue[:, None] + 0.16 * (torch.rand(n, _MAX_MAPS, generator=g, device=dev) - 0.5)  # a hue per map
        point_rgb = _hsv_to_rgb(torch.gather(map_hue, 1, which), sat[:, None].expand_as(which),
                                value[:, None].expand_as(which))[inside]  # (K, 3)
        count = torch.zeros(n * R * R, device=dev).index_add_(0, flat, torch.ones_like(flat, dtype=torch.float32))
        rgb = torch.zeros(n * R * R, 3, device=dev).index_add_(0, flat, point_rgb)
        rgb = (rgb / count.clamp_min(1)[:, None]).view(n, R, R, 3).permute(0, 3, 1, 2)
        alpha = (1 - torch.exp(-1.5 * count)).view(n, 1, R, R)
        img, labels["hue"], labels["layout"] = self._finish(rgb, alpha, g, hue_label, value)
        return img, labels

    def _atoms(self, idx: torch.Tensor, g: torch.Generator):
        n, dev, R = len(idx), self.device, self.raster
        p = self.atoms[idx]  # (n, 8)
        n1, n2, orbits, filled = p[:, 0], p[:, 1], p[:, 6], p[:, 7] > 0.5
        a1 = p[:, 2] * self._uniform(n, g, 0.85, 1.15)
        a2 = p[:, 3] * self._uniform(n, g, 0.85, 1.15)
        angle, scale, centre, labels = self._pose(n, g)
        labels["angle"] = torch.full_like(labels["angle"], IGNORE)  # n-fold symmetric shapes have no canonical angle

        c = (torch.arange(R, device=dev, dtype=torch.float32) + 0.5) / R * 2 - 1
        gy, gx = torch.meshgrid(c, c, indexing="ij")
        u = (gx[None] - centre[:, 0, None, None]) / scale[:, None, None]
        v = (gy[None] - centre[:, 1, None, None]) / scale[:, None, None]
        rho = torch.hypot(u, v)
        phi = torch.atan2(v, u) - angle[:, None, None]
        shape = 1 + a1[:, None, None] * torch.sin(n1[:, None, None] * phi + p[:, 4, None, None]) \
            + a2[:, None, None] * torch.sin(n2[:, None, None] * phi + p[:, 5, None, None])
        shape = shape / (1 + a1 + a2)[:, None, None]  # the outermost orbit stays inside the unit disc
        width = self._uniform(n, g, 0.03, 0.07)[:, None, None]
        pixel = 2.0 / R / scale[:, None, None]
        alpha = torch.zeros(n, R, R, device=dev)
        for k in range(3):  # orbit k at radius (k+1)/orbits, where the category has that many
            radius = (k + 1) / orbits[:, None, None]
            d = (rho - radius * shape).abs()
            line = torch.clamp(0.5 + (width - d) / pixel, 0.0, 1.0)
            inside = torch.clamp(0.5 + (radius * shape - rho) / pixel, 0.0, 1.0)
            ring = torch.where(filled[:, None, None] & (k == orbits[:, None, None] - 1), inside, line)
            alpha = torch.maximum(alpha, ring * (k < orbits)[:, None, None].float())
        hue, sat, value, hue_label = self._colour(n, g)
        fg = _hsv_to_rgb(hue, sat, value)[:, :, None, None].expand(n, 3, R, R)
        img, labels["hue"], labels["layout"] = self._finish(fg, alpha[:, None], g, hue_label, value)
        return img, labels

    # ----------------------------------------------------------------------------- public
    @torch.no_grad()
    def batch(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``n`` images (n, 3, image_size, image_size) in [0, 1], categories balanced in expectation, and labels
        (int64 class indices, :data:`IGNORE` where undefined; ``layout``: float (n, LAYOUT_GRID²))."""
        cats = torch.randint(0, self.spec.num_categories, (n,), generator=generator, device=self.device)
        is_fractal = cats < self.spec.n_fractal
        images = torch.empty(n, 3, self.image_size, self.image_size, device=self.device)
        labels = {k: torch.full((n,), IGNORE, dtype=torch.long, device=self.device) for k in self.heads if k != "layout"}
        labels["layout"] = torch.zeros(n, LAYOUT_GRID ** 2, device=self.device)
        labels["category"] = cats
        for mask, render, offset in ((is_fractal, self._fractals, 0), (~is_fractal, self._atoms, self.spec.n_fractal)):
            if mask.any():
                img, lab = render(cats[mask] - offset, generator)
                images[mask] = img
                for k, v in lab.items():
                    labels[k][mask] = v
        return images, labels
