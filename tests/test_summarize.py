"""``analysis/summarize.py``: runs that differ only in seed (or threads / progress) form one row, mean ± std."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from gift_cl.reporting import find_result_dirs, read_results

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("summarize", REPO / "analysis" / "summarize.py")
summarize = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(summarize)


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
