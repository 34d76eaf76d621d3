"""Domains that share a part vocabulary, and domains that do not: the design of the part-vocabulary experiment
(:func:`gift_cl.concepts.refute.part_vocabulary_test`, ``analysis/part_vocabulary.py``).

Every image shows one object made of two parts: a large **frame** and one or more small **markers**, painted in
independent random colours on a textured background. Three vocabularies give the parts their shapes:

========== ============ =============
vocabulary frame        marker
========== ============ =============
``a``      filled square disc ("dot")
``b``      ring         triangle
``c``      plus-shaped cross short bar
========== ============ =============

and three rules make the classes (4 per task) from where the markers are, never from their shape or colour:

- ``position``: one marker to the left of, right of, above or below the frame;
- ``count``: 1, 2, 3 or 4 markers around the frame;
- ``inside``: one marker on the frame, in its upper or lower half, or outside it, above or below.

Tasks with the same vocabulary share their parts (the same shapes, in other arrangements); tasks with different
vocabularies share none, though their parts play the same roles at the same sizes. The six domains
(:data:`PART_DOMAINS`) form vocabulary groups of sizes 3, 2 and 1, the smallest design with every task pair
declared whose task-relabelling permutation test can reach p < 0.05 (min p = 1/60; ``refute.part_vocabulary_test``).

Masks label the frame ``OBJECT`` and the markers ``OBJECT + 1`` (``MASK_LABELS``: the shape names); the parts'
roles, comparable across vocabularies, are :data:`PART_ROLES`.
"""
from __future__ import annotations

import numpy as np

from .primitives import (
    _NO_SEG,
    _TAU,
    OBJECT,
    _colour_background,
    _disc,
    _far_value,
    _finish,
    _hsv,
    _Mask,
    _paint,
    _place,
    _rect,
    _regular,
)

VOCABULARIES: dict[str, tuple[str, str]] = {"a": ("square", "dot"), "b": ("ring", "triangle"), "c": ("cross", "bar")}
PART_ROLES = ("frame", "marker")  # the role of mask label OBJECT + i, the same in every vocabulary
RULES = ("position", "count", "inside")
# the experiment's six tasks: vocabulary groups {a: 3 tasks, b: 2, c: 1}
PART_DOMAINS: dict[str, str] = {"parts_a_position": "a", "parts_a_count": "a", "parts_a_inside": "a",
                                "parts_b_position": "b", "parts_b_count": "b", "parts_c_position": "c"}
_FRAME, _MARKER = OBJECT, OBJECT + 1


# per vocabulary: the frame's outer radius per unit half-size, its vertical extent per unit outer radius when
# upright, and the marker's size factor (a triangle or a bar of the dot's extent covers less than the dot)
_OUTER = {"a": float(np.sqrt(2.0)), "b": 1.0, "c": float(np.hypot(1.0, 0.36))}
_UPRIGHT = {"a": float(1 / np.sqrt(2.0)), "b": 1.0, "c": float(1 / np.hypot(1.0, 0.36))}
_MARKER_SCALE = {"a": 1.0, "b": 1.4, "c": 1.3}


def _frame_alpha(vocabulary: str, size: int, cx: float, cy: float, outer: float, angle: float) -> np.ndarray:
    """The frame's coverage; ``outer``: the radius of the smallest circle around its centre that holds it (the
    three frames then cover about the same area: 2.0, 2.2 and 2.1 outer²)."""
    half = outer / _OUTER[vocabulary]
    mask = _Mask(size)
    if vocabulary == "a":
        mask.poly(_place(_rect(-1, -1, 1, 1), cx, cy, half, angle))
    elif vocabulary == "b":
        mask.disc(cx, cy, half)
        mask.disc(cx, cy, 0.55 * half, fill=0)
    else:
        w = 0.36
        mask.poly(_place(_rect(-1, -w, 1, w), cx, cy, half, angle))
        mask.poly(_place(_rect(-w, -1, w, 1), cx, cy, half, angle))
    return mask.alpha()


def _marker_alpha(vocabulary: str, size: int, cx: float, cy: float, extent: float, angle: float) -> np.ndarray:
    """One marker's coverage; ``extent``: the radius of the circle around its centre that holds it."""
    if vocabulary == "a":
        return _disc(size, cx, cy, extent)
    mask = _Mask(size)
    if vocabulary == "b":
        mask.poly(_place(_regular(3, 1.0), cx, cy, extent, angle))
    else:
        mask.poly(_place(_rect(-1.0, -0.42, 1.0, 0.42), cx, cy, extent / np.hypot(1.0, 0.42), angle))
    return mask.alpha()


def _layout(rule: str, label: int, vocabulary: str, rng: np.random.Generator
            ) -> tuple[float, list[tuple[float, float]], float, float]:
    """The frame's outer radius, the marker centres (relative to the frame's centre), the markers' extent and
    the frame's angle: the class is the rule applied to ``label``. Every part stays inside the image and each
    marker covers more than half of a 4-pixel token at 32 px."""
    angle = float(rng.uniform(0, _TAU)) if vocabulary != "b" else 0.0
    extent = rng.uniform(0.09, 0.1) * _MARKER_SCALE[vocabulary]
    if rule == "position":
        outer = rng.uniform(0.16, 0.19)
        d = outer + extent + 0.02
        direction = (np.pi, 0.0, -np.pi / 2, np.pi / 2)[label] + rng.uniform(-0.2, 0.2)  # left, right, above, below
        return outer, [(d * np.cos(direction), d * np.sin(direction))], extent, angle
    if rule == "count":
        outer = rng.uniform(0.14, 0.17)
        d = outer + extent + 0.02
        start = rng.uniform(0, _TAU)
        places = [(d * np.cos(a), d * np.sin(a)) for a in start + np.arange(label + 1) * _TAU / (label + 1)
                  + rng.uniform(-0.15, 0.15, label + 1)]
        return outer, places, extent, angle
    # inside: label // 2 = on the frame (0) or outside it (1), label % 2 = upper (0) or lower (1); the frame is
    # upright, so "above" and "below" are the image's
    upright = rng.uniform(0.18, 0.21)  # the frame's vertical half-extent
    sign = -1.0 if label % 2 == 0 else 1.0
    d = 0.45 * upright if label // 2 == 0 else upright + extent + 0.02
    return upright / _UPRIGHT[vocabulary], [(rng.uniform(-0.03, 0.03), sign * d)], extent, 0.0


def _render(vocabulary: str, rule: str, label: int, rng: np.random.Generator, size: int, seg=_NO_SEG) -> np.ndarray:
    img, v = _colour_background(rng, size)
    outer, places, extent, angle = _layout(rule, label, vocabulary, rng)
    reach = max(max(np.hypot(px, py) for px, py in places) + extent, outer)
    room = max(0.0, 0.49 - reach)  # the object moves where it stays inside the image
    cx, cy = 0.5 + rng.uniform(-room, room, 2)
    frame_v = _far_value(rng, v, 0.4)
    frame = _frame_alpha(vocabulary, size, cx, cy, outer, angle)
    img = _paint(img, frame, _hsv(rng.random(), rng.uniform(0.4, 1.0), frame_v))
    seg.paint(frame, _FRAME)
    marker_v = _far_value(rng, frame_v if rule == "inside" and label // 2 == 0 else v, 0.4)
    colour = _hsv(rng.random(), rng.uniform(0.4, 1.0), marker_v)
    for px, py in places:
        marker = _marker_alpha(vocabulary, size, cx + px, cy + py, extent, rng.uniform(0, _TAU))
        img = _paint(img, marker, colour)
        seg.paint(marker, _MARKER)
    return _finish(img, rng, 0.03)


def _domain(vocabulary: str, rule: str):
    shapes = VOCABULARIES[vocabulary]

    def render(label: int, rng: np.random.Generator, size: int, seg=_NO_SEG) -> np.ndarray:
        return _render(vocabulary, rule, label, rng, size, seg)

    render.__name__ = f"_parts_{vocabulary}_{rule}"
    what = {"position": "the marker left of, right of, above or below the frame",
            "count": "1, 2, 3 or 4 markers around the frame",
            "inside": "the marker on the frame (upper or lower half) or outside it (above or below)"}[rule]
    render.__doc__ = (f"Part vocabulary {vocabulary!r} ({shapes[0]} frame, {shapes[1]} markers), rule {rule!r}: "
                      f"4 classes = {what}. Nuisance: the parts' colours, frame size and angle, marker angle, "
                      "position, background texture, noise. Masks: frame OBJECT, markers OBJECT + 1.")
    return render


def part_domains() -> list[tuple[str, str, object]]:
    """``[(domain, vocabulary, renderer)]`` of :data:`PART_DOMAINS`, in order."""
    return [(name, vocab, _domain(vocab, name.rsplit("_", 1)[1])) for name, vocab in PART_DOMAINS.items()]
