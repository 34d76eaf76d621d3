"""Procedural image domains: a seeded, fully offline stand-in for the Visual Domain Decathlon.

VDD (ImageNet, Aircraft, CIFAR-100, DPed, DTD, GTSRB, Flowers, Omniglot, SVHN, UCF101) cannot be
downloaded here, so each of its domains gets a NumPy/Pillow generator that keeps the property that
matters for continual learning: a different visual vocabulary, class count (2..100), colour or grey,
coarse or fine-grained. A second, disjoint set of *upstream* domains (edges, shapes, colour, texture,
part layout) exists only to pretrain a small ViT, so the decathlon stays held out. Six more domains
(``PART_VOCABULARY``, :mod:`~gift_cl.data.procedural.parts`) share or do not share a part vocabulary: the design
of the part-vocabulary experiment of the interpretability analysis.

Every image is a function of (domain, seed, split, n, image_size) only: each call draws from its own
``np.random.default_rng`` whose seed is a SHA-256 of those fields, so results do not depend on global
RNG state or on the order in which domains are generated. Generated arrays are cached as ``.npz``
under ``$GIFT_CL_CACHE/procedural`` (default ``~/.cache/gift_cl/procedural``).

Coordinates: shapes are drawn in canonical frames (roughly [-1, 1]^2, y pointing down) and placed in
unit image coordinates ([0, 1]^2) by ``_place``; analytic patterns use the pixel-centre grids from
``_grid01`` / ``_grid_pm1``. Nuisance parameters are drawn in unit coordinates, so a domain has the
same statistics at 32, 64 or 72 px (individual images differ between sizes: pixel noise consumes a
size-dependent amount of randomness).

Masks (ground truth for interpretability, ``generate(..., masks=True)``): every domain that draws an
object records, beside the image, a per-pixel label map from the very draws that paint it: 0 background,
1 distractor (everything drawn that is not the class object: clutter, poles, stripes, shadows, leaves,
flanking digits, look-alike confusers), 2.. the object's parts (``MASK_LABELS``; the object mask is
``labels >= OBJECT``). Recording draws no random numbers, so images and labels are bit-identical with
or without masks. A layer claims a pixel where it covers at least half of it (alpha >= 0.5: from there on
its colour dominates the pixel); later layers overwrite earlier ones, as paint does. Blur, lighting and
noise applied after painting do not move labels.

Modules: :mod:`~gift_cl.data.procedural.primitives` (shapes, masks, painting, noise),
:mod:`~gift_cl.data.procedural.fonts`, :mod:`~gift_cl.data.procedural.decathlon` (the ten downstream
domains), :mod:`~gift_cl.data.procedural.upstream` (the pretraining domains),
:mod:`~gift_cl.data.procedural.parts` (the part-vocabulary domains),
:mod:`~gift_cl.data.procedural.registry` (the domain registry, :func:`generate`, :func:`load_procedural`) and
:mod:`~gift_cl.data.procedural.cache` (the on-disk cache). The public names are re-exported here; configs name
``gift_cl.data.procedural.load_procedural``.
"""
from gift_cl.data.procedural.cache import MASK_VERSION, VERSION
from gift_cl.data.procedural.primitives import BACKGROUND, DISTRACTOR, OBJECT
from gift_cl.data.procedural.registry import (
    DECATHLON,
    DOMAINS,
    MASK_LABELS,
    PART_VOCABULARY,
    UPSTREAM,
    DomainSpec,
    generate,
    load_procedural,
    object_mask,
)

__all__ = ["BACKGROUND", "DECATHLON", "DISTRACTOR", "DOMAINS", "MASK_LABELS", "MASK_VERSION", "OBJECT", "PART_VOCABULARY",
           "UPSTREAM",
           "VERSION", "DomainSpec", "generate", "load_procedural", "object_mask"]
