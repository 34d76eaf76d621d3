"""Ground-truth masks from the procedural generators, and cluster maps scored against them.

Masks: the label table, images bit-identical to those drawn before masks existed, alignment of mask and
painted pixels, caching. Scoring (gift_cl.maskscore): pixels to tokens, AUROC and top-k IoU, selection on
validation images only, nulls and references, a planted concept, the summary row.
"""
from __future__ import annotations

import dataclasses
import hashlib
import warnings

import numpy as np
import pytest
import timm
import torch
from sklearn.metrics import roc_auc_score

from gift_cl import GiftConfig, get_gift_model, maskscore as S
from gift_cl.data import procedural as P
from gift_cl.data.base import DataError
from gift_cl.interpret import (
    cls_attention,
    concept_matrix,
    frozen_patch_tokens,
    grid_maps,
    layer_outputs,
    maps_from_outputs,
    patch_grid,
    untrained_concepts,
)

MASKED = ["objects", "aircraft", "pedestrians", "signs", "flowers", "glyphs", "digits", "up_shapes",
          *P.PART_VOCABULARY]
UNMASKED = ["textures", "gabor100", "motion", "up_edges", "up_spectra", "up_blocks"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test gets an empty cache, so the generators really run."""
    root = tmp_path / "cache"
    monkeypatch.setenv("GIFT_CL_CACHE", str(root))
    return root / "procedural"


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(images.tobytes() + labels.astype("<i8").tobytes()).hexdigest()


# Computed with the generators as they were BEFORE masks were added (same VERSION): the masks must not
# have changed one random draw. (domain, n, split, seed, image_size) -> SHA-256 of images + labels.
DIGESTS = {
    ("objects", 6, "train", 0, 32): "834ab48e1995cefbc43b9c0bca43c39d43ab76baf8f257c1d23209154bc5cd3b",
    ("objects", 4, "val", 1, 48): "375a99273b8043f0d9ec6b7f39753d29a24e43acc8bb144935c72552fa9f7497",
    ("aircraft", 6, "train", 0, 32): "fd9372f21e5a1389288a77f4a1a332104bce41474b226706c70ddc6db2a42d38",
    ("aircraft", 4, "val", 1, 48): "9c303f166c2fd57cd94e17c0a5808b8c05e3facc03da51c4e3d3007f49a1265c",
    ("gabor100", 6, "train", 0, 32): "d40f908841490a23b3a3a703d9bbd43ed1d8433a354eda706e8763c6ffe41449",
    ("pedestrians", 6, "train", 0, 32): "68879e8d5313c833853fe516d4d49bf3de0751a76d1a245a8294f81217ffc7c0",
    ("pedestrians", 4, "val", 1, 48): "e2c8423c8ba5f21ad81be59ba13e89c469fb51cf449ad6f17ff99462c2ec7d1a",
    ("textures", 6, "train", 0, 32): "aef70bb13c7ca0f5c1037b04591b78cd2a8240f8587a9dc22145b99ce216c67d",
    ("signs", 6, "train", 0, 32): "0ec5db22c7b7dd444cb7b69d3639997dc81f803720d5cd214c4c63beb0b383e6",
    ("signs", 4, "val", 1, 48): "e02b614bc7353e6ec97a50e31804a340e16d8529263227af8447d0adbf3a0434",
    ("flowers", 6, "train", 0, 32): "e2fbcabd5f6c0a84b7494d9c2c10da170ce192744abe442de165a9532fc7d529",
    ("flowers", 4, "val", 1, 48): "f319a55f9184f2e6fbf5777f9c84b9df29de69118faffd4931f016549b42e12a",
    ("glyphs", 6, "train", 0, 32): "ba69aac2139404c89e857911c25d017ab51bdbf12ea46153b2831ef6bd291d80",
    ("glyphs", 4, "val", 1, 48): "2af45bb01272fb96b4028c5ed9af00ac116df6799078d7858e9629febd02d21b",
    ("digits", 6, "train", 0, 32): "eb20258c318d2258e884964451126ae756952802bb1f251015961b4fb9061143",
    ("digits", 4, "val", 1, 48): "51d6f8a961046bf264d6aa2cc2373765281e1cd693fe0420dfcbb3191ab0ebd4",
    ("motion", 6, "train", 0, 32): "ad754bbfea3693e56ac8915215531b2f9d748d99268d2619a49262daa9c8ffd1",
    ("up_shapes", 6, "train", 0, 32): "1a13494fd0d56a99899a8c6886d0f25aadd002a60ce891a086eda03e4aa8517e",
    ("up_shapes", 4, "val", 1, 48): "f7c0b91c7d798e12711d63d6cfb92f222c3e59ddd53bea733c44267ed64a9169",
    ("up_edges", 6, "train", 0, 32): "6b4ef6ef41cc7c99c6d67764cf51ded0fcc51a3a71ca21b22d6aa6a1b55e1337",
    ("up_spectra", 6, "train", 0, 32): "b42442ea71d7b1e5a97fa7e7eff21a58e1c5ca6b99ea2a4dd645f800137a924a",
    ("up_blocks", 6, "train", 0, 32): "acfbe958807b0316133cc722d8d2ce45e202403662d2da412a70fd114015f483",
}


# ------------------------------------------------------------------------------------ the table


def test_mask_table_names_exactly_the_object_domains():
    assert sorted(P.MASK_LABELS) == sorted(MASKED)
    assert set(P.DOMAINS) == set(MASKED) | set(UNMASKED)
    assert (P.BACKGROUND, P.DISTRACTOR, P.OBJECT) == (0, 1, 2)
    for domain, names in P.MASK_LABELS.items():
        assert names[:2] == ("background", "distractor") and len(names) > P.OBJECT, domain
        assert len(set(names)) == len(names), domain
    assert P.MASK_LABELS["signs"][2:] == ("border", "face", "symbol")
    assert P.MASK_LABELS["flowers"][2:] == ("petals", "centre")
    assert P.MASK_LABELS["aircraft"][2:] == ("fuselage", "wings", "engines", "stabilisers")
    assert P.MASK_LABELS["pedestrians"][2:] == ("head", "torso", "arms", "legs")


@pytest.mark.parametrize("domain", UNMASKED)
def test_domains_without_objects_refuse_masks_and_name_those_with(domain):
    with pytest.raises(DataError, match=rf"{domain}.*no masks.*objects.*up_shapes"):
        P.generate(domain, 4, masks=True)


def test_masks_flag_must_be_a_bool():
    with pytest.raises(DataError, match="masks must be True or False"):
        P.generate("objects", 4, masks="yes")


# ------------------------------------------------------------------------------ bit identity


@pytest.mark.parametrize("key", list(DIGESTS), ids=lambda k: f"{k[0]}-{k[2]}-{k[4]}px")
def test_images_are_bit_identical_to_those_drawn_before_masks(key, tmp_path, monkeypatch):
    domain, n, split, seed, size = key
    x, y = P.generate(domain, n, split=split, seed=seed, image_size=size)
    assert _digest(x, y) == DIGESTS[key]
    if domain in P.MASK_LABELS:  # the masked path, from an empty cache, draws the very same images
        monkeypatch.setenv("GIFT_CL_CACHE", str(tmp_path / "fresh"))
        xm, ym, _ = P.generate(domain, n, split=split, seed=seed, image_size=size, masks=True)
        assert _digest(xm, ym) == DIGESTS[key]


# ---------------------------------------------------------------------------- masks and pixels


def _with_masks(domain: str, n: int = 48, size: int = 32):
    return P.generate(domain, n, seed=0, image_size=size, masks=True)


@pytest.mark.parametrize("domain", MASKED)
def test_masks_have_the_image_grid_and_known_labels(domain):
    x, y, m = _with_masks(domain)
    assert m.shape == x.shape[:3] and m.dtype == np.uint8
    assert set(np.unique(m)) <= set(range(len(P.MASK_LABELS[domain])))
    present = P.object_mask(m).reshape(len(m), -1).any(axis=1)
    if domain == "pedestrians":  # an object exactly where the class says a figure is present
        assert present[y == 1].all() and not present[y == 0].any()
    else:
        assert present.all(), "every image of an object domain shows its object"
    assert (m == P.BACKGROUND).any(axis=(1, 2)).all(), "the object never fills the whole image"


@pytest.mark.parametrize("domain", MASKED)
def test_object_pixels_are_where_the_object_colour_is(domain):
    """Inside the object mask the mean colour differs from the background's; the pixels a shifted mask
    adds beside the object look like background. A mask off by a few pixels fails the second check."""
    x, _, m = _with_masks(domain)
    obj, bg = P.object_mask(m), m == P.BACKGROUND

    def gap(img, inside, outside):
        return np.abs(img[inside].astype(float).mean(0) - img[outside].astype(float).mean(0)).max()

    gaps, beside = [], []
    for img, o, b in zip(x, obj, bg):
        if not o.any():
            continue
        gaps.append(gap(img, o, b))
        for shift in (3, 6):
            moved = np.roll(o, shift, axis=(0, 1))
            if (moved & ~o).any() and (b & ~moved).any():
                beside.append(gap(img, moved & ~o, b & ~moved))
    assert np.median(gaps) > 40 and np.mean(np.array(gaps) > 12) == 1.0, gaps
    assert np.median(gaps) > 3 * np.median(beside)


def test_an_icon_is_one_painted_colour_inside_its_mask():
    """`objects` paints the icon in one colour, then adds noise (std 0.03 · 255 ≈ 7.7): away from its edge
    the pixels inside the mask scatter by the noise only."""
    x, _, m = _with_masks("objects")
    obj = P.object_mask(m)
    inner = obj & np.roll(obj, 1, 1) & np.roll(obj, -1, 1) & np.roll(obj, 1, 2) & np.roll(obj, -1, 2)
    spreads = [img[i].astype(float).std(0).mean() for img, i in zip(x, inner) if i.sum() >= 5]
    assert len(spreads) > 30 and np.median(spreads) < 10


def test_parts_where_the_generators_draw_them():
    x, y, m = _with_masks("signs", 86)
    symbol = (m == P.MASK_LABELS["signs"].index("symbol")).any(axis=(1, 2))
    assert symbol[y != 41].all() and not symbol[y == 41].any(), "only the yield sign (41) has no pictogram"
    for part in ("border", "face"):
        assert (m == P.MASK_LABELS["signs"].index(part)).any(axis=(1, 2)).all(), part

    _, y, m = _with_masks("pedestrians")
    for k in range(P.OBJECT, len(P.MASK_LABELS["pedestrians"])):  # head, torso, arms, legs
        assert (m[y == 1] == k).any(axis=(1, 2)).all(), P.MASK_LABELS["pedestrians"][k]
    assert (m == P.DISTRACTOR).any(axis=(1, 2)).mean() > 0.9, "street clutter in both classes"

    _, _, m = _with_masks("aircraft", 24, size=64)
    names = P.MASK_LABELS["aircraft"]
    for part in ("fuselage", "wings", "stabilisers"):
        assert (m == names.index(part)).any(axis=(1, 2)).all(), part
    assert (m == names.index("engines")).any(axis=(1, 2)).mean() > 0.75

    _, _, m = _with_masks("flowers")
    petals, centre = m == 2, m == 3
    assert centre.any(axis=(1, 2)).all() and (petals.sum(axis=(1, 2)) > centre.sum(axis=(1, 2))).all()


def test_centre_digit_is_the_object_and_flanking_digits_are_distractors():
    _, _, m = _with_masks("digits")
    obj = P.object_mask(m)
    cols = np.array([np.nonzero(o.any(axis=0))[0].mean() for o in obj])
    assert (np.abs(cols - 15.5) < 6).all(), "the class digit sits near the centre column"
    assert (m == P.DISTRACTOR).any(axis=(1, 2)).mean() > 0.6, "most crops show a flanking digit"


def test_glyphs_have_no_distractors():
    _, _, m = _with_masks("glyphs")
    assert not (m == P.DISTRACTOR).any()


# ------------------------------------------------------------------------------------- caching


def test_masks_are_cached_in_their_own_file(cache_dir, monkeypatch):
    x, y, m = P.generate("signs", 12, split="test", seed=2, masks=True)
    names = sorted(f.name for f in cache_dir.glob("*.npz"))
    assert len(names) == 2 and sum("-masks-" in n for n in names) == 1
    assert not list(cache_dir.glob("*.tmp")), "atomic writes leave no temp files"

    def boom(*_):
        raise AssertionError("generator called although the cache holds this dataset")

    spec = P.DOMAINS["signs"]
    monkeypatch.setitem(P.DOMAINS, "signs", dataclasses.replace(spec, generate=boom, generate_masked=boom))
    x2, y2, m2 = P.generate("signs", 12, split="test", seed=2, masks=True)
    x3, y3 = P.generate("signs", 12, split="test", seed=2)
    assert np.array_equal(x, x2) and np.array_equal(y, y2) and np.array_equal(m, m2)
    assert np.array_equal(x, x3) and np.array_equal(y, y3)


def test_masks_after_images_match_the_image_cache(cache_dir):
    x, y = P.generate("flowers", 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the regenerated images equal the cached ones: nothing to report
        xm, ym, m = P.generate("flowers", 10, masks=True)
    assert np.array_equal(x, xm) and np.array_equal(y, ym) and m.shape == (10, 32, 32)
    assert len(list(cache_dir.glob("*.npz"))) == 2


def test_a_stale_image_cache_is_replaced_when_masks_are_drawn(cache_dir):
    x, y = P.generate("objects", 6)
    (path,) = cache_dir.glob("*.npz")
    np.savez(path, images=255 - x, labels=y)  # as if a generator had changed without a VERSION bump
    with pytest.warns(UserWarning, match="differs from the regenerated images"):
        xm, _, _ = P.generate("objects", 6, masks=True)
    assert np.array_equal(xm, x) and np.array_equal(P.generate("objects", 6)[0], x)


def test_corrupt_mask_cache_is_regenerated(cache_dir):
    _, _, m = P.generate("digits", 8, masks=True)
    (path,) = cache_dir.glob("*-masks-*.npz")
    path.write_bytes(b"not a zip file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        _, _, m2 = P.generate("digits", 8, masks=True)
    assert np.array_equal(m, m2)
    with np.load(path) as z:
        assert np.array_equal(z["masks"], m)


# ------------------------------------------------------------------------------ pixels to tokens


def test_a_token_is_object_when_more_than_half_its_patch_is():
    masks = np.zeros((1, 32, 32), bool)
    masks[0, :8, :4] = True  # patch (0, 0): exactly half -> background
    masks[0, :8, 8:13] = True  # patch (0, 1): 40 of 64 pixels -> object
    masks[0, 8:16, 24:32] = True  # patch (1, 3): all -> object
    frac = S.object_fractions(masks, (4, 4))
    assert frac[0, 0, 0] == 0.5 and frac[0, 0, 1] == 40 / 64 and frac[0, 1, 3] == 1.0
    tokens = S.object_tokens(masks, (4, 4))
    assert tokens.dtype == np.bool_ and tokens.sum() == 2 and tokens[0, 0, 1] and tokens[0, 1, 3]


def test_fractions_are_exact_areas_for_any_grid():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 30, 30)) < 0.3
    frac = S.object_fractions(masks, (4, 4))  # 7.5 pixels a patch: border pixels count in part
    assert np.allclose(frac.mean(axis=(1, 2)), masks.mean(axis=(1, 2)))
    assert ((0 <= frac) & (frac <= 1)).all()
    full = S.object_fractions(np.ones((1, 30, 30), bool), (4, 4))
    assert np.allclose(full, 1.0)


def test_label_masks_are_refused_where_object_masks_belong():
    _, _, m = P.generate("objects", 4, masks=True)
    with pytest.raises(TypeError, match="object_mask"):
        S.object_tokens(m, (4, 4))
    assert S.object_tokens(P.object_mask(m), (4, 4)).shape == (4, 4, 4)


# ------------------------------------------------------------------------------------- scores


def test_auroc_per_cluster_equals_sklearn_with_ties():
    rng = np.random.default_rng(1)
    tokens = rng.random((6, 4, 4)) < 0.3
    maps = np.round(rng.normal(size=(6, 5, 4, 4)) + tokens[:, None], 1)  # rounding makes ties
    got = S.aurocs(maps, tokens)
    want = [roc_auc_score(tokens.ravel(), maps[:, j].ravel()) for j in range(5)]
    assert np.allclose(got, want)
    assert np.allclose(S.signed_scores(maps, tokens, "auroc")[1], 1 - got)
    with pytest.raises(ValueError, match="object and background"):
        S.aurocs(maps, np.zeros_like(tokens))


def test_iou_takes_as_many_top_tokens_as_the_object_has():
    tokens = np.array([[[True, True], [False, False]], [[False, False], [False, False]]])
    maps = np.array([[[[3.0, 1.0], [2.0, 0.0]], [[2.0, 3.0], [0.0, 1.0]]],
                     [[[9.0, 9.0], [9.0, 9.0]], [[9.0, 9.0], [9.0, 9.0]]]])  # (2 images, 2 maps, 2, 2)
    # image 0: map 0's top 2 = {0, 2} -> IoU 1/3; map 1's top 2 = {1, 0} -> 1; image 1 has no object: skipped
    assert np.allclose(S.ious(maps, tokens), [1 / 3, 1.0])
    assert np.allclose(S.signed_scores(maps, tokens, "iou")[1], [1 / 3, 0.0])  # -map: top 2 = {3, 1} / {2, 3}
    with pytest.raises(ValueError, match="unknown metric"):
        S.signed_scores(maps, tokens, "dice")


def _split_tokens(domain: str = "objects", n: int = 48, grid=(8, 8)):
    """Object tokens of real masks, first half val, second half test."""
    _, _, m = P.generate(domain, n, seed=0, masks=True)
    tokens = S.object_tokens(P.object_mask(m), grid)
    return tokens[: n // 2], tokens[n // 2:]


@pytest.mark.parametrize("metric", S.METRICS)
def test_a_background_cluster_is_chosen_with_its_sign_and_test_never_decides(metric):
    val_tok, test_tok = _split_tokens()
    rng = np.random.default_rng(2)

    def maps(tokens):  # cluster 2 is low on the object, the others noise
        m = rng.normal(size=(len(tokens), 4) + tokens.shape[1:])
        m[:, 2] = -4.0 * tokens + 0.3 * rng.normal(size=tokens.shape)
        return m

    val_maps, test_maps = maps(val_tok), maps(test_tok)
    sel = S.select_and_score(val_maps, val_tok, test_maps, test_tok, metric)
    assert (sel.cluster, sel.sign) == (2, -1) and sel.test > 0.9 and sel.val > 0.9
    # whatever the test images hold, the choice stays: only their score changes
    flipped = S.select_and_score(val_maps, val_tok, -test_maps, test_tok, metric)
    assert (flipped.cluster, flipped.sign) == (2, -1) and flipped.test < 0.2


# ------------------------------------------------------------------------ planted concept, nulls


def _planted(tokens: np.ndarray, direction: np.ndarray, rng, strength: float = 5.0) -> np.ndarray:
    """Patch tokens (B, gh, gw, d): standard normal noise plus `strength` · direction on object tokens."""
    noise = rng.standard_normal(tokens.shape + (len(direction),))
    return noise + strength * tokens[..., None] * direction


def test_a_planted_concept_scores_near_one_and_random_concepts_sit_inside_their_null():
    val_tok, test_tok = _split_tokens()
    rng = np.random.default_rng(3)
    d, m = 32, 8
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    val_y, test_y = _planted(val_tok, direction, rng), _planted(test_tok, direction, rng)

    planted = rng.standard_normal((d, m))
    planted[:, 5] = direction  # this concept's map is the mask up to noise
    auroc = S.select_and_score(S.concept_maps(val_y, planted), val_tok, S.concept_maps(test_y, planted), test_tok)
    iou = S.select_and_score(S.concept_maps(val_y, planted), val_tok, S.concept_maps(test_y, planted), test_tok,
                             "iou")
    assert (auroc.cluster, auroc.sign, iou.cluster, iou.sign) == (5, 1, 5, 1)
    assert auroc.test > 0.95 and iou.test > 0.9

    draw = S.random_concepts(d, m)
    null = S.concept_null(draw, val_y, val_tok, test_y, test_tok, "auroc", n_draws=40)
    lo, hi = np.quantile(null, [0.025, 0.975])
    assert auroc.test > hi, "the planted concept lies far above the random-concept null"
    c = draw(1000)  # a random matrix the null never drew
    observed = S.select_and_score(S.concept_maps(val_y, c), val_tok, S.concept_maps(test_y, c), test_tok).test
    assert lo <= observed <= hi


@pytest.mark.parametrize("metric", S.METRICS)
def test_on_pure_noise_the_null_sits_at_chance(metric):
    """Selection on val does not carry over to unrelated test images: the null centres on chance
    (AUROC 0.5; IoU of a random top-k pick ≈ k / T), not on the optimistic best-of-M-on-val."""
    val_tok, test_tok = _split_tokens()
    rng = np.random.default_rng(4)
    val_y, test_y = rng.standard_normal(val_tok.shape + (16,)), rng.standard_normal(test_tok.shape + (16,))
    draw = S.random_concepts(16, 8)
    null = S.concept_null(draw, val_y, val_tok, test_y, test_tok, metric, n_draws=20)
    assert null.shape == (20,)
    chance = 0.5 if metric == "auroc" else _random_topk_iou(test_tok, rng)
    assert abs(np.median(null) - chance) < 0.06
    picks = [S.select_and_score(S.concept_maps(val_y, draw(s)), val_tok, S.concept_maps(test_y, draw(s)), test_tok,
                                metric) for s in range(20)]
    assert np.array_equal([p.test for p in picks], null)
    assert np.mean([p.val for p in picks]) > np.mean(null) + 0.01, "the best of 2 M on val is optimistic"


def _random_topk_iou(tokens: np.ndarray, rng) -> float:
    maps = rng.standard_normal((len(tokens), 200) + tokens.shape[1:])
    return float(S.ious(maps, tokens).mean())


def test_a_null_needs_twenty_draws():
    val_tok, test_tok = _split_tokens()
    y = np.zeros(val_tok.shape + (4,))
    with pytest.raises(ValueError, match="at least 20"):
        S.concept_null(S.random_concepts(4, 2), y, val_tok, y, test_tok, n_draws=19)


def test_kmeans_finds_an_object_that_is_its_own_token_cluster():
    val_tok, test_tok = _split_tokens()
    rng = np.random.default_rng(5)
    direction = np.eye(8)[0]
    val_y, test_y = _planted(val_tok, direction, rng, 8.0), _planted(test_tok, direction, rng, 8.0)
    scores = S.kmeans_reference(val_y, val_tok, test_y, test_tok, k=2, seeds=range(3))
    assert scores.shape == (3,) and (scores > 0.95).all()
    maps = S.kmeans_maps(val_y, test_y, 3, seed=0)
    assert maps.shape == (len(test_y), 3) + test_y.shape[1:3] and (maps <= 1e-9).all()


def test_summary_row_has_the_mean_ci_and_null_quantiles():
    row = S.summarize([0.6, 0.7, 0.8], null=np.linspace(0.0, 1.0, 101))
    assert row["mean"] == pytest.approx(0.7) and row["n_seeds"] == 3
    # t(0.975, 2) = 4.303, sd = 0.1: half-width 4.303 · 0.1 / sqrt(3)
    assert row["ci_high"] - row["mean"] == pytest.approx(4.3027 * 0.1 / np.sqrt(3), rel=1e-4)
    assert (row["null_q025"], row["null_median"], row["null_q975"]) == pytest.approx((0.025, 0.5, 0.975))
    assert row["n_null"] == 101 and row["null_mean"] == pytest.approx(0.5)
    single = S.summarize([0.9])
    assert single["ci_low"] is None and "null_q025" not in single
    with pytest.raises(ValueError, match="at least 20"):
        S.summarize([0.5, 0.6], null=[0.5] * 5)


# ---------------------------------------------------------------------- a frozen tiny ViT


def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64,
                             depth=2, num_heads=2, num_classes=0).eval()


def _images(x: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0 - 0.5) / 0.5


def test_cls_attention_equals_timms_own_attention_weights():
    model = tiny_vit()
    images = _images(P.generate("objects", 4)[0])
    ours = cls_attention(model, images)
    attn = model.blocks[-1].attn
    attn.fused_attn = False  # timm's unfused path materialises the weights: capture them at attn_drop
    captured = {}
    handle = attn.attn_drop.register_forward_hook(lambda m, i, o: captured.__setitem__("w", o))
    with torch.no_grad():
        model.forward_features(images)
    handle.remove()
    want = captured["w"][:, :, 0, model.num_prefix_tokens:].mean(1).reshape(4, 4, 4)
    assert ours.shape == (4, 4, 4) and torch.allclose(ours, want, atol=1e-6)


def test_patch_grid_and_grid_maps_agree_with_the_upsampled_maps():
    model = tiny_vit()
    images = _images(P.generate("objects", 3)[0])
    with torch.no_grad():
        tokens = model.forward_features(images)
    grid = patch_grid(tokens, model)
    assert grid.shape == (3, 4, 4, 64) and torch.equal(grid[:, 0, 1], tokens[:, model.num_prefix_tokens + 1])
    assert torch.equal(frozen_patch_tokens(model, images), grid)
    assert frozen_patch_tokens(model, images, "blocks.0").shape == (3, 4, 4, 64)
    c = torch.randn(64, 5)
    small = grid_maps(tokens, c, model)
    assert small.shape == (3, 5, 4, 4)
    assert np.allclose(S.concept_maps(grid, c), small.numpy(), atol=1e-4)
    up = maps_from_outputs(tokens, c, model, (32, 32))
    assert torch.allclose(torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear"), up)


def test_references_on_a_frozen_vit_end_to_end():
    """Real masks, a real (random) ViT: every reference goes through the same selection and gives a
    score in [0, 1] per draw, and the summary row is built from them."""
    model = tiny_vit()
    x, _, m = P.generate("objects", 40, seed=0, masks=True)
    tokens = S.object_tokens(P.object_mask(m), model.patch_embed.grid_size)
    images = _images(x)
    patches = frozen_patch_tokens(model, images)
    attention = cls_attention(model, images)
    val, test = slice(0, 20), slice(20, 40)
    assert tokens[val].any() and (~tokens[val]).any()

    sel = S.attention_reference(attention[val], tokens[val], attention[test], tokens[test])
    assert sel.cluster == 0 and sel.sign in (1, -1) and 0.0 <= sel.test <= 1.0
    km = S.kmeans_reference(patches[val], tokens[val], patches[test], tokens[test], k=4, metric="iou", seeds=range(2))
    assert km.shape == (2,) and ((0 <= km) & (km <= 1)).all()
    null = S.concept_null(S.random_concepts(64, 4), patches[val], tokens[val], patches[test], tokens[test])
    assert null.shape == (20,) and ((0 <= null) & (null <= 1)).all()
    row = S.summarize([sel.test, sel.test], null)
    assert row["null_q025"] <= row["null_median"] <= row["null_q975"]


def test_gift_concepts_against_their_untrained_head_null():
    """The whole path for a GIFT layer: its output tokens on the grid, its concept matrix, the selection,
    and the null of untrained heads (fresh head per seed, trained head restored after)."""
    gift = get_gift_model(tiny_vit(), GiftConfig.paca(rank=8, depth=2, num_clusters=6)).eval()
    layer = list(gift.layers())[-1]
    x, _, m = P.generate("objects", 40, seed=0, masks=True)
    tokens = S.object_tokens(P.object_mask(m), gift.model.patch_embed.grid_size)
    patches = patch_grid(layer_outputs(gift, _images(x), [layer])[layer], gift.model)
    c = concept_matrix(gift, layer)
    val, test = slice(0, 20), slice(20, 40)
    sel = S.select_and_score(S.concept_maps(patches[val], c), tokens[val], S.concept_maps(patches[test], c),
                             tokens[test])
    assert 0 <= sel.cluster < 6 and 0.0 <= sel.test <= 1.0

    draw = untrained_concepts(gift, layer)
    assert torch.equal(draw(3), draw(3)) and not torch.allclose(draw(3), draw(4))
    assert draw(3).shape == c.shape and torch.equal(concept_matrix(gift, layer), c), "trained head restored"
    null = S.concept_null(draw, patches[val], tokens[val], patches[test], tokens[test])
    assert null.shape == (20,) and ((0 <= null) & (null <= 1)).all()
