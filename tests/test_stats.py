"""gift_cl.stats: the paired hierarchical bootstrap and the Holm correction."""
import numpy as np
import pytest

from gift_cl.stats import holm, paired_bootstrap, t_interval


def _diff(rng, n, p_a, p_b):
    a = rng.random(n) < p_a
    b = rng.random(n) < p_b
    return a.astype(int) - b.astype(int)


def test_holm_matches_the_step_down_definition():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_observed_difference_is_the_mean_over_seeds_of_the_mean_over_tasks():
    diffs = {0: {"a": np.array([1, 0, 0, 0]), "b": np.array([0, 0])},
             1: {"a": np.array([-1, -1, 0, 0]), "b": np.array([1, 1])}}
    res = paired_bootstrap(diffs, n_boot=200)
    assert res["diff"] == pytest.approx(((0.25 + 0) / 2 + (-0.5 + 1) / 2) / 2)
    assert res["n_seeds"] == 2 and res["n_images"] == 12 and res["per_image"]


def test_a_large_difference_is_resolved_and_no_difference_is_not():
    rng = np.random.default_rng(0)
    big = {s: {t: _diff(rng, 1000, 0.7, 0.6) for t in "abc"} for s in range(5)}
    res = paired_bootstrap(big, n_boot=2000)
    assert res["ci"][0] > 0.05 and res["p"] < 0.001
    none = {s: {t: _diff(rng, 1000, 0.6, 0.6) for t in "abc"} for s in range(5)}
    res = paired_bootstrap(none, n_boot=2000)
    assert res["ci"][0] < 0 < res["ci"][1] and res["p"] > 0.05


def test_interval_widens_with_fewer_images_and_covers_the_truth():
    rng = np.random.default_rng(1)
    widths = []
    for n in (100, 2000):
        diffs = {s: {"t": _diff(rng, n, 0.55, 0.5)} for s in range(5)}
        lo, hi = paired_bootstrap(diffs, n_boot=2000)["ci"]
        widths.append(hi - lo)
    assert widths[0] > 2 * widths[1]
    covered = 0
    for rep in range(40):  # nominal 90 %: the true 0.05 lies inside most intervals
        diffs = {s: {"t": _diff(rng, 400, 0.55, 0.5)} for s in range(4)}
        lo, hi = paired_bootstrap(diffs, n_boot=1000, level=0.9, seed=rep)["ci"]
        covered += lo <= 0.05 <= hi
    assert covered >= 30


def test_seed_level_fallback_without_per_image_predictions():
    diffs = {s: {"t": d} for s, d in enumerate([0.02, 0.03, 0.01, 0.025])}
    res = paired_bootstrap(diffs, n_boot=2000)
    assert not res["per_image"] and res["n_images"] is None
    assert res["diff"] == pytest.approx(0.02125)
    assert 0.01 <= res["ci"][0] <= res["ci"][1] <= 0.03


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no common seed"):
        paired_bootstrap({})
    with pytest.raises(ValueError, match="same, non-empty set of tasks"):
        paired_bootstrap({0: {"a": np.array([1])}, 1: {"b": np.array([1])}})
    with pytest.raises(ValueError, match="-1, 0 or 1"):
        paired_bootstrap({0: {"a": np.array([2, 0])}})


def test_t_interval():
    m, h = t_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.302653 * 1.0 / np.sqrt(3), rel=1e-5)
    assert t_interval([1.0]) == (1.0, None)
