"""Draw the architecture an ArtiHippo run grew: tasks × blocks coloured by operation (reuse / adapt / new /
skip), arrows from each reuse/adapt to its source task's row, and the parameters each task added.

    python analysis/artihippo_figure.py outputs/artihippo/procedural/<time>
    python analysis/artihippo_figure.py <run_dir> --out fig.png

Reads ``<run_dir>/artihippo.json`` (written by every ``strategy=artihippo`` run after each experience) and
writes ``<run_dir>/artihippo.png`` (the run draws it too when it finishes). Also prints the table.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gift_cl.methods.artihippo.report import plot_architecture


def table(report: dict) -> str:
    lines = []
    for t in report["tasks"]:
        ops = " ".join(b["op"] if b["source"] is None else f"{b['op']}<{'P' if b['source'] == -1 else b['source']}"
                       for b in t["blocks"])
        lines.append(f"{t['task']:>2} {t.get('name') or '':<12} +{t['added_parameters']:>7} params | {ops}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="figure path (default <run_dir>/artihippo.png)")
    args = parser.parse_args(argv)
    path = args.run_dir / "artihippo.json"
    if not path.is_file():
        sys.exit(f"error: {path} not found: is {args.run_dir} a strategy=artihippo run directory?")
    report = json.loads(path.read_text())
    out = args.out or args.run_dir / "artihippo.png"
    plot_architecture(report, out)
    print(table(report))
    print(f"figure: {out}")


if __name__ == "__main__":
    main()
