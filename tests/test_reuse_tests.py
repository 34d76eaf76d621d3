"""analysis/reuse_tests.py (``gift-cl reuse-tests``): a finished multi-task GIFT run's used-concept reuse against
its untrained-head null, the Mantel test against prototype similarity and the cluster ablation; the summary over
seeds."""
import csv
import json
import math

import numpy as np
import pytest
import torch

from gift_cl.analysis import mask_scores, reuse_tests
from gift_cl.concepts import refute
from gift_cl.data.procedural import generate
from gift_cl.interpret import concept_matrix, load_run, untrained_concepts
from gift_cl.orchestration.cli import TOOLS

from runs import REPO, tiny_gift_run

LAYER = "blocks.0.attn.proj"
DOMAINS = ["signs", "textures", "digits"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a busy 2-core machine two threads spin against each other (this file: ~5 s on one
    thread, ~75 s on two under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gift_run(one_thread, tmp_path_factory):
    return tiny_gift_run(tmp_path_factory.mktemp("runs") / "gift", f"[{','.join(DOMAINS)}]")


@pytest.fixture(scope="module")
def tested(gift_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("reuse")
    assert reuse_tests.main([str(gift_run), "--out", str(out), "--layer", LAYER, "--n-images", "8",
                             "--ablation-budget", "1e9"]) == 0
    return out


def test_null_and_mantel_are_those_of_refute_on_the_runs_concepts(gift_run, tested):
    rows = list(csv.DictReader((tested / "reuse_tests.csv").open()))
    assert len(rows) == 1
    row = rows[0]
    assert (row["layer"], row["tasks"], row["draws"], row["seed"]) == (LAYER, "3", "20", "0")
    # the same statistic and null as refute's, with interpret's (uncached) untrained-head draws
    run = load_run(gift_run)
    vectors = run.concept_vectors([LAYER])[LAYER]
    draws = {t.name: untrained_concepts(t.gift, LAYER, t.head) for t in run}
    expected = refute.untrained_null(refute.mean_used_reuse, vectors, refute.untrained_vectors(draws))
    assert float(row["used_reuse"]) == pytest.approx(expected.observed, abs=1e-12)
    assert float(row["p"]) == pytest.approx(expected.p_value) and float(row["min_p"]) == pytest.approx(1 / 21)
    assert round(float(row["p"]) * 21) == pytest.approx(float(row["p"]) * 21)  # a multiple of 1/21
    assert float(row["null_median"]) == pytest.approx(float(np.median(expected.null)))
    assert float(row["excess"]) == pytest.approx(expected.excess)
    assert float(row["null_low"]) <= float(row["null_median"]) <= float(row["null_high"])
    assert float(row["excess_low"]) <= float(row["excess"]) <= float(row["excess_high"])
    saved = json.loads((tested / "reuse_tests.json").read_text())
    matrices = saved["matrices"][0]
    np.testing.assert_allclose(matrices["null"], expected.null, atol=1e-12)
    assert matrices["tasks"] == DOMAINS
    # Mantel: Spearman, exact over the 3! relabellings, p a multiple of 1/6 and never below it (noted)
    reuse, similarity = np.array(matrices["reuse"]), np.array(matrices["task_similarity"])
    mantel = refute.mantel_test(reuse, similarity, method="spearman")
    assert float(row["mantel_r"]) == pytest.approx(mantel.r) and float(row["mantel_p"]) == pytest.approx(mantel.p)
    assert (row["mantel_exact"], row["mantel_permutations"]) == ("True", "6")
    assert float(row["mantel_min_p"]) == pytest.approx(1 / 6)
    assert "Mantel test: with 3 tasks its p cannot go below 0.167" in row["note"]
    assert np.allclose(np.diag(similarity), 1.0) and np.allclose(reuse, reuse.T)


def test_ablation_compares_tasks_that_share_the_most_reused_concept(gift_run, tested):
    row = next(csv.DictReader((tested / "reuse_tests.csv").open()))
    ablated = list(csv.DictReader((tested / "reuse_ablation.csv").open()))
    vectors = load_run(gift_run).concept_vectors([LAYER])[LAYER]
    pair = reuse_tests.most_reused_pair(vectors)
    assert row["pair"] == f"{pair.task}:{pair.cluster}~{pair.partner}:{pair.partner_cluster}"
    best = max(float(m.similarity.max()) for m in refute.used_matches(vectors).values())
    assert float(row["pair_cosine"]) == pytest.approx(best)
    by_task = {r["task"]: r for r in ablated}
    assert by_task[pair.task]["cluster"] == str(pair.cluster) and by_task[pair.task]["sharing"] == "True"
    assert by_task[pair.partner]["cluster"] == str(pair.partner_cluster)
    assert int(row["sharing_tasks"]) + int(row["other_tasks"]) == len(ablated)
    for r in ablated:
        assert float(r["drop"]) == pytest.approx(float(r["accuracy"]) - float(r["ablated"]))
        assert float(r["accuracy"]) * 8 == pytest.approx(round(float(r["accuracy"]) * 8))  # 8 images per task
        assert (r["sharing"] == "True") == (r["task"] == pair.task or float(r["cosine"]) >= 0.5)
    all_zero = all(float(r["drop"]) == 0 for r in ablated)
    assert ("ablation: no task's accuracy on 8 images changed" in row["note"]) == all_zero
    seconds = json.loads((tested / "reuse_tests.json").read_text())["seconds"][str(gift_run)]
    assert set(seconds) == {"load_and_vectors", "null_and_mantel", "ablation"} and seconds["ablation"] > 0
    sharing = [float(r["drop"]) for r in ablated if r["sharing"] == "True"]
    assert float(row["sharing_drop"]) == pytest.approx(np.mean(sharing))
    table = (tested / "reuse_tests.md").read_text()
    assert table.startswith("Concept reuse tests over 1 run(s)") and f"| {LAYER} | " in table


def test_a_run_over_the_ablation_budget_is_skipped_with_a_note(gift_run, tmp_path):
    reuse_tests.main([str(gift_run), "--out", str(tmp_path / "a"), "--layer", LAYER, "--n-images", "4",
                      "--ablation-budget", "0"])
    reuse_tests.main([str(gift_run), "--out", str(tmp_path / "b"), "--layer", LAYER, "--no-ablation"])
    for sub, note in (("a", "ablation skipped: estimated"), ("b", "ablation skipped (--no-ablation)")):
        row = next(csv.DictReader((tmp_path / sub / "reuse_tests.csv").open()))
        assert note in row["note"] and row["drop_difference"] == row["sharing_drop"] == ""
        assert not (tmp_path / sub / "reuse_ablation.csv").exists()
        assert note in (tmp_path / sub / "reuse_tests.md").read_text()
    assert row["pair"] == "" and float(row["draws"]) == 20  # --no-ablation: not even the pair
    with pytest.raises(SystemExit):
        reuse_tests.main([str(gift_run), "--out", str(tmp_path / "c"), "--draws", "19"])
    assert TOOLS["reuse-tests"] == "gift_cl.analysis.reuse_tests"
    assert "gift-cl reuse-tests RUN [RUN ...]" in (REPO / "configs" / "config.yaml").read_text()


def test_cached_draws_and_images_match_interpret_and_mask_scores(gift_run):
    run = load_run(gift_run)
    layers = run.layers()
    draws = reuse_tests.untrained_draws(run, layers)
    for view in run:
        trained = reuse_tests.concept_matrices(view.gift, view.head, layers)
        for layer in layers:
            assert torch.equal(trained[layer], concept_matrix(view.gift, layer, view.head))
            for seed in (0, 7):
                assert torch.equal(draws[layer][view.name](seed), untrained_concepts(view.gift, layer, view.head)(seed))
    images, labels = reuse_tests.val_batch(run, "signs", 6)
    grid = tuple(run.task("signs").gift.model.patch_embed.grid_size)
    assert torch.equal(images, mask_scores.task_images(run, "signs", "val", 6, grid).images)
    assert labels.tolist() == generate("signs", 6, split="val", seed=0, image_size=32)[1].tolist()


def test_most_reused_pair_is_the_best_matched_used_concept_pair():
    eye = torch.eye(6)
    vectors = {"a": eye[[0, 1, 2]], "b": eye[[1, 3, 4]], "c": eye[[5, 0, 2]] + 0.1 * eye[[0, 3, 4]]}
    # b's concept 0 is a's concept 1 exactly; c's concepts 1 and 2 are a's 0 and 2, slightly off
    pair = reuse_tests.most_reused_pair(vectors)
    assert (pair.task, pair.cluster, pair.partner, pair.partner_cluster) == ("a", 1, "b", 0)
    assert pair.cosine == pytest.approx(1.0)


def _row(seed, layer, used, p, mantel_p, difference=None):
    return {"seed": seed, "layer": layer, "used_reuse": used, "null_median": 0.4, "excess": used - 0.4, "p": p,
            "mantel_r": 0.5, "mantel_p": mantel_p, "sharing_drop": None, "other_drop": None,
            "drop_difference": difference, "logprob_difference": difference}


def test_summary_over_seeds_on_known_rows():
    rows = [_row(2, "L", 0.7, 0.04, 0.5, 0.1), _row(0, "L", 0.5, 0.01, 0.03, 0.3), _row(1, "L", 0.6, 0.2, None),
            _row(0, "M", 0.9, 1.0, float("nan"))]
    summary = reuse_tests.summarize(rows)
    assert [e["layer"] for e in summary] == ["L", "M"]
    L, M = summary
    half = 4.302652729911275 * 0.1 / math.sqrt(3)  # t(0.975, 2) · sd / √n
    assert L["used_reuse"]["mean"] == pytest.approx(0.6) and L["used_reuse"]["seeds"] == 3
    assert L["used_reuse"]["ci_low"] == pytest.approx(0.6 - half) and L["used_reuse"]["ci_high"] == pytest.approx(0.6 + half)
    assert L["excess"]["mean"] == pytest.approx(0.2) and L["null_median"]["ci_low"] == pytest.approx(0.4)
    assert L["null_significant"] == {"significant": 2, "tested": 3}  # p = 0.01, 0.04 < 0.05; 0.2 not
    assert L["mantel_significant"] == {"significant": 1, "tested": 2}  # one seed had no Mantel test
    assert L["drop_difference"]["mean"] == pytest.approx(0.2) and L["drop_difference"]["seeds"] == 2
    assert L["logprob_difference"]["mean"] == pytest.approx(0.2)
    assert L["sharing_drop"] == {"mean": None, "ci_low": None, "ci_high": None, "seeds": 0}
    assert M["used_reuse"] == {"mean": 0.9, "ci_low": None, "ci_high": None, "seeds": 1}
    assert M["mantel_significant"] == {"significant": 0, "tested": 0}  # NaN is not a test
    table = reuse_tests.markdown(summary, 3, ["a note"])
    assert f"| L | 0.600 [{0.6 - half:.3f}, {0.6 + half:.3f}] | 0.400 [0.400, 0.400] |" in table
    assert "| 2/3 |" in table and "| 1/2 |" in table and "| M | 0.900 | " in table and "| 0/0 |" in table
    assert table.rstrip().endswith("- a note")
