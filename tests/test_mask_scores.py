"""analysis/mask_scores.py (``gift-cl mask-scores``): a finished GIFT run's cluster maps scored against the
generators' object masks beside every reference, and the summary over seeds with the paired gap to the
untrained-head null."""
import csv
import json

import numpy as np
import pytest

from gift_cl.analysis import mask_scores

from runs import tiny_gift_run


@pytest.fixture(scope="module")
def gift_run(tmp_path_factory):
    return tiny_gift_run(tmp_path_factory.mktemp("runs") / "gift", "[signs,textures]")


def test_every_reference_is_scored_on_the_tasks_with_masks(gift_run, tmp_path):
    mask_scores.main([str(gift_run), "--out", str(tmp_path), "--n-val", "12", "--n-test", "12",
                      "--kmeans-seeds", "1", "--layer", "blocks.0.attn.proj", "--center"])
    rows = list(csv.DictReader((tmp_path / "mask_scores.csv").open()))
    assert {r["task"] for r in rows} == {"signs"}  # textures draws no object: it has no masks
    assert {(r["metric"], r["source"]) for r in rows} == {(m, s) for m in mask_scores.METRICS
                                                            for s in mask_scores.SOURCES if s != "untrained_trunk"}
    draws = {r["source"]: int(r["draws"]) for r in rows}
    assert draws["untrained_head"] == draws["random_concepts"] == 20 and draws["trained"] == 1
    for r in rows:
        assert 0.0 <= float(r["q025"]) <= float(r["median"]) <= float(r["q975"]) <= 1.0
    trained = next(r for r in rows if r["source"] == "trained" and r["metric"] == "auroc")
    assert trained["cluster"] != "" and trained["sign"] in ("1", "-1")
    summary = json.loads((tmp_path / "mask_scores.json").read_text())["summary"]
    assert [(e["layer"], e["metric"]) for e in summary] == [("blocks.0.attn.proj", m) for m in mask_scores.METRICS]
    assert all(e["null"] == "untrained_head" for e in summary)
    assert "| blocks.0.attn.proj | auroc |" in (tmp_path / "mask_scores.md").read_text()


def test_gift_linear_maps_are_scored_against_a_redrawn_trunk(tmp_path):
    """GIFT-linear's W φᵀ maps take no head: their untrained null re-draws φ (an untrained head would equal them)."""
    run = tiny_gift_run(tmp_path / "linear", "[signs]", "generator=linear")
    mask_scores.main([str(run), "--out", str(tmp_path / "out"), "--n-val", "12", "--n-test", "12",
                      "--kmeans-seeds", "1", "--layer", "blocks.0.attn.proj"])
    rows = list(csv.DictReader((tmp_path / "out" / "mask_scores.csv").open()))
    assert {r["source"] for r in rows} == set(mask_scores.SOURCES) - {"untrained_head"}
    assert {int(r["draws"]) for r in rows if r["source"] == "untrained_trunk"} == {20}
    summary = json.loads((tmp_path / "out" / "mask_scores.json").read_text())["summary"]
    assert all(e["null"] == "untrained_trunk" and "untrained_head" not in e for e in summary)
    assert "| trunk |" in (tmp_path / "out" / "mask_scores.md").read_text()


def test_summary_averages_tasks_per_seed_then_seeds_and_pairs_the_gap():
    rows = []
    for seed, (trained, null) in enumerate([(0.9, 0.6), (0.8, 0.6), (0.85, 0.5)]):
        for task, shift in (("signs", 0.0), ("digits", 0.1)):
            rows.append({"seed": seed, "task": task, "layer": "L", "metric": "auroc", "source": "trained",
                         "score": trained - shift, "median": trained - shift})
            rows.append({"seed": seed, "task": task, "layer": "L", "metric": "auroc", "source": "untrained_head",
                         "score": null - shift + 0.01, "median": null - shift})
            for source in ("random_concepts", "kmeans_frozen", "cls_attention"):
                rows.append({"seed": seed, "task": task, "layer": "L", "metric": "auroc", "source": source,
                             "score": 0.5, "median": 0.5})
    rows += [{**r, "metric": "iou"} for r in rows]
    entry = mask_scores.summarize(rows)[0]
    assert entry["trained"]["mean"] == pytest.approx(np.mean([0.85, 0.75, 0.8]))
    assert entry["trained"]["seeds"] == 3 and entry["trained"]["ci_low"] < entry["trained"]["mean"]
    # the gap pairs each seed's trained score with that seed's null median: 0.3, 0.2, 0.35
    assert entry["trained_minus_untrained"]["mean"] == pytest.approx(np.mean([0.3, 0.2, 0.35]))
    assert entry["resolved"] is True
    one_seed = mask_scores.summarize([r for r in rows if r["seed"] == 0])[0]
    assert one_seed["trained_minus_untrained"]["ci_low"] is None and one_seed["resolved"] is False
    mixed = rows + [{**r, "source": "untrained_trunk"} for r in rows if r["source"] == "untrained_head"]
    with pytest.raises(ValueError, match="cannot be summarised together"):
        mask_scores.summarize(mixed)
