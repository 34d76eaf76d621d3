"""analysis/compare.py on fake sweeps: hyperparameters chosen on val runs, numbers from matching test runs."""
import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from gift_cl.analysis import compare
from gift_cl.reporting import find_result_dirs, read_results

REPO = Path(__file__).resolve().parents[1]

TASKS = ("digits", "signs")


def fake(root: Path, strategy: str, seed: int, split: str, acc: dict, overrides=(), params=1000, backbone=100000,
         finished=True, forgetting=None) -> Path:
    """A results.json as the run loop writes it (schema_version 1, independent protocol)."""
    run = root / f"{len(list(root.glob('*')))}_{strategy}"
    run.mkdir(parents=True)
    over = [f"strategy={strategy}", f"seed={seed}", *overrides]
    if split == "val":
        over += ["benchmark.eval_split=val", "benchmark.n_val=100"]
    res = {
        "schema_version": 1, "strategy": strategy.split("+")[0], "method": "X", "protocol": "independent",
        "benchmark": "procedural", "seed": seed, "overrides": over,
        "tasks": [{"name": t, "num_classes": 10, "n_train": 10, "n_test": 10,
                   "info": {"eval_split": split}} for t in acc],
        "accuracy_matrix": [[a] for a in acc.values()],
        "final_accuracy": dict(acc), "average_accuracy": sum(acc.values()) / len(acc),
        "params": {"per_task": {t: params for t in acc}, "per_task_excl_classifier": {t: params - 100 for t in acc},
                   "shared": 0, "total": params * len(acc), "backbone": backbone},
        "forgetting": forgetting, "finished": finished,
    }
    (run / "results.json").write_text(json.dumps(res))
    return run


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun"
    # lora: lr 1e-2 is best on val, lr 1e-3 would be best on test: the test numbers must not decide
    for seed, (va, vb, ta, tb) in enumerate([(0.80, 0.60, 0.70, 0.50), (0.82, 0.62, 0.74, 0.54)]):
        fake(root, "lora", seed, "val", {"digits": va, "signs": vb}, ["optim.lr=1e-2"])
        fake(root, "lora", seed, "test", {"digits": ta, "signs": tb}, ["optim.lr=1e-2"])
        fake(root, "lora", seed, "val", {"digits": va - 0.1, "signs": vb - 0.1}, ["optim.lr=1e-3"])
        fake(root, "lora", seed, "test", {"digits": 0.99, "signs": 0.99}, ["optim.lr=1e-3"])
    # gift + gist add-on: lr 1e-3 wins on digits, 1e-2 on signs (matters for --select per-task)
    for seed in (0, 1, 2):
        fake(root, "gift", seed, "val", {"digits": 0.9, "signs": 0.5}, ["optim.lr=1e-3", "+addon=gist"], params=500)
        fake(root, "gift", seed, "val", {"digits": 0.7, "signs": 0.6}, ["optim.lr=1e-2", "+addon=gist"], params=500)
        fake(root, "gift", seed, "test", {"digits": 0.8 + 0.01 * seed, "signs": 0.4}, ["optim.lr=1e-3", "+addon=gist"],
             params=500)
        fake(root, "gift", seed, "test", {"digits": 0.6, "signs": 0.55}, ["optim.lr=1e-2", "+addon=gist"], params=500)
    # linear: no val runs, one setting
    fake(root, "linear", 0, "test", {"digits": 0.3, "signs": 0.2}, params=200)
    fake(root, "linear", 1, "test", {"digits": 0.3, "signs": 0.2}, params=200, finished=False)  # ignored
    return root


def _rows(sweep, select="mean"):
    runs = [compare.Run(read_results(p), p) for p in find_result_dirs([str(sweep)])
            if read_results(p)["finished"]]
    tasks, rows = compare.compare(runs, select)
    return tasks, {r["method"]: r for r in rows}


def test_selection_on_val_reports_matching_test_runs(sweep):
    tasks, rows = _rows(sweep)
    assert tasks == list(TASKS) and sorted(rows) == ["gift+gist", "linear", "lora"]
    lora = rows["lora"]
    assert lora["hyperparameters"] == "optim.lr=1e-2"  # chosen on val although 1e-3 is better on test
    assert lora["digits"] == "72.0 ± 2.8" and lora["signs"] == "52.0 ± 2.8"
    assert lora["mean"] == "62.0 ± 2.8" and lora["seeds"] == 2
    # a reviewer's objections are named: a 2-value grid has only edges, and the val seeds are the test seeds
    assert lora["selection"] == "val 71.0; optim.lr=1e-2 at the grid's upper edge; val seed(s) 0, 1 also test seeds"
    assert lora["params"] == 1000 and lora["params_excl_head"] == 900 and lora["params_%"] == "1.000"
    gift = rows["gift+gist"]  # mean val: 1e-3 -> 0.70, 1e-2 -> 0.65
    assert gift["hyperparameters"] == "optim.lr=1e-3"
    assert gift["digits"] == "81.0 ± 1.0" and gift["signs"] == "40.0 ± 0.0" and gift["seeds"] == 3
    linear = rows["linear"]
    assert linear["selection"] == "no val runs" and linear["digits"] == "30.0" and linear["seeds"] == 1


def test_per_task_selection(sweep):
    _, rows = _rows(sweep, "per-task")
    gift = rows["gift+gist"]
    assert gift["hyperparameters"] == "digits: optim.lr=1e-3; signs: optim.lr=1e-2"
    assert gift["digits"] == "81.0 ± 1.0" and gift["signs"] == "55.0 ± 0.0"
    assert gift["mean"] == "68.0 ± 0.5"


def test_ties_prefer_fewer_parameters_and_missing_test_runs_are_reported(tmp_path):
    fake(tmp_path, "vpt", 0, "val", {"digits": 0.5}, ["strategy.method.length=50"], params=5000)
    fake(tmp_path, "vpt", 0, "val", {"digits": 0.5}, ["strategy.method.length=10"], params=1000)
    fake(tmp_path, "vpt", 0, "test", {"digits": 0.4}, ["strategy.method.length=50"], params=5000)
    runs = [compare.Run(read_results(p), p) for p in find_result_dirs([str(tmp_path)])]
    _, (row,) = compare.compare(runs)
    assert row["hyperparameters"] == "strategy.method.length=10"
    assert row["digits"] == "" and "no test runs for the chosen setting on digits" in row["selection"]


def test_cli_writes_markdown_and_csv(sweep, tmp_path):
    out_csv, out_md = tmp_path / "t.csv", tmp_path / "t.md"
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "compare.py"), str(sweep), "--csv", str(out_csv),
                           "--md", str(out_md)], capture_output=True, text=True, check=True)
    assert proc.stdout == out_md.read_text()
    header = proc.stdout.splitlines()[0]
    assert header.startswith("| method | digits | signs | mean | forgetting | seeds | params |")
    table = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert [r["method"] for r in table] == ["gift+gist", "linear", "lora"]
    assert table[2]["hyperparameters"] == "optim.lr=1e-2"


def test_addons_are_part_of_the_method_and_schema_is_checked(tmp_path):
    assert compare.addons_of(["+addon=[gist,coeff]"]) == ["coeff", "gist"]
    assert compare.addons_of(["+plugin=gist"]) == ["gist"]  # runs written under the group's former name
    run = fake(tmp_path, "lora", 0, "test", {"digits": 0.5}, ["+addon=coeff"])
    assert compare.Run(read_results(run)).method == "lora+coeff"
    data = json.loads((run / "results.json").read_text())
    data["schema_version"] = 3
    (run / "results.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="schema_version"):
        read_results(run)


def test_one_dataset_per_run_sweeps_merge_into_one_row(tmp_path):
    """VTAB style: every run holds one dataset (benchmark=vtab/<name>); a setting's runs merge across them."""
    for seed in (0, 1):
        for lr, shift in (("1e-2", 0.0), ("1e-3", -0.2)):
            for name, acc in (("cifar", 0.6), ("dtd", 0.4)):
                for split in ("val", "test"):
                    fake(tmp_path, "gift", seed, split, {name: acc + shift + 0.02 * seed},
                         [f"benchmark=vtab/{name}", f"optim.lr={lr}"], params={"cifar": 1100, "dtd": 1500}[name])
    runs = [compare.Run(read_results(p), p) for p in find_result_dirs([str(tmp_path)])]
    tasks, (row,) = compare.compare(runs)
    assert tasks == ["cifar", "dtd"] and row["hyperparameters"] == "optim.lr=1e-2"
    assert row["cifar"] == "61.0 ± 1.4" and row["dtd"] == "41.0 ± 1.4" and row["mean"] == "51.0 ± 1.4"
    assert row["seeds"] == 2 and row["params"] == 1300


def test_plugins_are_read_from_the_resolved_config(tmp_path):
    run = fake(tmp_path, "adapter", 0, "test", {"digits": 0.5})
    (run / "config_resolved.yaml").write_text("strategy:\n  method:\n    plugins:\n      gist: {}\n      coeff: {}\n")
    assert compare.Run(read_results(run), run).method == "adapter+coeff+gist"


def test_generator_choice_is_its_own_row_and_the_shared_recipe_is_printed_once(tmp_path):
    """``generator=linear`` chooses a method (GIFT-linear), it is not a hyperparameter to select over; the
    overrides every run shares (the CPU recipe) are printed once; forgetting is mean ± std over seeds."""
    recipe = ["benchmark.n_train=200", "optim.epochs=5"]
    for seed in (0, 1):
        for gen, acc in (([], 0.5), (["generator=linear"], 0.6)):
            for lr, shift in (("1e-2", 0.0), ("3e-2", -0.1)):
                for split in ("val", "test"):
                    fake(tmp_path, "gift_multitask", seed, split, {"digits": acc + shift}, [*gen, *recipe, f"optim.lr={lr}"],
                         forgetting=0.01 * (seed + 1))
    runs = [compare.Run(read_results(p), p) for p in find_result_dirs([str(tmp_path)])]
    common = compare.recipe(runs)
    assert common == tuple(recipe)
    compare.strip_recipe(runs, common)
    _, rows = compare.compare(runs)
    rows = {r["method"]: r for r in rows}
    assert sorted(rows) == ["gift_multitask", "gift_multitask[generator=linear]"]
    assert rows["gift_multitask[generator=linear]"]["digits"] == "60.0 ± 0.0"
    assert rows["gift_multitask"]["hyperparameters"] == "optim.lr=1e-2"
    assert rows["gift_multitask"]["forgetting"] == "1.5 ± 0.7"
    md = compare.to_markdown(["digits"], list(rows.values()), common)
    assert md.startswith("recipe: `benchmark.n_train=200 optim.epochs=5`")


def test_test_plan_repeats_the_chosen_val_setting_on_test_for_every_seed(sweep, tmp_path):
    plan = tmp_path / "test.txt"
    subprocess.run([sys.executable, str(REPO / "analysis" / "compare.py"), str(sweep), "--test-plan", str(plan),
                    "--seeds", "0,1,2"], capture_output=True, text=True, check=True)
    lines = plan.read_text().splitlines()
    assert [line.split(";")[0] for line in lines] == [
        "strategy=gift optim.lr=1e-3 +addon=gist seed=0,1,2  # gift+gist: val 70.0",
        "strategy=lora optim.lr=1e-2 seed=0,1,2  # lora: val 71.0"]  # linear has no val runs


def test_selection_runs_that_evaluate_only_the_last_experience_pair_with_full_test_runs(tmp_path):
    """A validation sweep may evaluate only after the last experience (evaluate=last_experience); its test plan
    drops that, so the test runs fill the accuracy matrix, and they are the chosen setting's test numbers."""
    root = tmp_path / "sweep"
    for seed in (0, 1):
        fake(root, "l2p", 100 + seed, "val", {"digits": 0.5}, ["optim.lr=1e-2", "evaluate=last_experience"])
        fake(root, "l2p", 100 + seed, "val", {"digits": 0.3}, ["optim.lr=1e-3", "evaluate=last_experience"])
        fake(root, "l2p", seed, "test", {"digits": 0.4 + 0.1 * seed}, ["optim.lr=1e-2"])
    plan = tmp_path / "test.txt"
    compare.main([str(root), "--test-plan", str(plan), "--seeds", "0,1"])
    assert plan.read_text().split("  #")[0] == "strategy=l2p optim.lr=1e-2 seed=0,1"
    _, rows = _rows(root)
    assert rows["l2p"]["hyperparameters"] == "optim.lr=1e-2"
    assert rows["l2p"]["digits"] == "45.0 ± 7.1" and rows["l2p"]["seeds"] == 2


def test_keys_that_do_not_change_results_are_one_list_of_config_keys():
    """orchestration.runfiles.RESULT_NEUTRAL_KEYS: top-level keys of configs/config.yaml, of its accelerator group
    (device, threads, num_workers), or its groups; they
    never make a hyperparameter (compare, summarize), a test run does not inherit them, and a resume may
    change them (orchestration.rundir)."""
    import yaml

    from gift_cl.orchestration.rundir import config_differences
    from gift_cl.orchestration.runfiles import RESULT_NEUTRAL_KEYS, result_neutral

    config = yaml.safe_load((REPO / "configs" / "config.yaml").read_text())
    groups = {next(iter(d)) for d in config["defaults"] if isinstance(d, dict)}
    accelerator = yaml.safe_load((REPO / "configs" / "accelerator" / "auto.yaml").read_text())
    assert set(RESULT_NEUTRAL_KEYS) <= set(config) | set(accelerator) | groups
    over = ["optim.lr=1e-3", "threads=2", "logger=wandb", "+logger.project=x", "device=cpu", "seed=1"]
    assert [o for o in over if not result_neutral(o)] == ["optim.lr=1e-3", "seed=1"]
    assert compare.hyperparameters_of({"overrides": over}) == ("optim.lr=1e-3",)
    row = {"_val_overrides": over, "method": "m", "selection": "s"}
    assert compare.test_plan([row], "0") == "optim.lr=1e-3 seed=0  # m: s\n"
    # a held-out validation split (benchmark.val_per_class) is part of the split, not of the setting: the test run
    # trains on every training image
    held = ["optim.lr=1e-3", "benchmark.val_per_class=500", "benchmark.eval_split=val", "seed=100"]
    assert compare.hyperparameters_of({"overrides": held}) == ("optim.lr=1e-3",)
    assert compare.test_plan([{"_val_overrides": held, "method": "m", "selection": "s"}], "0,1") == \
        "optim.lr=1e-3 seed=0,1  # m: s\n"
    saved = {"threads": 1, "logger": {"name": "csv"}, "device": "cpu", "optim": {"lr": 1e-3}}
    now = {"threads": 4, "logger": {"name": "wandb"}, "device": "cuda", "optim": {"lr": 1e-2}}
    assert config_differences(saved, now) == ["optim.lr: 0.001 -> 0.01"]


def _with_predictions(run: Path, task: str, correct: "np.ndarray", target: "np.ndarray") -> None:
    from gift_cl.reporting import write_predictions

    pred = np.where(correct, target, (target + 1) % 10)
    write_predictions({task: (pred, target)}, run)
    res = json.loads((run / "results.json").read_text())
    res["final_accuracy"][task] = float(correct.mean())
    (run / "results.json").write_text(json.dumps(res))


def test_paired_differences_per_image_with_holm_and_words(tmp_path):
    """Three methods on the same 2,000 images per seed: a 6-point gap is resolved, a 0.3-point one is not."""
    rng = np.random.default_rng(0)
    target = rng.integers(0, 10, 2000)
    for seed in range(5):
        base = rng.random(2000)
        for name, p in (("big", 0.66), ("mid", 0.60), ("near", 0.597)):
            run = fake(tmp_path, name, seed, "test", {"digits": 0.0})
            _with_predictions(run, "digits", base + rng.normal(0, 0.1, 2000) < p, target)  # correlated, not nested
    runs = [compare.Run(read_results(p), p) for p in find_result_dirs([str(tmp_path)])]
    tasks, rows = compare.compare(runs)
    pairs = {(r["a"], r["b"]): r for r in compare.pairwise(rows, tasks, n_boot=2000)}
    assert set(pairs) == {("big", "mid"), ("big", "near"), ("mid", "near")}
    assert pairs[("big", "mid")]["diff"] == pytest.approx(0.06, abs=0.005) and pairs[("big", "mid")]["resolved"]
    assert pairs[("big", "mid")]["n_images"] == 10_000 and pairs[("big", "mid")]["per_image"]
    assert not pairs[("mid", "near")]["resolved"]
    assert all(r["p_holm"] >= r["p"] for r in pairs.values())
    md = compare.pairwise_markdown(list(pairs.values()))
    assert "Resolved at α = 0.05 (Holm): big > mid by 5.9" in md and "Not resolved: mid vs near" in md
    only = compare.pairwise(rows, tasks, reference="near", n_boot=500)
    assert {(r["a"], r["b"]) for r in only} == {("near", "big"), ("near", "mid")}


def test_unpaired_or_mismatched_predictions_are_refused(tmp_path):
    rng = np.random.default_rng(1)
    a = fake(tmp_path, "a", 0, "test", {"digits": 0.0})
    b = fake(tmp_path, "b", 0, "test", {"digits": 0.0})
    _with_predictions(a, "digits", rng.random(100) < 0.5, rng.integers(0, 10, 100))
    _with_predictions(b, "digits", rng.random(100) < 0.5, rng.integers(0, 10, 100))  # other images
    runs = [compare.Run(read_results(p), p) for p in find_result_dirs([str(tmp_path)])]
    tasks, rows = compare.compare(runs)
    with pytest.raises(SystemExit, match="not evaluated on the same images"):
        compare.pairwise(rows, tasks, n_boot=100)
    res = json.loads((b / "results.json").read_text())
    res["final_accuracy"]["digits"] = 0.99
    (b / "results.json").write_text(json.dumps(res))
    (b / "predictions.npz").unlink()
    from gift_cl.reporting import read_predictions

    _with_predictions(b, "digits", rng.random(100) < 0.5, read_predictions(a)["digits"][1])
    res = json.loads((b / "results.json").read_text())
    res["final_accuracy"]["digits"] = 0.99  # predictions say otherwise
    (b / "results.json").write_text(json.dumps(res))
    runs = [compare.Run(read_results(p), p) for p in find_result_dirs([str(tmp_path)])]
    tasks, rows = compare.compare(runs)
    with pytest.raises(SystemExit, match="do not belong together"):
        compare.pairwise(rows, tasks, n_boot=100)


def test_every_validation_score_is_published_and_the_selection_is_checked(tmp_path):
    for seed in (10, 11):
        for lr, acc in (("1e-3", 0.5), ("3e-3", 0.6), ("1e-2", 0.55)):
            fake(tmp_path, "lora", seed, "val", {"digits": acc + 0.01 * seed}, [f"optim.lr={lr}"])
    for seed in (0, 1):
        fake(tmp_path, "lora", seed, "test", {"digits": 0.6}, ["optim.lr=3e-3"])
    out = tmp_path / "val.md"
    subprocess.run([sys.executable, str(REPO / "analysis" / "compare.py"), str(tmp_path), "--val-md", str(out),
                    "--no-pairs"], capture_output=True, text=True, check=True)
    lines = out.read_text().splitlines()
    assert lines[0] == "| method | setting | val_mean | per_seed | seeds | chosen |"
    assert len(lines) == 5 and sum(line.endswith("| yes |") for line in lines) == 1
    assert "| lora | optim.lr=3e-3 | 70.5 ± 0.7 | s10/d10:70.0 s11/d11:71.0 | 2 | yes |" in lines
    runs = [compare.Run(read_results(p), p) for p in find_result_dirs([str(tmp_path)])]
    _, (row,) = compare.compare(runs)
    assert row["selection"] == "val 70.5"  # inside the grid, 2 selection seeds, none of them a test seed


def test_compare_markdown_writes_counts_with_separators_and_csv_keeps_numbers():
    row = {"method": "gift_multitask", "digits": "26.0 ± 1.4", "mean": "26.0 ± 1.4", "params": 1204608,
           "params_excl_head": 18038, "params_%": "1.551"}
    md = compare.to_markdown(["digits"], [row], ("optim.epochs=5",))
    assert md.startswith("recipe: `optim.epochs=5`")
    assert "| 1,204,608 | 18,038 | 1.551 |" in md
    assert "1204608,18038,1.551" in compare.to_csv(["digits"], [row])


def _cil(run: Path, last: float, avg: Optional[float], final_row: list) -> None:
    """``avg=None``: a run that evaluated only its last stage (evaluate=last_experience)."""
    data = json.loads((run / "results.json").read_text())
    stages = [None, last] if avg is None else [avg * 2 - last, last]
    data.update(schema_version=2, protocol="class_incremental", class_incremental={
        "accuracy_per_stage": stages, "last_accuracy": last, "average_incremental_accuracy": avg,
        "accuracy_matrix": [[final_row[0]], final_row], "forgetting": 0.1})
    (run / "results.json").write_text(json.dumps(data))


def test_class_incremental_metrics_are_one_column_and_pair_across_methods(tmp_path):
    root = tmp_path / "cil"
    for seed in range(4):
        _cil(fake(root, "simplecil", seed, "test", {"digits": 0.9, "signs": 0.8}), 0.60 + 0.01 * seed, 0.7,
             [0.5, 0.7])
        _cil(fake(root, "gift_cil", seed, "test", {"digits": 0.95, "signs": 0.85}), 0.50 + 0.01 * seed, 0.65,
             [0.4, 0.6])
    md = compare.main([str(root), "--metric", "cil_last", "--no-pairs"])
    header = md.splitlines()[[i for i, line in enumerate(md.splitlines()) if line.startswith("| method")][0]]
    assert "A_last" in header and "digits" not in header
    assert "| simplecil | 61.5 ± 1.3 |" in md and "| gift_cil | 51.5 ± 1.3 |" in md
    assert "65.0" in compare.main([str(root), "--metric", "cil_avg", "--no-pairs"])
    per_task = compare.main([str(root), "--metric", "cil_final", "--no-pairs"])
    assert "| simplecil | 50.0 ± 0.0 | 70.0 ± 0.0 |" in per_task
    pairs = compare.main([str(root), "--metric", "cil_last", "--reference", "simplecil", "--bootstrap", "200"])
    assert "gift_cil" in pairs.split("simplecil")[-1]
    task_incremental = fake(tmp_path / "til", "lora", 0, "test", {"digits": 0.5})
    with pytest.raises(SystemExit, match="needs class-incremental runs"):
        compare.main([str(task_incremental.parent), "--metric", "cil_last"])


def test_the_average_accuracy_of_the_setting_chosen_on_the_last_accuracy(tmp_path):
    """Selection runs that scored only the last stage have A_last but no A_avg: --select-metric cil_last chooses
    on them and --metric cil_avg reports the chosen setting's test runs; without it the error says what to do."""
    root = tmp_path / "cil"
    for seed in (100, 101):  # lr 1e-2 is better on A_last
        for lr, last in (("1e-2", 0.5), ("1e-3", 0.3)):
            run = fake(root, "l2p", seed, "val", {"digits": last}, [f"optim.lr={lr}", "evaluate=last_experience"])
            _cil(run, last, None, [last])
    for seed in (0, 1):
        for lr, avg in (("1e-2", 0.40), ("1e-3", 0.90)):  # 1e-3 would win on test: it must not be reported
            score = avg + 0.02 * seed
            _cil(fake(root, "l2p", seed, "test", {"digits": 0.3}, [f"optim.lr={lr}"]), score, score, [0.3])
    with pytest.raises(SystemExit, match="--select-metric cil_last"):
        compare.main([str(root), "--metric", "cil_avg", "--no-pairs"])
    md = compare.main([str(root), "--metric", "cil_avg", "--select-metric", "cil_last", "--no-pairs"])
    header = next(line for line in md.splitlines() if line.startswith("| method"))
    assert "A_avg" in header and "A_last" not in header
    assert "| l2p | 41.0 ± 1.4 |" in md and "optim.lr=1e-2" in md and "val 50.0" in md
