"""The summary of ``analysis/gpu/check.sh``: reads what its steps wrote in the work folder and writes
``summary.md`` (also printed) and ``summary.json`` to the output folder.

    python analysis/gpu/summary.py WORK OUT
    python analysis/gpu/summary.py --source-hash    # the hash of the source files gpu_check.sh reports
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# the README's CPU reference of `python run.py` (average accuracy, %); the tolerances per precision
TOLERANCE = {"fp32": 0.5, "bf16": 1.5}


SOURCE_DIRS = ("gift_cl", "strategies", "orchestration", "configs", "hydra_plugins", "analysis", "tests")


def source_hash() -> str:
    """A hash of the .py and .yaml files in the source folders (and run.py): the GPU machine's copy has no .git."""
    h = hashlib.sha256()
    files = [REPO / "run.py", *(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*") if p.suffix in (".py", ".yaml"))]
    for p in sorted(files):
        h.update(str(p.relative_to(REPO)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cpu_reference() -> float | None:
    m = re.search(r"scores ([0-9.]+) average accuracy", (REPO / "README.md").read_text())
    return float(m.group(1)) if m else None


def steps(work: Path) -> list[dict]:
    rows = []
    path = work / "steps.tsv"
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, seconds, note = (line.split("\t") + ["", "", ""])[:4]
        rows.append({"step": name, "rc": int(rc), "seconds": float(seconds), "note": note})
    return rows


def tests(work: Path) -> dict:
    path = work / "gpu_tests.xml"
    if not path.is_file():
        return {}
    cases = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = "passed"
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is not None:
                outcome = {"failure": "FAILED", "error": "ERROR", "skipped": "SKIPPED"}[kind]
                msg = (el.get("message") or "").splitlines()
                outcome += f": {msg[0][:160]}" if msg else ""
                break
        cases[case.get("name")] = {"outcome": outcome, "seconds": float(case.get("time") or 0)}
    return cases


def runs(work: Path, reference: float | None) -> dict[str, dict[str, Any] | None]:
    out: dict[str, dict[str, Any] | None] = {}
    for precision in ("fp32", "bf16"):
        res = read_json(work / f"ref_{precision}" / "results.json")
        if res is None:
            out[precision] = None
            continue
        acc = 100 * res["average_accuracy"] if res.get("average_accuracy") is not None else None
        gap = None if acc is None or reference is None else acc - reference
        out[precision] = {"finished": res.get("finished"), "average_accuracy": acc, "cpu_reference": reference,
                          "gap_points": gap, "tolerance_points": TOLERANCE[precision],
                          "within": None if gap is None else abs(gap) <= TOLERANCE[precision],
                          "wall_time_s": res.get("wall_time_s"), "forgetting": res.get("forgetting")}
    return out


def main(work: Path, out: Path) -> int:
    versions = read_json(work / "versions.json") or {}
    bench = read_json(work / "bench_gpu.json")
    step_rows, test_cases, run_rows = steps(work), tests(work), runs(work, cpu_reference())
    summary: dict[str, Any] = {"versions": versions, "steps": step_rows, "tests": test_cases, "runs": run_rows,
                               "bench": None}
    lines = ["# gpu_check summary", ""]
    lines += [f"- {k}: {v}" for k, v in versions.items()]
    lines += ["", "| step | exit | seconds | note |", "| --- | --- | --- | --- |"]
    lines += [f"| {s['step']} | {s['rc']} | {s['seconds']:.0f} | {s['note']} |" for s in step_rows]
    if test_cases:
        lines += ["", "| CUDA test | outcome | seconds |", "| --- | --- | --- |"]
        lines += [f"| {k} | {v['outcome']} | {v['seconds']:.1f} |" for k, v in test_cases.items()]
    if bench:
        ips, mem = bench.get("train_images_per_s", {}), bench.get("memory_bytes", {})
        summary["bench"] = {"train_images_per_s": ips, "memory_bytes": mem, "goals": bench.get("goals"),
                            "eval_images_per_s": bench.get("eval_images_per_s"),
                            "merged_equals_stock_timm": bench.get("merged_equals_stock_timm")}
        lines += ["", f"Throughput: {bench.get('model')} {bench.get('img_size')} px, {bench.get('precision')}, batch "
                      f"{bench.get('batch_size')} on {bench.get('gpu') or bench.get('device')}",
                  "", "| method | train img/s | peak memory MiB |", "| --- | --- | --- |"]
        lines += [f"| {k} | {v:.1f} | {mem[k] / 2**20:.0f} |" if k in mem else f"| {k} | {v:.1f} | |"
                  for k, v in ips.items()]
        gen = bench.get("generation_s") or {}
        if gen:
            lines += ["", "ΔW generation, 12 layers (ms, median): " + ", ".join(
                f"{k} {1e3 * sorted(v)[len(v) // 2]:.2f}" for k, v in gen.items() if v)]
        if bench.get("eval_images_per_s"):
            lines += ["", "Eval img/s: " + ", ".join(f"{k} {v:.0f}" for k, v in bench["eval_images_per_s"].items())]
        lines += ["", "| goal | value | target | |", "| --- | --- | --- | --- |"]
        for label, value, target, *kind in bench.get("goals") or []:
            sense = kind[0].split()[-1] if kind else "≤"
            met = "n/a" if value is None else ("met" if (value >= target if sense == "≥" else value <= target)
                                               else "MISSED")
            lines.append(f"| {label} | {'n/a' if value is None else f'{value:.3f}'} | {sense} {target} | {met} |")
    lines += ["", "| reference run | finished | avg acc % | CPU ref % | gap | within | wall s |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for precision, r in run_rows.items():
        if r is None:
            lines.append(f"| {precision} | no results.json | | | | | |")
            continue
        fmt = lambda v, f="{:.2f}": "" if v is None else f.format(v)  # noqa: E731
        lines.append(f"| {precision} | {r['finished']} | {fmt(r['average_accuracy'])} | {fmt(r['cpu_reference'])} | "
                     f"{fmt(r['gap_points'], '{:+.2f}')} (±{r['tolerance_points']}) | {r['within']} | "
                     f"{fmt(r['wall_time_s'], '{:.0f}')} |")
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    if sys.argv[1:] == ["--source-hash"]:
        print(source_hash())
    else:
        sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
