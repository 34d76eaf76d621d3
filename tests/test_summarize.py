"""``analysis/summarize.py``: runs that differ only in seed (or threads / progress) form one row, mean ± std;
the rows are sorted (strategy, then overrides), the overrides every row shares are printed once above the
table, parameter counts are whole numbers with thousands separators."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gift_cl.analysis import summarize
from gift_cl.reporting import find_result_dirs, read_results

REPO = Path(__file__).resolve().parents[1]


def _run(root: Path, seed: int, acc: float, wall: float, threads: int) -> None:
    run = root / f"run{seed}"
    run.mkdir(parents=True)
    res = {"schema_version": 1, "strategy": "artihippo", "protocol": "sequential", "seed": seed,
           "overrides": ["strategy=artihippo", f"seed={seed}", f"threads={threads}", "progress=false"],
           "tasks": [{"name": "digits"}], "final_accuracy": {"digits": acc}, "average_accuracy": acc,
           "forgetting": 0.0, "bwt": 0.0, "task_id_accuracy": None, "wall_time_s": wall,
           "params": {"per_task": {"digits": 1500}, "per_task_excl_classifier": {"digits": 1000}, "shared": 0},
           "finished": True}
    (run / "results.json").write_text(json.dumps(res))


def test_seeds_form_one_row_with_mean_and_std(tmp_path):
    for seed, (acc, wall, threads) in enumerate([(0.5, 100.0, 1), (0.6, 120.0, 2)]):
        _run(tmp_path, seed, acc, wall, threads)
    rows = summarize.table([read_results(p) for p in find_result_dirs([str(tmp_path)])])
    assert len(rows) == 1
    row = rows[0]
    assert row["seeds"] == "0,1" and row["overrides"] == ""
    assert row["avg_acc"][0] == 55.0 and abs(row["avg_acc"][1] - 7.0710678) < 1e-6
    assert row["wall_time_s"][0] == 110.0 and row["params_per_task_excl_head"][0] == 1000
    out = subprocess.run([sys.executable, str(REPO / "analysis" / "summarize.py"), str(tmp_path)],
                         capture_output=True, text=True, check=True).stdout
    assert "55.00 ± 7.07" in out and "110.00 ± 14.14" in out


# ----------------------------------------------------------------------------- tables that read well
RECIPE = ["benchmark.n_train=200", "optim.epochs=5"]


def fake(root: Path, name: str, strategy: str, seed: int, acc: float, overrides=(), per_task=18688, shared=0,
         forgetting=None):
    run = root / name
    run.mkdir(parents=True)
    res = {"schema_version": 1, "strategy": strategy, "protocol": "sequential", "seed": seed,
           "overrides": [f"strategy={strategy}", f"seed={seed}", *RECIPE, *overrides],
           "tasks": [{"name": "digits"}], "final_accuracy": {"digits": acc}, "average_accuracy": acc,
           "forgetting": forgetting, "bwt": None, "task_id_accuracy": None, "wall_time_s": 80.0 + seed,
           "params": {"per_task": {"digits": per_task}, "per_task_excl_classifier": {"digits": per_task - 650},
                      "shared": shared}, "finished": True}
    (run / "results.json").write_text(json.dumps(res))


@pytest.fixture
def sweep(tmp_path):
    # written in an order the table must not keep
    fake(tmp_path, "a", "lora_multitask", 0, 0.30, ["optim.lr=0.03"], per_task=12938)
    fake(tmp_path, "b", "gift_multitask", 0, 0.25, ["optim.lr=0.01"], shared=87360, forgetting=0.0)
    fake(tmp_path, "c", "gift_multitask", 1, 0.27, ["optim.lr=0.01"], shared=87360, forgetting=0.02)
    fake(tmp_path, "d", "gift_multitask", 0, 0.20, ["optim.lr=0.003"], shared=87360)
    fake(tmp_path, "e", "finetune_multitask", 0, 0.40, ["optim.lr=0.001"], per_task=1204608)
    return tmp_path


def test_summary_rows_are_sorted_and_the_shared_overrides_printed_once(sweep):
    rows = summarize.table([read_results(p) for p in find_result_dirs([str(sweep)])])
    assert [(r["strategy"], r["overrides"]) for r in rows] == [
        ("finetune_multitask", "benchmark.n_train=200 optim.epochs=5 optim.lr=0.001"),
        ("gift_multitask", "benchmark.n_train=200 optim.epochs=5 optim.lr=0.003"),
        ("gift_multitask", "benchmark.n_train=200 optim.epochs=5 optim.lr=0.01"),
        ("lora_multitask", "benchmark.n_train=200 optim.epochs=5 optim.lr=0.03")]
    assert summarize.shared_overrides(rows) == RECIPE
    lines = summarize.format_table(rows).splitlines()
    assert lines[0] == "overrides of every row: benchmark.n_train=200 optim.epochs=5"
    assert sum("optim.epochs=5" in line for line in lines) == 1  # not repeated in the rows
    header, *body = lines[1:]
    assert [line.split()[0] for line in body] == ["finetune_multitask", "gift_multitask", "gift_multitask",
                                                   "lora_multitask"]
    gift = body[2]
    assert "optim.lr=0.01" in gift and "26.00 ± 1.41" in gift  # accuracy in %: mean ± std over the seeds
    assert "18,688" in gift and "18,038" in gift and "87,360" in gift  # counts: whole numbers, no "± 0"
    assert summarize.fmt(rows[2]["params_per_task"], "params_per_task") == "18,688"
    assert "1,204,608" in body[0] and "0.00 ± 0.00" not in "\n".join(lines)
    # one seed: the mean alone (the standard deviation of one value is undefined, not 0)
    assert "40.00" in body[0] and "40.00 ±" not in body[0]


def test_summary_marks_a_number_only_some_runs_have(tmp_path):
    fake(tmp_path, "a", "gift_multitask", 0, 0.25, forgetting=0.04)
    fake(tmp_path, "b", "gift_multitask", 1, 0.27)
    rows = summarize.table([read_results(p) for p in find_result_dirs([str(tmp_path)])])
    assert summarize.fmt(rows[0]["forgetting"], "forgetting") == "4.00 (1/2)"
    lines = summarize.format_table(rows).splitlines()
    assert lines[0] == "overrides of every row: benchmark.n_train=200 optim.epochs=5"
    assert lines[2].split()[:3] == ["gift_multitask", "sequential", "-"]  # nothing left to say in the row


def test_summary_cli_prints_the_table_and_writes_full_csv(sweep, tmp_path):
    out_csv = tmp_path / "table.csv"
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "summarize.py"), str(sweep), "--csv", str(out_csv)],
                          capture_output=True, text=True, check=True)
    assert proc.stdout.splitlines()[0] == "overrides of every row: benchmark.n_train=200 optim.epochs=5"
    with open(out_csv) as f:
        rows = list(csv.DictReader(f))
    assert [r["strategy"] for r in rows] == ["finetune_multitask", "gift_multitask", "gift_multitask", "lora_multitask"]
    assert rows[0]["overrides"] == "benchmark.n_train=200 optim.epochs=5 optim.lr=0.001"  # the CSV keeps it all
    assert float(rows[0]["params_per_task"]) == 1204608 and rows[0]["params_per_task_std"] == ""
    assert float(rows[2]["avg_acc_std"]) == pytest.approx(1.4142, abs=1e-3)
