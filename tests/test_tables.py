"""Tables that read well: ``analysis/summarize.py`` sorts its rows (strategy, then overrides), prints the
overrides every row shares once above the table, writes parameter counts as whole numbers with thousands
separators; ``analysis/compare.py``'s markdown does the same for its counts; ``results.csv`` has every task's
train time in every protocol."""
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gift_cl.reporting import find_result_dirs, read_results

from runs import REPO, compose_cfg


def module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "analysis" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


summarize, compare = module("summarize"), module("compare")
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


def test_compare_markdown_writes_counts_with_separators_and_csv_keeps_numbers():
    row = {"method": "gift_multitask", "digits": "26.0 ± 1.4", "mean": "26.0 ± 1.4", "params": 1204608,
           "params_excl_head": 18038, "params_%": "1.551"}
    md = compare.to_markdown(["digits"], [row], ("optim.epochs=5",))
    assert md.startswith("recipe: `optim.epochs=5`")
    assert "| 1,204,608 | 18,038 | 1.551 |" in md
    assert "1204608,18038,1.551" in compare.to_csv(["digits"], [row])


# ----------------------------------------------------------------------------- results.csv: train time per task
@pytest.mark.parametrize("protocol, seconds, expected", [
    ("sequential", [3.5, 4.25], [3.5, 4.25]),  # experience i trains task i
    ("independent", [3.5, 4.25], [3.5, 4.25]),  # each task's own model
    ("joint", [9.0], [9.0, 9.0]),  # one experience trains every task: its time on every row
    ("sequential", [3.5], [3.5, None]),  # unfinished: the second task is not trained yet
])
def test_train_time_per_task_in_every_protocol(tmp_path, protocol, seconds, expected):
    from gift_cl.protocols import get_protocol
    from orchestration.results import write_results

    assert get_protocol(protocol).experience_times(seconds, 2) == expected
    strategy = {"sequential": "gift_multitask", "independent": "gift", "joint": "gift_joint"}[protocol]
    cfg = compose_cfg(f"strategy={strategy}")
    tasks = [SimpleNamespace(name=n, num_classes=k, train=[0] * 4, test=[0] * 2, info={})
             for n, k in (("digits", 10), ("signs", 43))]
    rows = {"sequential": [[0.5], [0.4, 0.6]][:len(seconds)], "independent": [[0.5], [0.6]][:len(seconds)],
            "joint": [[0.5, 0.6]]}[protocol]
    params = {"per_task": 100, "per_task_excl_classifier": 90, "backbone": 1000}
    progress = {"position": len(seconds), "matrix": rows, "time_s": seconds, "params": [params] * len(seconds)}
    counts = {"per_task": {0: 100, 1: 120}, "per_task_excl_classifier": {0: 90, 1: 90}, "shared": 50, "total": 270,
              "backbone": 1000}
    write_results(cfg, tmp_path, tasks, progress, None if protocol == "independent" else counts, None, final=False)
    with open(tmp_path / "results.csv") as f:
        times = [r["train_time_s"] for r in csv.DictReader(f)]
    assert times == ["" if t is None else str(t) for t in expected]
