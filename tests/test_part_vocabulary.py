"""analysis/part_vocabulary.py (``gift-cl part-vocabulary``): the part-vocabulary test on a finished multi-task GIFT
run over the six part-vocabulary domains, and the summary over seeds."""
import csv
import json

import pytest
import torch

from gift_cl.analysis import part_vocabulary
from gift_cl.data.procedural import PART_VOCABULARY
from gift_cl.orchestration.cli import TOOLS

from runs import tiny_gift_run

LAYER = "blocks.0.attn.proj"


@pytest.fixture(scope="module")
def parts_run(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # 4-pixel patches, as the default backbone's: a marker covers about one such token at 32 px
        yield tiny_gift_run(tmp_path_factory.mktemp("runs") / "parts", f"[{','.join(PART_VOCABULARY)}]",
                            "model.kwargs.patch_size=4")
    finally:
        torch.set_num_threads(threads)


def test_a_run_gets_every_pairs_agreement_and_the_permutation_test(parts_run, tmp_path):
    assert TOOLS["part-vocabulary"] == "gift_cl.analysis.part_vocabulary"
    assert part_vocabulary.main([str(parts_run), "--out", str(tmp_path), "--layer", LAYER, "--n-images", "24"]) == 0
    rows = list(csv.DictReader((tmp_path / "part_vocabulary.csv").open()))
    assert [r["layer"] for r in rows] == [LAYER]
    row = rows[0]
    assert (int(row["tasks"]), int(row["sharing_pairs"]), int(row["other_pairs"])) == (6, 4, 11)
    assert float(row["min_p"]) == pytest.approx(1 / 60) and float(row["min_p"]) <= float(row["p"]) <= 1.0
    saved = json.loads((tmp_path / "part_vocabulary.json").read_text())
    detail = saved["details"][0]
    assert len(detail["agreement"]) == 15
    assert set(detail["parts"]) == set(PART_VOCABULARY)
    assert {p for parts in detail["parts"].values() for p in parts.values()} <= {"frame", "marker"}
    defined = [v for v in detail["agreement"].values() if v is not None]
    assert defined and all(0.0 <= v <= 1.0 for v in defined)
    if row["difference"]:
        assert float(row["difference"]) == pytest.approx(float(row["sharing"]) - float(row["other"]))
    assert f"| {LAYER} |" in (tmp_path / "part_vocabulary.md").read_text()


def test_a_path_that_is_not_a_run_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "index.tsv").write_text("")
    with pytest.raises(SystemExit):
        part_vocabulary.main([str(tmp_path / "index.tsv"), "--out", str(tmp_path / "out")])
    assert "not run directories (no config_resolved.yaml)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_summary_resolves_a_difference_only_when_every_seed_agrees():
    rows = [{"layer": "L", "seed": s, "sharing": 0.8 + d, "other": 0.5, "difference": 0.3 + d, "p": p,
             "min_p": 1 / 60} for s, (d, p) in enumerate([(0.0, 0.01), (0.02, 0.2), (-0.01, 0.04)])]
    entry = part_vocabulary.summarize(rows)[0]
    assert entry["difference"]["mean"] == pytest.approx(0.3 + 0.01 / 3)
    assert entry["resolved"] is True and entry["significant"] == {"significant": 2, "tested": 3}
    mixed = [{**r, "difference": v} for r, v in zip(rows, (0.3, -0.4, 0.1))]
    assert part_vocabulary.summarize(mixed)[0]["resolved"] is False
