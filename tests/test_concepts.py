"""Concept reuse math on constructed concept vectors (no model, no run)."""
import json

import numpy as np
import pytest
import torch

from gift_cl.concepts import (
    agreement_matrices,
    analyze,
    chance_reuse,
    cross_layer_reuse,
    global_concepts,
    group_reuse,
    match_clusters,
    prototype_similarity,
    relate,
    reuse_matrix,
    reuse_vs_gain,
    similarity,
    task_dendrogram,
    tsne_embedding,
)


def rand(m, d=48, seed=0):
    return torch.rand(m, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("center", [True, False])
def test_hungarian_recovers_a_permutation_and_reuse_is_one(center):
    a = rand(7)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(3))
    b = a[perm]  # b[j] = a[perm[j]]
    m = match_clusters(a, b, center)
    assert (perm[m.cols].numpy() == m.rows).all()
    np.testing.assert_allclose(m.similarity, 1.0, atol=1e-12)
    names, r = reuse_matrix({"a": a, "b": b, "c": rand(7, seed=9)}, center)
    assert names == ["a", "b", "c"]
    np.testing.assert_allclose(r, r.T)
    np.testing.assert_allclose(np.diag(r), 1.0)
    assert r[0, 1] == pytest.approx(1.0) and r[0, 2] < 0.99


def test_unequal_cluster_counts_match_the_common_concepts():
    a = rand(4)
    b = torch.cat([rand(3, seed=5), a.flip(0)])
    m = match_clusters(a, b)
    assert len(m.rows) == 4 and m.cols.tolist() == [6, 5, 4, 3]
    assert m.mean == pytest.approx(1.0) and m.fraction(0.99) == 1.0


def test_centring_removes_the_offset_of_positive_assignments():
    a, b = torch.sigmoid(torch.randn(20, 500)), torch.sigmoid(torch.randn(20, 500))
    raw, centred = similarity(a, b, center=False), similarity(a, b, center=True)
    assert raw.mean() > 0.6 and abs(centred.mean()) < 0.05
    assert chance_reuse({"a": a, "b": a}, center=True) < 0.3 < reuse_matrix({"a": a, "b": a})[1][0, 1]


def planted(k=4, tasks=5, per_task=8, d=64, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g)
    vectors, truth = {}, {}
    for t in range(tasks):
        which = torch.arange(per_task) % k
        which = which[torch.randperm(per_task, generator=g)]
        vectors[f"t{t}"] = centers[which] + noise * torch.randn(per_task, d, generator=g)
        truth[f"t{t}"] = which.tolist()
    return vectors, truth


def test_silhouette_picks_the_planted_number_of_concepts():
    vectors, truth = planted(k=4)
    g = global_concepts(vectors, k_range=range(2, 10))
    assert g["k"] == 4 and max(g["silhouette"], key=g["silhouette"].get) == 4
    assert g["shared_concepts"] == 4 and all(sum(row) == 8 for row in g["counts"])
    # the global labels are the planted ones up to a renaming
    flat_true = sum(truth.values(), [])
    flat = sum((g["labels"][t] for t in vectors), [])
    assert len({(a, b) for a, b in zip(flat_true, flat)}) == 4
    assert global_concepts(planted(k=6, seed=1)[0], k_range=range(2, 12))["k"] == 6


def test_nmi_and_ari_are_one_for_the_same_partition_under_relabelled_clusters():
    a = rand(5, d=200)
    perm = torch.tensor([3, 0, 4, 1, 2])
    names, nmi, ari = agreement_matrices({"a": a, "b": a[perm], "c": rand(5, d=200, seed=4)})
    assert nmi[0, 1] == pytest.approx(1.0) and ari[0, 1] == pytest.approx(1.0)
    assert nmi[0, 2] < 0.2 and abs(ari[0, 2]) < 0.1
    np.testing.assert_allclose(np.diag(nmi), 1.0)
    # every token in one concept (near-constant sigmoid assignments): agreement is undefined, not 1
    flat = torch.zeros(4, 30)
    flat[2] = 1.0
    _, nmi, ari = agreement_matrices({"a": flat, "b": flat.roll(1, 0)})
    assert np.isnan(nmi[0, 1]) and np.isnan(ari[0, 1])


def test_dendrogram_joins_the_tasks_that_share_concepts_first():
    a = rand(6)
    vectors = {"a": a, "b": a[[1, 0, 2, 3, 5, 4]] + 0.01 * rand(6, seed=2), "c": rand(6, seed=7)}
    names, r = reuse_matrix(vectors)
    z = task_dendrogram(names, r)
    assert z.shape == (2, 4) and sorted(z[0, :2].astype(int).tolist()) == [0, 1]
    assert z[0, 2] == pytest.approx(1 - r[0, 1])


def test_tsne_embeds_every_concept():
    vectors, _ = planted(k=3, tasks=3, per_task=5)
    t = tsne_embedding(vectors)
    assert t["coords"].shape == (15, 2) and t["task"][:5] == ["t0"] * 5 and t["concept"][:5] == list(range(5))


def test_reuse_against_task_similarity_and_gain():
    protos = {n: torch.randn(16, generator=torch.Generator().manual_seed(i)) for i, n in enumerate("abcd")}
    s = prototype_similarity(protos)
    np.testing.assert_allclose(np.diag(s), 1.0)
    p = protos["a"] / protos["a"].norm()
    assert s[0, 1] == pytest.approx(float(p @ (protos["b"] / protos["b"].norm())))
    rel = relate(0.5 * s + 0.2, s)
    assert rel["n"] == 6 and rel["pearson"] == pytest.approx(1.0) and rel["spearman"] == pytest.approx(1.0)
    names = list("abcd")
    r = np.array([[1, .9, .5, .3], [.9, 1, .4, .2], [.5, .4, 1, .1], [.3, .2, .1, 1]])
    mean_reuse = [(r[i].sum() - 1) / 3 for i in range(4)]
    gains = {n: 2 * m for n, m in zip(names, mean_reuse)}
    out = reuse_vs_gain(names, r, gains)
    assert out["mean_reuse"]["spearman"] == pytest.approx(1.0)
    assert out["per_task"][0]["max_reuse_earlier"] is None and out["per_task"][2]["max_reuse_earlier"] == 0.5
    assert out["max_reuse_earlier"]["n"] == 3


def test_cross_layer_reuse_of_unchanged_concepts_is_one():
    vectors, _ = planted(k=3, tasks=2, per_task=6)
    layers, r = cross_layer_reuse({"l0": vectors, "l1": {t: v.flip(0) for t, v in vectors.items()}})
    assert layers == ["l0", "l1"] and r[0, 1] == pytest.approx(1.0)


def test_analyze_writes_every_layer_without_overwriting(tmp_path):
    v0, _ = planted(k=3, tasks=3, per_task=6, seed=0)
    v1, _ = planted(k=2, tasks=3, per_task=6, seed=1)
    protos = {n: torch.randn(8) for n in v0}
    report = analyze({"blocks.0.attn.proj": v0, "blocks.1.attn.proj": v1}, prototypes=protos,
                     gains={"t0": 0.1, "t1": 0.2, "t2": 0.05}, out_dir=tmp_path, k_range=range(2, 6))
    assert [d["layer"] for d in report["depth"]] == ["blocks.0.attn.proj", "blocks.1.attn.proj"]
    assert report["layers"]["blocks.0.attn.proj"]["global"]["k"] == 3
    assert report["layers"]["blocks.1.attn.proj"]["global"]["k"] == 2
    for layer in report["layers"]:
        d = tmp_path / layer
        for f in ("concepts.json", "reuse.csv", "nmi.csv", "ari.csv", "tsne.csv", "global_concepts.csv",
                  "task_similarity.csv", "reuse.png", "nmi.png", "dendrogram.png", "tsne.png",
                  "global_concepts.png", "relations.png"):
            assert (d / f).is_file(), (layer, f)
        saved = json.loads((d / "concepts.json").read_text())
        assert saved["tasks"] == ["t0", "t1", "t2"] and len(saved["reuse"]) == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["reuse"]) == 3 and summary["reuse"][0][0] == pytest.approx(1.0)
    for f in ("depth.csv", "cross_layer.csv", "depth.png", "cross_layer.png"):
        assert (tmp_path / f).is_file(), f


def test_group_reuse_compares_within_and_between_groups_with_an_exact_permutation_floor():
    names = ["a", "b", "c", "d", "e", "f"]
    r = np.full((6, 6), 0.1)
    np.fill_diagonal(r, 1.0)
    for i, j, v in ((0, 1, 0.8), (0, 2, 0.6), (1, 2, 0.7), (3, 4, 0.9)):
        r[i, j] = r[j, i] = v
    g = group_reuse(names, r, {"x": ["a", "b", "c"], "y": ["d", "e"], "absent": ["zz"]})
    assert g["groups"] == {"x": ["a", "b", "c"], "y": ["d", "e"]}
    assert g["within"] == pytest.approx(0.75) and g["between"] == pytest.approx(0.1)
    assert g["per_group"] == pytest.approx({"x": 0.7, "y": 0.9}) and g["ungrouped"] == pytest.approx(0.1)
    # 5 grouped tasks in groups of 3 and 2: 10 relabellings, the observed one is the most extreme
    assert g["p_between"] == pytest.approx(0.1) and g["min_p_between"] == pytest.approx(0.1)
    # every task shuffled (f a singleton): 6!/(3!·2!·1!) = 60 relabellings
    assert g["p_others"] == pytest.approx(1 / 60) and g["min_p_others"] == pytest.approx(1 / 60)
    flat = group_reuse(names, np.eye(6), {"x": ["a", "b"], "y": ["c", "d"]})
    assert flat["p_between"] == 1.0 and flat["p_others"] == 1.0
    assert group_reuse(names, r, {"x": ["a"], "y": ["b"]})["p_between"] is None  # no pair inside a group


def test_analyze_reports_the_control_and_the_groups():
    vectors, _ = planted(k=3, tasks=4, per_task=6)
    control = {t: rand(6, seed=i) for i, t in enumerate(vectors)}
    rep = analyze({"l": vectors}, control={"l": control}, groups={"g": ["t0", "t1"]}, tsne=False,
                  k_range=range(2, 5))
    layer = rep["layers"]["l"]
    assert layer["control_reuse"].shape == (4, 4) and layer["control_reuse_off_diagonal"] < layer["reuse_off_diagonal"]
    assert set(rep["depth"][0]) >= {"control", "within_groups", "between_groups"}
    assert layer["groups"]["within"] == pytest.approx(layer["reuse"][0, 1])
