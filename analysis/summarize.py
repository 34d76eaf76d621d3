"""One table from many finished runs (a paper table from a sweep), grouped by strategy and overrides,
mean ± std over seeds.

    python analysis/summarize.py multirun/2026-11-22_12-00-00           # every run below a folder
    python analysis/summarize.py outputs/*/procedural/* --csv table.csv
    python analysis/summarize.py multirun/... --all                     # also runs that did not finish

Reads only the results schema (``results.json``, ``schema_version`` 1; README "Results schema"): one column
per task (final accuracy), the average, forgetting and BWT (sequential), task-id accuracy, trainable
parameters per task (with and without its classifier), shared parameters, wall time (train + eval seconds). Runs that differ only in ``seed`` form one row.
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

from gift_cl.reporting import find_result_dirs, read_results



def find_runs(paths: list[str]) -> list[Path]:
    return find_result_dirs(paths)


def load(run: Path) -> dict:
    return read_results(run)


def group_key(res: dict) -> tuple[str, str]:
    """Strategy and the command-line overrides that distinguish the run, seed left out."""
    extra = [o for o in res.get("overrides", [])
             if not o.startswith(("strategy=", "hydra", "seed=", "resume=", "threads=", "progress="))]
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


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, s


def table(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for res in runs:
        groups[group_key(res)].append(res)
    rows = []
    for (strategy, overrides), members in groups.items():
        row = {"strategy": strategy, "protocol": members[0]["protocol"], "overrides": overrides,
               "seeds": ",".join(str(r["seed"]) for r in sorted(members, key=lambda r: r["seed"])),
               "finished": all(r["finished"] for r in members)}
        collected = defaultdict(list)
        for r in members:
            for k, v in metrics(r).items():
                collected[k].append(v)
        for k, vals in collected.items():
            row[k] = mean_std(vals) if len(vals) == len(members) else mean_std(vals) + ("partial",)
        rows.append(row)
    return rows


def fmt(v) -> str:
    if isinstance(v, tuple):
        m, s = v[0], v[1]
        if abs(m) >= 1000:
            return f"{m:,.0f}" if s == 0 else f"{m:,.0f} ± {s:,.0f}"
        return f"{m:.2f} ± {s:.2f}"
    return "" if v is None else str(v)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+")
    p.add_argument("--csv", help="also write the table as CSV (mean and std in separate columns)")
    p.add_argument("--all", action="store_true", help="include unfinished runs (default: finished runs only)")
    a = p.parse_args()
    found = [(r, load(r)) for r in find_runs(a.paths)]
    if not found:
        raise SystemExit(f"no results.json under {a.paths}")
    runs = select(found, a.all)
    if not runs:
        raise SystemExit(f"no finished results.json under {a.paths} (--all includes unfinished runs)")
    rows = table(runs)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    widths = {c: max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(widths[c]) for c in cols))
    if a.csv:
        from gift_cl.reporting import write_csv

        flat = []
        for r in rows:
            out = {}
            for c in cols:
                v = r.get(c)
                if isinstance(v, tuple):
                    out[c], out[f"{c}_std"] = v[0], v[1]
                else:
                    out[c] = "" if v is None else v
            flat.append(out)
        write_csv(flat, a.csv)


if __name__ == "__main__":
    main()
