"""Compare methods across a sweep: one row per method, hyperparameters chosen on validation runs and
numbers reported from the matching test runs, mean ± std over seeds. Markdown and CSV.

    python analysis/compare.py multirun/2026-11-23_10-00-00 [more dirs ...] [--csv table.csv] [--md table.md]
           [--select mean|per-task] [--metric final|cil_last|cil_avg|cil_final] [--select-metric M]

Reads only the results schema (``results.json``, ``schema_version`` 1 or 2) below the given folders.

What a run is
- method: ``results["strategy"]`` plus its model add-ons (``gift+gist``, ``lora+coeff``), read from the
  run's ``config_resolved.yaml`` (``strategy.method.addons``), else from the ``+addon=...`` override;
  overrides that choose a *method* rather than tune it (``METHOD_KEYS``: the generator, ``generator=linear``,
  and the backbone, ``model=...``)
  are part of the name: ``gift_multitask[generator=linear]`` is its own row;
- split: ``tasks[*].info.eval_split`` (``val`` when the run evaluated on the validation split,
  ``benchmark.eval_split=val``; ``test`` otherwise and for benchmarks without the field);
- hyperparameters: the run's remaining command-line overrides, minus the ones that never distinguish a
  configuration (seed, split size and choice, hydra.*, and the keys that do not change results,
  ``gift_cl.orchestration.runfiles.RESULT_NEUTRAL_KEYS``: threads, device, logger, resume, checkpointing, ...) and the
  ones that choose *what* is evaluated (``benchmark=``, ``benchmark.domains=``): runs of one method, split
  and setting are merged across benchmarks, so a VTAB sweep with one dataset per run makes one row;
- seed: ``results["seed"]``.

Selection rule (``--select mean``, the default)
1. For each method and hyperparameter setting, the *validation score* is the mean over seeds of the
   average accuracy over the setting's tasks (seeds that have every task), using val runs only. Test runs
   are never used for selection.
2. The chosen setting has the highest validation score; ties go to fewer trainable parameters per task,
   then to the lexicographically smallest setting (deterministic).
3. The row reports the *test* runs with exactly that setting: per task and for the mean, mean ± std
   (sample std, n-1) over their seeds, and the average forgetting where the protocol defines it. Missing test
   runs leave the numbers empty and say so.
``--select per-task`` chooses the setting per task (the VTAB-1k practice) by that task's validation
accuracy (mean over seeds), the same tie-breaks; the mean column then averages, per seed, the chosen
settings' test accuracies (seeds present for every task), and the chosen settings are listed per task.
A method without any val run is not selected on: each of its settings gets its own row, marked
``no val runs``.

Overrides shared by every run of the table (a CPU recipe such as ``benchmark.n_train=200 optim.epochs=5``) are
printed once above it (``recipe:``) instead of in every row's hyperparameters.
"""
from __future__ import annotations

import argparse
import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

from gift_cl.orchestration.runfiles import CONFIG_FILE, RESULTS_FILE, result_neutral
from gift_cl.reporting import PREDICTIONS_FILE, find_result_dirs, read_results

# the add-on group and the results field also have a former name, read in runs written with it
ADDON_OVERRIDES = ("+addon=", "addon=", "+plugin=", "plugin=")


# overrides that never distinguish a configuration (the split and its size are how val/test runs pair up; a
# selection run may evaluate only after the last experience, evaluate=last_experience, its test runs after
# every one), besides those that do not change results (gift_cl.orchestration.runfiles.RESULT_NEUTRAL_KEYS)
NOT_HYPERPARAMETERS = ("strategy=", "method=", "protocol=", "cl=", *ADDON_OVERRIDES, "seed=", "benchmark.data_seed=",
                       "benchmark=", "benchmark.domains=", "benchmark.eval_split=", "benchmark.n_val=", "benchmark.val_per_class=",
                       "benchmark.n_test=", "evaluate=", "hydra")
# overrides that choose the method (its row) rather than tune it: the generator, the backbone
METHOD_KEYS = ("generator=", "model=")


# ------------------------------------------------------------------------------------------- reading runs
def addons_of(overrides: list[str]) -> list[str]:
    names = []
    for o in overrides:
        if o.startswith(ADDON_OVERRIDES):
            value = o.split("=", 1)[1].strip()
            names += [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    return sorted(set(names))


def resolved_addons(run: Optional[Path]) -> Optional[list[str]]:
    """Add-on names from the run's ``config_resolved.yaml`` (``strategy.method.addons``), if it is there."""
    path = None if run is None else Path(run) / CONFIG_FILE
    if path is None or not path.is_file():
        return None
    import yaml

    method = ((yaml.safe_load(path.read_text()) or {}).get("strategy") or {}).get("method") or {}
    return sorted(method.get("addons") or method.get("plugins") or {})


def method_of(res: dict, run: Optional[Path] = None) -> str:
    """The strategy and its model add-ons: ``results["addons"]`` if the schema has it, else the run's
    resolved configuration, else the ``+addon=`` override."""
    addons = res.get("addons", res.get("plugins"))
    if addons is None:
        addons = resolved_addons(run)
    if addons is None:
        addons = addons_of(res.get("overrides", []))
    chosen = sorted(o for o in res.get("overrides", []) if o.startswith(METHOD_KEYS))
    return "+".join([res["strategy"], *sorted(addons)]) + (f"[{','.join(chosen)}]" if chosen else "")


def split_of(res: dict) -> str:
    splits = {(t.get("info") or {}).get("eval_split", "test") for t in res["tasks"]}
    if len(splits) != 1:
        raise SystemExit(f"a run mixes evaluation splits {sorted(splits)}")
    return splits.pop()


def hyperparameters_of(res: dict) -> tuple[str, ...]:
    return tuple(sorted(o for o in res.get("overrides", [])
                        if not o.startswith(NOT_HYPERPARAMETERS + METHOD_KEYS) and not result_neutral(o)))


def describe(hp: tuple[str, ...]) -> str:
    return " ".join(hp) if hp else "(defaults)"


# what a run's score is (--metric): each task's final accuracy (task identity given), or the class-incremental
# protocol's numbers (one column: last / average incremental accuracy; or each task's final row without task ids)
METRICS = ("final", "cil_last", "cil_avg", "cil_final")
CIL_COLUMNS = {"cil_last": ("A_last", "last_accuracy"), "cil_avg": ("A_avg", "average_incremental_accuracy")}


class Run:
    def __init__(self, res: dict, path: Optional[Path] = None, metric: str = "final"):
        self.res, self.path = res, path
        self.method, self.split, self.hp = method_of(res, path), split_of(res), hyperparameters_of(res)
        # (data seed, initialisation seed): runs of two methods pair up when both match (same images)
        self.seed = (res.get("data_seed", res["seed"]), res["seed"])
        self.tasks = [t["name"] for t in res["tasks"]]
        self.acc = {t: float(a) for t, a in res["final_accuracy"].items()}
        self.forgetting = res.get("forgetting")
        if metric != "final":
            cil = res.get("class_incremental")
            if not cil:
                raise SystemExit(f"{path}: --metric {metric} needs class-incremental runs; this one ran the "
                                 f"{res['protocol']} protocol")
            self.forgetting = cil.get("forgetting")
            if metric in CIL_COLUMNS:
                column, field = CIL_COLUMNS[metric]
                self.tasks, self.acc = [column], ({} if cil[field] is None else {column: float(cil[field])})
            else:
                final = cil["accuracy_matrix"][-1] if cil["accuracy_matrix"] else []
                self.acc = {t: float(a) for t, a in zip(self.tasks, final)}
        params = res["params"]
        self.params = dict(params.get("per_task") or {})
        self.params_excl = dict(params.get("per_task_excl_classifier") or {})
        if metric in CIL_COLUMNS:  # the one column's parameter count: the mean over the run's tasks
            for counts in (self.params, self.params_excl):
                if counts:
                    counts[self.tasks[0]] = sum(counts.values()) / len(counts)
        self.backbone = params.get("backbone")

    def scored_as(self, column: str) -> "Run":
        """The run's one score column renamed ``column``: a selection run chosen on one class-incremental
        number (A_last) joins the rows of another (A_avg)."""
        (old,) = self.tasks
        self.tasks = [column]
        for values in (self.acc, self.params, self.params_excl):
            if old in values:
                values[column] = values.pop(old)
        return self


class Cell:
    """Every run of one method, split and hyperparameter setting, merged across benchmarks: per seed, each
    task's accuracy (a VTAB sweep runs one dataset per run; a multi-task run holds several tasks)."""

    def __init__(self):
        self.acc: dict = defaultdict(dict)  # seed -> task -> accuracy
        self.forgetting: dict = {}  # seed -> average forgetting (runs whose protocol defines it)
        self.params: dict[str, float] = {}
        self.params_excl: dict[str, float] = {}
        self.backbone: Optional[int] = None
        self.overrides: Optional[list[str]] = None  # one run's command line (to plan the matching test runs)
        self.paths: dict = defaultdict(dict)  # seed -> task -> the run folder that holds it (predictions.npz)

    def add(self, run: Run) -> None:
        if self.overrides is None:
            self.overrides = list(run.res.get("overrides", []))
        for t, a in run.acc.items():
            self.paths[run.seed][t] = run.path
            self.acc[run.seed][t] = a  # a task run twice under one seed: the later path wins (runs come sorted)
        if run.forgetting is not None:
            self.forgetting[run.seed] = float(run.forgetting)
        self.params.update(run.params)
        self.params_excl.update(run.params_excl)
        self.backbone = self.backbone or run.backbone

    def task_values(self, task: str) -> list[float]:
        return [accs[task] for _, accs in sorted(self.acc.items()) if task in accs]

    def average_values(self, tasks: Optional[list[str]] = None) -> list[float]:
        """Per seed, the average over ``tasks`` (default: every task of the cell) where the seed has all."""
        tasks = tasks or sorted({t for accs in self.acc.values() for t in accs})
        return [sum(accs[t] for t in tasks) / len(tasks) for _, accs in sorted(self.acc.items())
                if all(t in accs for t in tasks)]

    def mean_params(self) -> Optional[float]:
        return sum(self.params.values()) / len(self.params) if self.params else None


# ------------------------------------------------------------------------------------------- statistics
def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def fmt(m: Optional[float], s: Optional[float], scale: float = 100.0) -> str:
    if m is None:
        return ""
    return f"{scale * m:.1f}" if s is None else f"{scale * m:.1f} ± {scale * s:.1f}"


# ------------------------------------------------------------------------------------------- selection
def _choose(scores: dict[tuple, float], cells: dict[tuple, Cell]) -> tuple:
    def fewer_params(hp):
        n = cells[hp].mean_params()
        return math.inf if n is None else n

    return min(scores, key=lambda hp: (-scores[hp], fewer_params(hp), describe(hp)))


def compare(runs: list[Run], select: str = "mean") -> tuple[list[str], list[dict]]:
    """The table: task names (columns) and one row per method (dicts of column -> value)."""
    if select not in ("mean", "per-task"):
        raise ValueError(f"select must be 'mean' or 'per-task', got {select!r}")
    tasks: list[str] = []
    for r in runs:
        tasks += [t for t in r.tasks if t not in tasks]
    cells: dict[str, dict[str, dict[tuple, Cell]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(Cell)))
    for r in sorted(runs, key=lambda r: str(r.path)):
        cells[r.method][r.split][r.hp].add(r)
    rows = []
    for method in sorted(cells):
        val, test = cells[method].get("val", {}), cells[method].get("test", {})
        if not val:
            for hp in sorted(test, key=describe):
                rows.append(_row(method, tasks, {t: hp for t in tasks}, test, "no val runs"))
            continue
        if select == "mean":
            means = {hp: mean_std(c.average_values())[0] for hp, c in val.items()}
            scores = {hp: v for hp, v in means.items() if v is not None}
            if not scores:
                raise SystemExit(f"{method}: no validation run has this metric (runs that evaluated only the last "
                                 f"stage have no average incremental accuracy): choose with --select-metric cil_last")
            best = _choose(scores, val)
            notes = [f"val {100 * scores[best]:.1f}", *selection_warnings(best, list(scores), val[best], test.get(best))]
            rows.append(_row(method, tasks, {t: best for t in tasks}, test, "; ".join(notes)))
            rows[-1]["_val_overrides"] = val[best].overrides
        else:
            chosen = {}
            for t in tasks:
                means = {hp: mean_std(c.task_values(t))[0] for hp, c in val.items()}
                scores = {hp: v for hp, v in means.items() if v is not None}
                if scores:
                    chosen[t] = _choose(scores, val)
            rows.append(_row(method, tasks, chosen, test, "val per task"))
    return tasks, rows


def _numeric(value: str) -> Optional[float]:
    try:
        return float(value)
    except ValueError:
        return None


def grid_edges(chosen: tuple, settings: list[tuple]) -> list[str]:
    """Hyperparameters whose chosen numeric value is the smallest or largest of the grid searched."""
    notes = []
    for item in chosen:
        key, _, value = item.partition("=")
        v = _numeric(value)
        if v is None:
            continue
        grid = {g for g in (_numeric(o.partition("=")[2]) for hp in settings for o in hp if o.partition("=")[0] == key)
                if g is not None}
        if len(grid) > 1 and v in (min(grid), max(grid)):
            notes.append(f"{key}={value} at the grid's {'lower' if v == min(grid) else 'upper'} edge")
    return notes


def selection_warnings(chosen: tuple, settings: list[tuple], val: Cell, test: Optional[Cell]) -> list[str]:
    """What a reviewer would object to in a selection: a grid edge, fewer than 2 seeds, val seeds reused in test."""
    notes = grid_edges(chosen, settings)
    val_seeds = sorted(val.acc)
    if len(val_seeds) < 2:
        notes.append(f"selected on {len(val_seeds)} seed")
    if test is not None:
        reused = sorted({s[1] for s in val_seeds} & {s[1] for s in test.acc})
        if reused:
            notes.append(f"val seed(s) {', '.join(map(str, reused))} also test seeds")
    return notes


def validation_scores(runs: list[Run], chosen: dict[str, tuple]) -> list[dict]:
    """Every validation score: method, setting, mean over seeds, per seed, and whether it was chosen."""
    cells: dict = defaultdict(lambda: defaultdict(Cell))
    for r in sorted(runs, key=lambda r: str(r.path)):
        if r.split == "val":
            cells[r.method][r.hp].add(r)
    out = []
    for method in sorted(cells):
        for hp, cell in sorted(cells[method].items(), key=lambda kv: describe(kv[0])):
            per_seed = cell.average_values()
            keys = [k for k, accs in sorted(cell.acc.items())]
            out.append({"method": method, "setting": describe(hp),
                        "val_mean": fmt(*mean_std(per_seed)),
                        "per_seed": " ".join(f"s{k[1]}/d{k[0]}:{100 * v:.1f}" for k, v in zip(keys, per_seed)),
                        "seeds": len(per_seed), "chosen": "yes" if chosen.get(method) == hp else ""})
    return out


def _row(method: str, tasks: list[str], chosen: dict[str, tuple], test: dict[tuple, Cell], how: str) -> dict:
    row: dict[str, Any] = {"method": method}
    per_seed: dict = defaultdict(dict)  # seed -> task -> accuracy, from the chosen settings' test runs
    params: dict[str, Optional[float]] = {}
    params_excl: dict[str, Optional[float]] = {}
    backbone: Optional[int] = None
    missing: list[str] = []
    for t in tasks:
        hp = chosen.get(t)
        cell = test.get(hp) if hp is not None else None
        accs = {seed: a[t] for seed, a in cell.acc.items() if t in a} if cell is not None else {}
        if hp is not None and not accs:
            missing.append(t)
        if cell is not None:  # (accs is empty otherwise)
            for seed, a in accs.items():
                per_seed[seed][t] = a
                row.setdefault("_runs", {}).setdefault(seed, {})[t] = (a, cell.paths[seed].get(t))
        row[t] = fmt(*mean_std([accs[s] for s in sorted(accs)]))
        if cell is not None and accs:
            params[t], backbone = cell.params.get(t), backbone or cell.backbone
            params_excl[t] = cell.params_excl.get(t)
    present = [t for t in tasks if any(t in d for d in per_seed.values())]
    complete = sorted(s for s, d in per_seed.items() if present and all(t in d for t in present))
    row["mean"] = fmt(*mean_std([sum(per_seed[s][t] for t in present) / len(present) for s in complete]))
    row["seeds"] = len(complete)
    forgetting = [test[hp].forgetting[s] for hp in set(chosen.values()) if hp in test for s in sorted(test[hp].forgetting)]
    row["forgetting"] = fmt(*mean_std(forgetting)) if len(set(chosen.values())) == 1 else ""
    n = [v for v in params.values() if v is not None]
    n_excl = [v for v in params_excl.values() if v is not None]
    row["params"] = round(sum(n) / len(n)) if n else ""
    row["params_excl_head"] = round(sum(n_excl) / len(n_excl)) if n_excl else ""
    row["params_%"] = f"{100 * (sum(n) / len(n)) / backbone:.3f}" if n and backbone else ""
    hps = sorted(set(chosen.values()), key=describe)
    if len(hps) == 1:
        row["hyperparameters"] = describe(hps[0])
    else:
        row["hyperparameters"] = "; ".join(f"{t}: {describe(chosen[t])}" for t in tasks if t in chosen)
    row["selection"] = how + (f"; no test runs for the chosen setting on {', '.join(missing)}" if missing else "")
    return row


# ------------------------------------------------------------------------------------------- paired differences
def _per_image(path: Optional[Path], cache: dict) -> Optional[dict]:
    from gift_cl.reporting import read_predictions

    if path is None:
        return None
    if path not in cache:
        cache[path] = read_predictions(path)
    return cache[path]


def paired_diffs(runs_a: dict, runs_b: dict, seeds: list, tasks: list[str], cache: dict) -> dict:
    """``{seed: {task: c_A − c_B per image}}`` where both runs kept predictions, else the accuracy difference."""
    import numpy as np

    out: dict[Any, dict[str, Any]] = {}
    for s in seeds:
        out[s] = {}
        for t in tasks:
            (acc_a, path_a), (acc_b, path_b) = runs_a[s][t], runs_b[s][t]
            pa, pb = _per_image(path_a, cache), _per_image(path_b, cache)
            if pa and pb and t in pa and t in pb:
                (pred_a, y_a), (pred_b, y_b) = pa[t], pb[t]
                if not np.array_equal(y_a, y_b):
                    raise SystemExit(f"{path_a} and {path_b}: task {t!r} was not evaluated on the same images "
                                     f"(seed {s}): their runs cannot be paired")
                for path, pred, y, acc in ((path_a, pred_a, y_a, acc_a), (path_b, pred_b, y_b, acc_b)):
                    if abs(float((pred == y).mean()) - acc) > 1e-6:
                        raise SystemExit(f"{path}: {PREDICTIONS_FILE} gives {float((pred == y).mean()):.4f} on {t!r}, "
                                         f"{RESULTS_FILE} {acc:.4f}: the files do not belong together")
                out[s][t] = (pred_a == y_a).astype(np.int64) - (pred_b == y_b).astype(np.int64)
            else:
                out[s][t] = acc_a - acc_b
    return out


def pairwise(rows: list[dict], tasks: list[str], reference: Optional[str] = None, n_boot: int = 10_000,
             alpha: float = 0.05) -> list[dict]:
    """Paired differences of the mean accuracy (``gift_cl.stats.paired_bootstrap``) for every pair of rows
    (or every row against ``reference``), on the seeds both have, with Holm-corrected p-values."""
    from gift_cl.stats import holm, paired_bootstrap

    usable = [r for r in rows if r.get("_runs")]
    names = [r["method"] for r in usable]
    if reference is not None and reference not in names:
        raise SystemExit(f"--reference {reference!r} is not a method of this table: {', '.join(names)}")
    pairs = [(a, b) for i, a in enumerate(usable) for b in usable[i + 1:]
             if reference is None or reference in (a["method"], b["method"])]
    cache: dict = {}
    out = []
    for a, b in pairs:
        if reference is not None and b["method"] == reference:
            a, b = b, a
        present = [t for t in tasks if any(t in d for d in a["_runs"].values())]
        seeds = sorted(s for s in set(a["_runs"]) & set(b["_runs"])
                       if all(t in a["_runs"][s] and t in b["_runs"][s] for t in present))
        if not seeds or not present:
            continue
        res = paired_bootstrap(paired_diffs(a["_runs"], b["_runs"], seeds, present, cache), n_boot=n_boot,
                               level=1 - alpha)
        out.append({"a": a["method"], "b": b["method"], **res})
    for r, p in zip(out, holm([r["p"] for r in out])):
        r["p_holm"] = p
        r["resolved"] = p < alpha and not (r["ci"][0] <= 0 <= r["ci"][1])
    return out


def pairwise_markdown(pairs: list[dict], alpha: float = 0.05) -> str:
    if not pairs:
        return ""
    level = round(100 * (1 - alpha))
    lines = [f"Paired differences of the mean accuracy (A − B, points; {level} % bootstrap CI over seeds and test "
             f"images; p-values Holm-corrected over the {len(pairs)} comparisons):", "",
             "| A | B | Δ | CI | p | p (Holm) | resolved | seeds | basis |", "|---|---|---|---|---|---|---|---|---|"]
    for r in pairs:
        lo, hi = r["ci"]
        basis = f"{r['n_images']:,} paired images" if r["per_image"] else f"seed-level (no {PREDICTIONS_FILE})"
        lines.append(f"| {r['a']} | {r['b']} | {100 * r['diff']:+.2f} | [{100 * lo:+.2f}, {100 * hi:+.2f}] | "
                     f"{r['p']:.4f} | {r['p_holm']:.4f} | {'yes' if r['resolved'] else 'no'} | {r['n_seeds']} | {basis} |")
    resolved = [r for r in pairs if r["resolved"]]
    unresolved = [r for r in pairs if not r["resolved"]]

    def said(r):
        hi, lo = (r["a"], r["b"]) if r["diff"] > 0 else (r["b"], r["a"])
        return f"{hi} > {lo} by {100 * abs(r['diff']):.2f}"

    lines += ["", f"Resolved at α = {alpha} (Holm): " + ("; ".join(said(r) for r in resolved) if resolved else "none") + ".",
              "Not resolved: " + ("; ".join(f"{r['a']} vs {r['b']} ({100 * r['diff']:+.2f}, CI "
                                            f"[{100 * r['ci'][0]:+.2f}, {100 * r['ci'][1]:+.2f}])" for r in unresolved)
                                  if unresolved else "none") + "."]
    return "\n".join(lines) + "\n"


# overrides a test run drops from its val run's command line: the split, the seed, what is evaluated (a test run
# evaluates after every experience, for the accuracy matrix and the average incremental accuracy; it trains on
# every training image, the ones benchmark.val_per_class held out included), and the
# per-run settings that do not change results (gift_cl.orchestration.runfiles.RESULT_NEUTRAL_KEYS)
NOT_IN_TEST_RUN = ("seed=", "benchmark.data_seed=", "benchmark.eval_split=", "benchmark.n_val=", "benchmark.val_per_class=",
                   "evaluate=", "hydra")


def test_plan(rows: list[dict], seeds: str) -> str:
    """Plan lines (``python -m gift_cl.orchestration.sweep``) for the test runs of every row's chosen setting: its val
    run's command line without the split, for ``seeds`` (``0,1,2``)."""
    lines = []
    for row in rows:
        over = row.get("_val_overrides")
        if over is None:
            continue
        kept = [o for o in over if not o.startswith(NOT_IN_TEST_RUN) and not result_neutral(o)]
        lines.append(" ".join([*kept, f"seed={seeds}"]) + f"  # {row['method']}: {row['selection']}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- output
def columns(tasks: list[str]) -> list[str]:
    return ["method", *tasks, "mean", "forgetting", "seeds", "params", "params_excl_head", "params_%", "hyperparameters", "selection"]


def recipe(runs: list[Run]) -> tuple[str, ...]:
    """The hyperparameter overrides every run shares (the table's recipe)."""
    common = set(runs[0].hp) if runs else set()
    for r in runs[1:]:
        common &= set(r.hp)
    return tuple(sorted(common))


def strip_recipe(runs: list[Run], common: tuple[str, ...]) -> None:
    for r in runs:
        r.hp = tuple(o for o in r.hp if o not in common)


COUNTS = ("params", "params_excl_head")  # numbers of parameters: whole numbers, thousands separated in markdown


def cell(row: dict, column: str) -> str:
    """A markdown cell: parameter counts as ``18,688``; the CSV keeps the plain number."""
    value = row.get(column, "")
    if column in COUNTS and isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def to_markdown(tasks: list[str], rows: list[dict], common: tuple[str, ...] = ()) -> str:
    cols = columns(tasks)
    lines = ([f"recipe: `{' '.join(common)}`", ""] if common else []) + ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(cell(row, c) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_csv(tasks: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(tasks))
    writer.writeheader()
    for row in rows:
        writer.writerow({c: row.get(c, "") for c in columns(tasks)})
    return buf.getvalue()


def main(argv: Optional[list[str]] = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help=f"run or sweep folders (searched for {RESULTS_FILE})")
    ap.add_argument("--csv", help="also write the table as CSV")
    ap.add_argument("--md", help="also write the markdown table to a file")
    ap.add_argument("--select", choices=("mean", "per-task"), default="mean",
                    help="choose one setting per method (mean val accuracy) or one per task")
    ap.add_argument("--all", action="store_true", help="include unfinished runs")
    ap.add_argument("--metric", choices=METRICS, default="final",
                    help="final: each task's final accuracy (task id given); class-incremental runs: cil_last (A_last), "
                         "cil_avg (average incremental accuracy), cil_final (each task's final accuracy without task ids)")
    ap.add_argument("--select-metric", choices=METRICS,
                    help="the metric the validation runs are chosen on (default: --metric); e.g. report cil_avg "
                         "of the setting chosen on cil_last, when the selection runs scored only the last stage")
    ap.add_argument("--where", action="append", default=[], metavar="OVERRIDE",
                    help="only runs whose command line has this override (e.g. model=vit_formula); repeatable")
    ap.add_argument("--test-plan", help="write the plan of test runs at every method's chosen setting "
                                        "(python -m gift_cl.orchestration.sweep PLAN --out DIR runs it)")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of --test-plan (default 0,1,2)")
    ap.add_argument("--val-md", help="write every validation score (method, setting, per seed) as markdown")
    ap.add_argument("--reference", help="paired differences against this method only (default: every pair)")
    ap.add_argument("--no-pairs", action="store_true", help="skip the paired differences")
    ap.add_argument("--bootstrap", type=int, default=10_000, help="bootstrap replicates (default 10000)")
    ap.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate (default 0.05)")
    args = ap.parse_args(argv)
    if args.select_metric and (args.select_metric in CIL_COLUMNS) != (args.metric in CIL_COLUMNS):
        ap.error("--select-metric and --metric must both be one number per run (cil_last, cil_avg) or both one per "
                 "task (final, cil_final)")
    runs = []
    for path in find_result_dirs(args.paths):
        res = read_results(path)
        if (res.get("finished") or args.all) and all(w in res.get("overrides", []) for w in args.where):
            run = Run(res, path, args.metric)
            if run.split == "val" and args.select_metric not in (None, args.metric):
                run = Run(res, path, args.select_metric)
                if args.metric in CIL_COLUMNS:
                    run.scored_as(CIL_COLUMNS[args.metric][0])
            runs.append(run)
    if not runs:
        raise SystemExit(f"no finished {RESULTS_FILE} under {args.paths}")
    common = recipe(runs)
    strip_recipe(runs, common)
    tasks, rows = compare(runs, args.select)
    md = to_markdown(tasks, rows, common)
    if not args.no_pairs:
        pairs = pairwise(rows, tasks, args.reference, args.bootstrap, args.alpha)
        md += ("\n" + pairwise_markdown(pairs, args.alpha)) if pairs else ""
    if args.val_md:
        chosen = {}
        for row in rows:
            hp = row.get("_val_overrides")
            if hp is not None:
                chosen[row["method"]] = hyperparameters_of({"overrides": hp})
        vals = validation_scores(runs, {m: tuple(o for o in hp if o not in common) for m, hp in chosen.items()})
        cols = ["method", "setting", "val_mean", "per_seed", "seeds", "chosen"]
        text = "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
                         + ["| " + " | ".join(str(v[c]) for c in cols) + " |" for v in vals])
        Path(args.val_md).write_text((f"recipe: `{' '.join(common)}`\n\n" if common else "") + text + "\n")
    if args.md:
        Path(args.md).write_text(md)
    if args.csv:
        Path(args.csv).write_text(to_csv(tasks, rows))
    if args.test_plan:
        Path(args.test_plan).write_text(test_plan(rows, args.seeds))
    print(md, end="")
    return md


if __name__ == "__main__":
    main()
