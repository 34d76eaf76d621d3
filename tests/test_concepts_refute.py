"""Concept reuse made refutable: used concepts, the untrained-head null, Mantel, the part-vocabulary experiment and
cluster ablation (gift_cl/concepts/refute.py)."""
import itertools
import math

import numpy as np
import pytest
import torch

from gift_cl import GiftConfig, get_gift_model, maskscore as S
from gift_cl.concepts import (
    AblationProbe,
    ablate_cluster,
    ablation_effect,
    concept_parts,
    counterparts,
    mantel_test,
    match_used,
    mean_used_reuse,
    null_test,
    pair_reuse,
    part_agreement,
    part_vocabulary_test,
    smallest_reachable_p,
    untrained_null,
    untrained_vectors,
    used_concepts,
    used_matches,
    used_reuse_matrix,
)
from gift_cl.concepts.stats import Match
from gift_cl.data import procedural as P
from gift_cl.interpret import concept_vectors, untrained_concepts

from runs import tiny_vit


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a busy machine the threads' hand-offs cost 100×."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blocks(wins, d=None):
    """``(M, d)`` positive vectors where concept ``m`` wins the argmax of ``wins[m]`` consecutive tokens."""
    d = d or sum(wins)
    v = 0.1 * torch.rand(len(wins), d, generator=torch.Generator().manual_seed(0))
    start = 0
    for m, w in enumerate(wins):
        v[m, start:start + w] += 1.0
        start += w
    return v


# ---------------------------------------------------------------------- used concepts
def test_a_concept_is_used_when_it_wins_enough_tokens():
    v = blocks([60, 39, 1, 0])
    assert used_concepts(v).tolist() == [0, 1]  # default: at least 1/(2M) = 12.5 % of the tokens
    assert used_concepts(v, min_share=0.01).tolist() == [0, 1, 2]
    assert used_concepts(v, min_share=0.0).tolist() == [0, 1, 2, 3]


def test_matching_is_restricted_to_used_concepts_and_keeps_their_indices():
    a = blocks([30, 30, 2, 38])  # uses 0, 1, 3
    b = a[[3, 1, 0, 2]]  # the same concepts, relabelled: b's 0 is a's 3, b's 2 is a's 0
    m = match_used(a, b)
    assert sorted(zip(m.rows.tolist(), m.cols.tolist())) == [(0, 2), (1, 1), (3, 0)]
    np.testing.assert_allclose(m.similarity, 1.0)
    assert len(match_used(a, b, used_a=[], used_b=[0]).rows) == 0
    names, r = used_reuse_matrix({"a": a, "b": b, "c": blocks([50, 50])[:, torch.randperm(100)]})
    assert names == ["a", "b", "c"] and r[0, 1] == pytest.approx(1.0) and r[0, 2] < 0.5
    assert set(used_matches({"a": a, "b": b, "c": a})) == {("a", "b"), ("a", "c"), ("b", "c")}


# ---------------------------------------------------------------------- the untrained-head null
def tiny_gift(heads=("0", "1", "2"), clusters=4, rank=8, depth=2, num_classes=5):
    """A tiny PaCa GiftModel in eval mode whose heads have distinct, non-zero recoveries ψ."""
    gift = get_gift_model(tiny_vit(num_classes=num_classes), GiftConfig.paca(rank=rank, depth=depth,
                                                                             num_clusters=clusters), heads=heads)
    torch.manual_seed(1)
    for gen in gift.generators.values():
        for i, head in enumerate(gen.heads.values()):
            torch.nn.init.normal_(head.recovery.weight, std=0.05 * (i + 1))
    return gift.eval()


def test_planted_reuse_is_far_above_the_untrained_head_null_and_untrained_reuse_is_not():
    gift = tiny_gift(clusters=6)
    layer = list(gift.layers())[0]
    heads = {"a": "0", "b": "1", "c": "2"}
    for gen in gift.generators.values():  # plant: task b's head gets task a's cluster assignments
        gen.heads["1"].clusters.load_state_dict(gen.heads["0"].clusters.state_dict())
    vectors = {t: concept_vectors(gift, layer, h) for t, h in heads.items()}
    assert torch.equal(vectors["a"], vectors["b"]) and not torch.equal(vectors["a"], vectors["c"])
    draw = untrained_vectors({t: untrained_concepts(gift, layer, h) for t, h in heads.items()})
    first = draw(0)
    assert first["a"].shape == vectors["a"].shape  # (M, d): the concept matrix transposed
    assert not torch.equal(first["a"], first["b"])  # every task of a draw has its own fresh head

    planted = untrained_null(pair_reuse("a", "b"), vectors, draw)
    assert len(planted.null) == 20 and planted.observed == pytest.approx(1.0)
    assert planted.p_value == planted.min_p == pytest.approx(1 / 21)
    assert planted.null_high < planted.observed and planted.excess_low > 0
    # an untrained head drawn outside the null's seeds: nothing to detect
    untrained = untrained_null(pair_reuse("a", "b"), draw(1000), draw)
    assert untrained.p_value > 0.2 and untrained.null_low <= untrained.observed <= untrained.null_high
    assert torch.equal(concept_vectors(gift, layer, "1"), vectors["b"])  # every trained head put back


def test_random_vectors_against_a_random_null_give_no_small_p():
    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return {t: torch.sigmoid(torch.randn(8, 96, generator=g)) for t in "abc"}

    shared = draw(500)
    shared["b"] = shared["a"].clone()
    assert untrained_null(mean_used_reuse, shared, draw, n_draws=30).p_value == pytest.approx(1 / 31)
    assert untrained_null(mean_used_reuse, draw(501), draw, n_draws=30).p_value > 0.2


def test_a_null_needs_twenty_finite_draws():
    with pytest.raises(ValueError, match="at least 20"):
        null_test(1.0, np.zeros(19))
    with pytest.raises(ValueError, match="not finite"):
        null_test(float("nan"), np.zeros(20))
    t = null_test(0.5, np.arange(20) / 19)  # draws 0, 1/19, ..., 1: ten of them ≥ 0.5
    assert t.p_value == pytest.approx(11 / 21) and t.excess == pytest.approx(0.0)


# ---------------------------------------------------------------------- Mantel
def symmetric(n, seed):
    m = np.random.default_rng(seed).random((n, n))
    m = (m + m.T) / 2
    np.fill_diagonal(m, 1.0)
    return m


def test_mantel_finds_a_noisy_copy_and_not_an_independent_matrix():
    a = symmetric(9, 0)
    noisy = a + 0.05 * symmetric(9, 1)
    copy = mantel_test(a, noisy, n_perm=999)
    assert not copy.exact and copy.n_perm == 999 and copy.r > 0.9 and copy.p == pytest.approx(1 / 1000)
    independent = mantel_test(a, symmetric(9, 2), n_perm=999)
    assert independent.p > 0.05 and abs(independent.r) < 0.5
    assert mantel_test(a, noisy, n_perm=999, method="spearman").r > 0.9


def test_mantel_enumerates_every_permutation_of_four_tasks():
    a = symmetric(4, 3)
    exact = mantel_test(a, a)
    assert exact.exact and exact.n_perm == 24 and exact.r == pytest.approx(1.0)
    assert exact.p == pytest.approx(1 / 24)  # only the identity relabelling reproduces every pair
    for seed in range(4, 10):
        p = mantel_test(a, symmetric(4, seed)).p
        assert p * 24 == pytest.approx(round(p * 24)) and 0 < p <= 1
    # Spearman is rank-based: a monotone transform is a perfect match, for Pearson it is not
    assert mantel_test(a, np.exp(8 * a), method="spearman").r == pytest.approx(1.0)
    assert mantel_test(a, np.exp(8 * a)).r < 0.999
    two = mantel_test(a, -a, alternative="two-sided")
    assert two.r == pytest.approx(-1.0) and two.p == pytest.approx(1 / 24)
    assert mantel_test(a, -a).p == pytest.approx(1.0)
    with pytest.raises(ValueError, match="symmetric"):
        mantel_test(a, np.triu(a))


# ---------------------------------------------------------------------- the part-vocabulary experiment
VOCABULARY = {"air1": "air", "air2": "air", "ped1": "ped", "ped2": "ped", "flower": "flower", "sign": "sign"}
PARTS = ["top", "middle", "bottom", "left"]  # a common part vocabulary every task's parts map to


def design(vocabulary):
    pairs = list(itertools.combinations(vocabulary, 2))
    return ([p for p in pairs if vocabulary[p[0]] == vocabulary[p[1]]],
            [p for p in pairs if vocabulary[p[0]] != vocabulary[p[1]]])


def part_experiment(part_order):
    """Each task holds the same 4 concepts in a shuffled order (``used_matches`` must undo it); concept ``k`` of
    the common base aligns with part ``part_order[task][k]``."""
    base = blocks([25, 25, 25, 25])
    vectors, parts = {}, {}
    for i, task in enumerate(VOCABULARY):
        order = torch.randperm(4, generator=torch.Generator().manual_seed(i))  # task concept j = base concept order[j]
        vectors[task] = base[order] + 0.05 * torch.rand(4, 100, generator=torch.Generator().manual_seed(50 + i))
        parts[task] = {j: part_order[task][int(k)] for j, k in enumerate(order)}
    return used_matches(vectors), parts


def test_the_part_design_needs_six_tasks_for_p_below_005():
    sharing, not_sharing = design(VOCABULARY)  # vocabulary groups {2, 2, 1, 1}
    assert smallest_reachable_p(sharing, not_sharing) == pytest.approx(2 * 2 * math.factorial(2) ** 2 / 720)
    four = design({"a": 1, "b": 1, "c": 2, "d": 2})
    assert smallest_reachable_p(*four) == pytest.approx(1 / 3)  # 2!·2!·2! of 4! relabellings tie: never < 0.05
    with pytest.raises(ValueError, match="both"):
        smallest_reachable_p([("a", "b")], [("b", "a")])


def test_planted_part_alignment_reaches_the_smallest_p_and_shuffled_parts_do_not():
    sharing, not_sharing = design(VOCABULARY)
    orders = {"air": [0, 1, 2, 3], "ped": [1, 0, 2, 3], "flower": [2, 3, 0, 1], "sign": [0, 3, 1, 2]}
    matches, parts = part_experiment({t: [PARTS[k] for k in orders[v]] for t, v in VOCABULARY.items()})
    planted = part_vocabulary_test(parts, matches, sharing, not_sharing)
    assert planted.exact and planted.n_relabellings == 720
    assert planted.sharing == 1.0 and planted.other < 1.0  # matched concepts align with the same part
    assert planted.agreement["air1", "air2"] == 1.0 and planted.agreement["air1", "ped1"] == 0.5
    assert planted.p_value == planted.min_p == pytest.approx(1 / 45)
    sampled = part_vocabulary_test(parts, matches, sharing, not_sharing, max_exact=5, n_perm=3000)
    assert not sampled.exact and sampled.p_value == sampled.min_p == pytest.approx(1 / 45, abs=0.01)
    assert sampled.min_p == smallest_reachable_p(sharing, not_sharing, max_exact=5, n_perm=3000)

    rng = np.random.default_rng(0)
    shuffled = {t: [PARTS[k] for k in rng.permutation(4)] for t in VOCABULARY}
    matches, parts = part_experiment(shuffled)
    assert part_vocabulary_test(parts, matches, sharing, not_sharing).p_value > 0.2


def test_part_agreement_counts_matched_pairs_that_both_have_a_part():
    m = Match(np.array([0, 1, 2]), np.array([2, 0, 1]), np.ones(3))
    assert part_agreement({0: "x", 1: "y", 2: "z"}, {2: "x", 0: "q"}, m) == 0.5  # concept 2 ↔ 1: b has no part
    assert math.isnan(part_agreement({}, {0: "x"}, m))


def test_concepts_are_given_the_part_their_token_map_finds(tmp_path, monkeypatch):
    monkeypatch.setenv("GIFT_CL_CACHE", str(tmp_path))
    _, _, masks = P.generate("aircraft", 24, seed=0, masks=True)
    names = P.MASK_LABELS["aircraft"]
    grid = (8, 8)
    rng = np.random.default_rng(0)
    wings = S.object_tokens(masks == names.index("wings"), grid)
    fuselage = S.object_tokens(masks == names.index("fuselage"), grid)
    maps = 0.3 * rng.standard_normal((24, 3) + grid)
    maps[:, 0] += wings
    maps[:, 1] -= fuselage  # low on the part: the negative sign finds it
    parts = concept_parts(maps, masks, names)
    assert parts[0] == "wings" and parts[1] == "fuselage"
    assert concept_parts(maps, masks, names, min_score=0.8, concepts=[0, 2]) == {0: "wings"}
    assert concept_parts(maps, masks, names, metric="iou", concepts=[1]) == {1: "fuselage"}


# ---------------------------------------------------------------------- ablation
def generator_of(gift):
    (key,) = gift.generators
    return gift.generators[key], gift.target_weights(key)


@pytest.mark.parametrize("mode", ["share", "drop"])
def test_ablation_changes_only_its_task_and_layer_and_restores_bit_for_bit(mode):
    gift = tiny_gift(heads=("0", "1"))
    x = torch.randn(4, 3, 32, 32)
    layers = list(gift.layers())
    with torch.no_grad():
        before = {h: gift(x, head=h) for h in ("0", "1")}
        deltas = gift.delta_weights("0")
        with ablate_cluster(gift, layers[1], cluster=2, head="0", mode=mode):
            inside = {h: gift(x, head=h) for h in ("0", "1")}
            ablated = gift.delta_weights("0")
        after = {h: gift(x, head=h) for h in ("0", "1")}
    assert not torch.allclose(inside["0"], before["0"])  # the task using the cluster changes
    assert torch.equal(inside["1"], before["1"])  # another task's head: untouched, bit for bit
    assert torch.equal(ablated[layers[0]], deltas[layers[0]])  # another layer of the same group: untouched
    assert not torch.allclose(ablated[layers[1]], deltas[layers[1]])
    for h in ("0", "1"):
        assert torch.equal(after[h], before[h])  # restored exactly, the cached residuals included


def paca_output(gen, weights, head="0", block=0):
    """The PaCa attention output of ``block`` in one generator call, seen after every hook already there."""
    seen = []
    handle = gen.trunk.blocks[block].mixer.register_forward_hook(lambda m, a, out: seen.append(out[0].clone()))
    try:
        with torch.no_grad():
            gen(weights, head=head)
    finally:
        handle.remove()
    return seen[0]


def test_the_shares_of_all_clusters_add_up_to_the_paca_output():
    gift = tiny_gift(heads=("0",), clusters=5)
    gen, weights = generator_of(gift)
    layer, index = list(gift.layers())[1], 1
    full, ablated = paca_output(gen, weights), []
    for cluster in range(5):
        with ablate_cluster(gift, layer, cluster, head="0"):
            ablated.append(paca_output(gen, weights))
    # out = b_o + Σ_m term_m: removing each cluster's term in turn accounts for the whole output but the bias
    terms = sum(full[index] - a[index] for a in ablated)
    torch.testing.assert_close(terms + gen.trunk.blocks[0].mixer.proj.bias, full[index], rtol=1e-4, atol=1e-5)
    assert all(torch.equal(a[0], full[0]) for a in ablated)  # the other layer's slice: bit for bit


def test_ablation_refuses_what_it_cannot_remove():
    gift = tiny_gift(heads=("0",))
    layer = list(gift.layers())[0]
    for kwargs, error in (({"cluster": 4}, IndexError), ({"cluster": 0, "block": 2}, IndexError),
                          ({"cluster": 0, "mode": "zero"}, ValueError)):
        with pytest.raises(error), ablate_cluster(gift, layer, head="0", **kwargs):
            pass
    linear = get_gift_model(tiny_vit(), GiftConfig.linear(rank=4))
    with pytest.raises(ValueError, match="no PaCa clusters"), ablate_cluster(linear, layer, 0):
        pass


def test_counterparts_name_each_tasks_match_of_a_concept():
    a = blocks([30, 30, 40])
    vectors = {"a": a, "b": a[[2, 0, 1]], "c": blocks([50, 50])}
    found = counterparts(vectors, "a", 0)
    assert found["b"][0] == 1 and found["b"][1] == pytest.approx(1.0)
    assert found["c"][0] == 0 and 0.5 < found["c"][1] < 0.9  # overlapping but different token blocks
    with pytest.raises(ValueError, match="not used"):
        counterparts({"a": blocks([99, 1]), "b": a[:2]}, "a", 1)


def test_ablation_costs_accuracy_where_the_cluster_carries_the_residual():
    gift = tiny_gift(heads=("0", "1"))
    for gen in gift.generators.values():
        torch.nn.init.normal_(gen.heads["0"].recovery.weight, std=2.0)  # task t0: a residual that decides
        torch.nn.init.zeros_(gen.heads["1"].recovery.weight)  # task t1: ΔW = 0 whatever the clusters do
        with torch.no_grad():
            gen.trunk.blocks[0].mixer.v.weight.mul_(20.0)  # the clusters' values dominate the first block
    x = torch.randn(64, 3, 32, 32)
    with torch.no_grad():
        labels = {h: gift(x, head=h).argmax(-1) for h in ("0", "1")}  # each task's own predictions: accuracy 1
    layer = list(gift.layers())[0]
    probes = {"t0": AblationProbe("0", 1, x, labels["0"]), "t1": AblationProbe("1", 1, x, labels["1"])}
    effect = ablation_effect(gift, layer, probes, sharing={"t0"}, batch_size=16)
    assert effect.per_task["t0"]["accuracy"] == effect.per_task["t1"]["accuracy"] == 1.0
    assert effect.per_task["t1"]["drop"] == 0.0 and effect.per_task["t0"]["drop"] >= 0.2
    assert effect.sharing_drop == effect.difference == effect.per_task["t0"]["drop"] and effect.other_drop == 0.0
    # the continuous measure moves only where the cluster carries the residual
    assert effect.per_task["t1"]["logprob_drop"] == 0.0 and effect.per_task["t0"]["logprob_drop"] != 0.0
    assert effect.logprob_difference == effect.sharing_logprob_drop == effect.per_task["t0"]["logprob_drop"]
    assert not gift.training  # eval mode kept
