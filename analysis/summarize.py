"""One table from many finished runs (a paper table from a sweep), grouped by strategy and overrides,
mean ± std over seeds.

    python analysis/summarize.py multirun/2026-11-22_12-00-00           # every run below a folder
    python analysis/summarize.py outputs/*/procedural/* --csv table.csv
    python analysis/summarize.py multirun/... --all                     # also runs that did not finish

Reads only the results schema (``results.json``, ``schema_version`` 1 or 2; docs/guide/runs.md "Results schema"): one column
per task (final accuracy), the average, forgetting and BWT (sequential), task-id accuracy, trainable
parameters per task (with and without its classifier), shared parameters, wall time (train + eval seconds).
Runs that differ only in ``seed``, or in keys that do not change results (threads, device, logger, ...:
``gift_cl.orchestration.runfiles.RESULT_NEUTRAL_KEYS``), form one row.

The printed table is sorted by strategy, then overrides; overrides every row shares (a CPU recipe such as
``benchmark.n_train=200 optim.epochs=5``) are printed once above it instead of in every row; accuracies are
``mean ± std`` in percent (just the mean for one seed; ``(k/n)`` when only k of the n runs have the number),
parameter counts whole numbers with thousands separators. ``--csv`` keeps every row's full overrides and the
raw numbers (mean and std in separate columns).

Only finished runs are averaged (an unfinished run's numbers are those of the tasks it reached); ``--all``
includes them and says so. A ``results.json`` that is not the schema stops the tool with one line naming the
file and the field (:func:`gift_cl.reporting.read_results`).
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

from gift_cl.orchestration.runfiles import RESULTS_FILE, result_neutral
from gift_cl.reporting import find_result_dirs, read_results


def group_key(res: dict) -> tuple[str, str]:
    """Strategy and the command-line overrides that distinguish the run: seed, hydra.* and the keys that do not
    change results (gift_cl.orchestration.runfiles.RESULT_NEUTRAL_KEYS) left out."""
    extra = [o for o in res.get("overrides", [])
             if not o.startswith(("strategy=", "hydra", "seed=")) and not result_neutral(o)]
    return res["strategy"], " ".join(sorted(extra))


def select(runs: list[tuple[Path, dict]], include_unfinished: bool) -> list[dict]:
    """The runs to average: the finished ones, or (``--all``) every one. Either way stderr says what was left
    out or let in, so a table never mixes in unfinished runs silently."""
    unfinished = [str(path) for path, res in runs if not res["finished"]]
    if unfinished:
        names = ", ".join(unfinished[:3]) + (f", … ({len(unfinished) - 3} more)" if len(unfinished) > 3 else "")
        verb = "including" if include_unfinished else "skipping"
        hint = "" if include_unfinished else "; --all includes them"
        print(f"{verb} {len(unfinished)} unfinished run(s): {names}{hint}", file=sys.stderr)
    return [res for _, res in runs if include_unfinished or res["finished"]]


def metrics(res: dict) -> dict[str, float]:
    out = {name: 100 * acc for name, acc in res["final_accuracy"].items()}
    if res["average_accuracy"] is not None:  # None: an unfinished run that has not evaluated a task yet
        out["avg_acc"] = 100 * res["average_accuracy"]
    for key in ("forgetting", "bwt", "task_id_accuracy"):
        if res.get(key) is not None:
            out[key] = 100 * res[key]
    per_task = list(res["params"]["per_task"].values())
    if per_task:
        out["params_per_task"] = sum(per_task) / len(per_task)
    excl = list((res["params"].get("per_task_excl_classifier") or {}).values())
    if excl:
        out["params_per_task_excl_head"] = sum(excl) / len(excl)
    out["params_shared"] = res["params"]["shared"]
    if res.get("wall_time_s") is not None:
        out["wall_time_s"] = res["wall_time_s"]
    return out


def mean_std(values: list[float]) -> tuple[float, Optional[float]]:
    """Mean and sample standard deviation (n - 1); the deviation of a single value is undefined: None."""
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return m, s


def table(runs: list[dict]) -> list[dict]:
    """One row per (strategy, overrides), sorted by them: each metric as ``(mean, std)``, or ``(mean, std,
    "k/n")`` when only k of the row's n runs have it."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for res in runs:
        groups[group_key(res)].append(res)
    rows = []
    for (strategy, overrides), members in sorted(groups.items()):
        row = {"strategy": strategy, "protocol": members[0]["protocol"], "overrides": overrides,
               "seeds": ",".join(str(r["seed"]) for r in sorted(members, key=lambda r: r["seed"])),
               "finished": all(r["finished"] for r in members)}
        collected = defaultdict(list)
        for r in members:
            for k, v in metrics(r).items():
                collected[k].append(v)
        for k, vals in collected.items():
            row[k] = mean_std(vals) if len(vals) == len(members) else (*mean_std(vals), f"{len(vals)}/{len(members)}")
        rows.append(row)
    return rows


COUNTS = ("params_per_task", "params_per_task_excl_head", "params_shared")  # numbers of parameters


def fmt(v, column: str = "") -> str:
    """A cell: counts as whole numbers with thousands separators, other numbers with two decimals, each
    ``mean ± std`` (the mean alone for one seed), and ``(k/n)`` when only k of n runs have the number."""
    if isinstance(v, tuple):
        m, s = v[0], v[1]
        if column in COUNTS:  # the same model has the same count whatever the seed: no "± 0"
            text = f"{m:,.0f}" if not s else f"{m:,.0f} ± {s:,.0f}"
        else:
            text = f"{m:.2f}" if s is None else f"{m:.2f} ± {s:.2f}"
        return text + (f" ({v[2]})" if len(v) > 2 else "")
    return "" if v is None else str(v)


def shared_overrides(rows: list[dict]) -> list[str]:
    """The overrides every row has (the table's recipe), in command-line order of the first row."""
    if not rows:
        return []
    common = set(rows[0]["overrides"].split())
    for r in rows[1:]:
        common &= set(r["overrides"].split())
    return [o for o in rows[0]["overrides"].split() if o in common]


def format_table(rows: list[dict]) -> str:
    """The text table ``main`` prints: the shared overrides once above it, the rest in each row."""
    common = shared_overrides(rows)
    shown = [{**r, "overrides": " ".join(o for o in r["overrides"].split() if o not in common) or "-"}
             for r in rows]
    cols = list(dict.fromkeys(k for r in shown for k in r))
    widths = {c: max(len(c), *(len(fmt(r.get(c), c)) for r in shown)) for c in cols}
    lines = [f"overrides of every row: {' '.join(common)}"] if common else []
    lines.append("  ".join(c.ljust(widths[c]) for c in cols).rstrip())
    lines += ["  ".join(fmt(r.get(c), c).ljust(widths[c]) for c in cols).rstrip() for r in shown]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+")
    p.add_argument("--csv", help="also write the table as CSV (mean and std in separate columns)")
    p.add_argument("--all", action="store_true", help="include unfinished runs (default: finished runs only)")
    a = p.parse_args()
    found = [(r, read_results(r)) for r in find_result_dirs(a.paths)]
    if not found:
        raise SystemExit(f"no {RESULTS_FILE} under {a.paths}")
    runs = select(found, a.all)
    if not runs:
        raise SystemExit(f"no finished {RESULTS_FILE} under {a.paths} (--all includes unfinished runs)")
    rows = table(runs)
    print(format_table(rows))
    if a.csv:
        from gift_cl.reporting import write_csv

        cols = list(dict.fromkeys(k for r in rows for k in r))
        flat = []
        for r in rows:
            out = {}
            for c in cols:
                v = r.get(c)
                if isinstance(v, tuple):
                    out[c], out[f"{c}_std"] = v[0], "" if v[1] is None else v[1]
                    if len(v) > 2:
                        out[f"{c}_runs"] = v[2]
                else:
                    out[c] = "" if v is None else v
            flat.append(out)
        fields = list(dict.fromkeys(k for r in flat for k in r))  # rows may differ in which numbers they have
        write_csv([{k: r.get(k, "") for k in fields} for r in flat], a.csv)


if __name__ == "__main__":
    main()
