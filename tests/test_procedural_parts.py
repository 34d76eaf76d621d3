"""gift_cl.data.procedural.parts: the part-vocabulary domains draw what their classes say, with masks that label
the frame and the markers; the six domains make a design the permutation test can resolve."""
import numpy as np
import pytest
from scipy import ndimage

from gift_cl.concepts import refute
from gift_cl.data import procedural as P
from gift_cl.data.procedural.parts import PART_DOMAINS, PART_ROLES, VOCABULARIES

FRAME, MARKER = P.OBJECT, P.OBJECT + 1


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GIFT_CL_CACHE", str(tmp_path / "cache"))


def _draw(domain, n=80):
    return P.generate(domain, n, seed=0, masks=True)


def _centroid(mask):
    ys, xs = np.nonzero(mask)
    return xs.mean(), ys.mean()


def test_the_domains_are_registered_with_their_vocabulary_as_mask_labels():
    assert P.PART_VOCABULARY == PART_DOMAINS
    for domain, vocabulary in PART_DOMAINS.items():
        assert P.MASK_LABELS[domain] == ("background", "distractor", *VOCABULARIES[vocabulary])
        assert P.DOMAINS[domain].num_classes == 4
    assert len(PART_ROLES) == 2 and not set(PART_DOMAINS) & (set(P.DECATHLON) | set(P.UPSTREAM))
    assert P.DOMAINS["parts_a_position"].hflip_ok is False and P.DOMAINS["parts_a_count"].hflip_ok is True


def test_every_image_shows_a_frame_and_its_markers():
    for domain in PART_DOMAINS:
        x, y, m = _draw(domain, 40)
        assert ((m == FRAME).any(axis=(1, 2)) & (m == MARKER).any(axis=(1, 2))).all(), domain
        assert set(np.unique(m)) <= {P.BACKGROUND, FRAME, MARKER}, domain  # no distractors


@pytest.mark.parametrize("domain", ["parts_a_position", "parts_b_position", "parts_c_position"])
def test_position_is_where_the_marker_is(domain):
    x, y, m = _draw(domain)
    for label, masks in zip(y, m):
        fx, fy = _centroid(masks == FRAME)
        mx, my = _centroid(masks == MARKER)
        dx, dy = mx - fx, my - fy
        expected = {0: dx < -abs(dy), 1: dx > abs(dy), 2: dy < -abs(dx), 3: dy > abs(dx)}[int(label)]
        assert expected, (label, dx, dy)


@pytest.mark.parametrize("domain", ["parts_a_count", "parts_b_count"])
def test_count_is_the_number_of_markers(domain):
    x, y, m = _draw(domain)
    counts = [ndimage.label(masks == MARKER)[1] for masks in m]
    assert counts == [int(label) + 1 for label in y]


def test_inside_is_on_the_frame_or_outside_it_above_or_below():
    x, y, m = _draw("parts_a_inside")
    for label, masks in zip(y, m):
        frame = masks == FRAME
        rows = np.flatnonzero(frame.any(axis=1))
        _, my = _centroid(masks == MARKER)
        _, fy = _centroid(frame | (masks == MARKER))  # the marker on the frame takes its pixels
        on_frame = rows.min() < my < rows.max()
        assert on_frame == (label // 2 == 0), (label, my, rows.min(), rows.max())
        assert (my < fy) == (label % 2 == 0), (label, my, fy)


def test_the_six_domains_can_resolve_the_part_vocabulary_test():
    from gift_cl.analysis.part_vocabulary import design

    sharing, other = design(list(PART_DOMAINS))
    assert len(sharing) == 3 + 1 and len(other) == 15 - 4  # groups of 3, 2 and 1
    assert refute.smallest_reachable_p(sharing, other) == pytest.approx(1 / 60)
    with pytest.raises(SystemExit, match="not part-vocabulary domains"):
        design(["digits", "signs"])
    with pytest.raises(SystemExit, match="pairs that do not"):
        design(["parts_a_position", "parts_a_count"])
