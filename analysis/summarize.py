"""One table from many finished runs (a paper table from a sweep).

    python analysis/summarize.py multirun/2026-11-22_12-00-00           # every run below a folder
    python analysis/summarize.py outputs/*/procedural/* --csv table.csv

Single-task runs give one column per task; continual runs their average accuracy, forgetting, BWT,
task-id accuracy and trainable parameters per task (classifier heads included).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from omegaconf import OmegaConf


def find_runs(paths: list[str]) -> list[Path]:
    runs = []
    for p in map(Path, paths):
        runs += [r.parent for r in ([p / "results.json"] if (p / "results.json").is_file() else p.rglob("results.json"))]
    return sorted(set(runs))


def describe(run: Path) -> str:
    """Strategy plus the overrides that distinguish it (from Hydra's record of the command line)."""
    overrides = run / ".hydra" / "overrides.yaml"
    extra = [o for o in (OmegaConf.load(overrides) if overrides.is_file() else [])
             if not o.startswith(("strategy=", "hydra", "benchmark"))]
    return " ".join(extra)


def row(run: Path) -> dict:
    res = json.loads((run / "results.json").read_text())
    out = {"run": str(run), "strategy": res["strategy"], "overrides": describe(run), "finished": res.get("finished")}
    if "accuracy_matrix" in res:
        per_task = res["trainable_params"]["per_task"].values()
        out.update({
            "avg_acc": 100 * res["average_accuracy"],
            "forgetting": 100 * res["forgetting"],
            "bwt": 100 * res["bwt"],
            "task_id_acc": 100 * res.get("task_id_accuracy", float("nan")),
            "params_per_task": sum(per_task) / len(per_task),
            "params_shared": res["trainable_params"]["shared"],
            "params_total": res["trainable_params"]["total"],
        })
    else:
        out.update({name: 100 * t["accuracy"] for name, t in res["tasks"].items()})
        out["avg_acc"] = 100 * res["average_accuracy"]
        out["params_per_task"] = sum(t["params"]["trainable"] for t in res["tasks"].values()) / len(res["tasks"])
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+")
    p.add_argument("--csv", help="also write the table as CSV")
    a = p.parse_args()
    rows = [row(r) for r in find_runs(a.paths)]
    if not rows:
        raise SystemExit(f"no results.json under {a.paths}")
    cols = ["strategy", "overrides"] + [c for c in dict.fromkeys(k for r in rows for k in r)
                                        if c not in ("run", "strategy", "overrides", "finished")]
    fmt = lambda v: f"{v:.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v or "")
    widths = {c: max(len(c), *(len(fmt(r.get(c))) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(fmt(r.get(c)).ljust(widths[c]) for c in cols))
    if a.csv:
        from gift_cl.reporting import write_csv

        write_csv([{c: r.get(c, "") for c in ["run", *cols]} for r in rows], a.csv)


if __name__ == "__main__":
    main()
