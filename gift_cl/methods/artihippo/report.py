"""ArtiHippo's run outputs: ``artihippo.json`` (the grown architecture, per task and block) and
``artihippo.png`` (tasks × blocks coloured by operation, arrows to the reused/adapted experts' source tasks).

``analysis/artihippo_figure.py <run_dir>`` redraws the figure from ``artihippo.json``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from ...atomic import atomic_path, write_json

COLOURS = {"reuse": "#4C72B0", "adapt": "#DD8452", "new": "#55A868", "skip": "#C8C8C8"}


def named_report(report: dict, task_names: Sequence[str]) -> dict:
    """The model's report with task names beside task ids (-1 is the pretrained projection)."""
    def name(t):
        if t is None:
            return None
        return "pretrained" if t == -1 else (task_names[t] if 0 <= t < len(task_names) else str(t))

    out = {**report, "tasks": []}
    for entry in report["tasks"]:
        blocks = [{**b, "source_name": name(b["source"]), "expert_owner_name": name(b["expert_owner"])}
                  for b in entry["blocks"]]
        counts = {op: sum(b["op"] == op for b in blocks) for op in ("reuse", "adapt", "new", "skip")}
        out["tasks"].append({**entry, "name": name(entry["task"]), "blocks": blocks, "op_counts": counts})
    return out


def write_report(report: dict, run_dir, task_names: Sequence[str], figure: bool = True) -> dict:
    run_dir = Path(run_dir)
    named = named_report(report, task_names)
    write_json(named, run_dir / "artihippo.json")
    if figure and named["tasks"]:
        plot_architecture(named, run_dir / "artihippo.png")
    return named


def plot_architecture(report: dict, path: str | os.PathLike, title: Optional[str] = None) -> None:
    """Rows: the pretrained projection, then the tasks in order; columns: blocks. A cell's colour is the
    task's operation at that block; an arrow runs from a reuse/adapt cell to the row of its source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    tasks = report["tasks"]
    depth = report["depth"]
    rows = ["pretrained"] + [t.get("name") or str(t["task"]) for t in tasks]
    row_of = {-1: 0, **{t["task"]: i + 1 for i, t in enumerate(tasks)}}
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 + 1.1 * depth), 1.2 + 0.55 * len(rows)))
    for l in range(depth):
        ax.add_patch(Rectangle((l - 0.4, -0.35), 0.8, 0.7, facecolor="white", edgecolor="#888888", hatch="//"))
    for i, t in enumerate(tasks):
        y = i + 1
        for b in t["blocks"]:
            l, op = b["block"], b["op"]
            ax.add_patch(Rectangle((l - 0.4, y - 0.35), 0.8, 0.7, facecolor=COLOURS[op], edgecolor="black", lw=0.5))
            label = op[0].upper()
            if op in ("reuse", "adapt"):
                label += "·P" if b["source"] == -1 else f"·{b['source']}"
            ax.text(l, y, label, ha="center", va="center", fontsize=7, color="white" if op != "skip" else "black")
            if op in ("reuse", "adapt") and b["source"] in row_of:
                src_y = row_of[b["source"]]
                ax.annotate("", xy=(l + 0.4, src_y + 0.2), xytext=(l + 0.4, y - 0.2),
                            arrowprops=dict(arrowstyle="->", color=COLOURS[op], lw=1.2,
                                            connectionstyle=f"arc3,rad={-0.35 if y - src_y > 1 else -0.2}"))
        added = t.get("added_parameters")
        if added is not None:
            ax.text(depth - 0.4 + 0.15, y, f"+{added / 1000:.1f}k", va="center", fontsize=7)
    ax.set_xlim(-0.6, depth + 0.6)
    ax.set_ylim(len(rows) - 0.5, -0.6)
    ax.set_xticks(range(depth), [f"block {l}" for l in range(depth)], fontsize=8)
    ax.set_yticks(range(len(rows)), [f"{r}" if i == 0 else f"{i - 1}: {r}" for i, r in enumerate(rows)], fontsize=8)
    ax.tick_params(length=0)
    for s in ax.spines.values():
        s.set_visible(False)
    ax.legend(handles=[Patch(color=c, label=op) for op, c in COLOURS.items()], loc="upper center",
              bbox_to_anchor=(0.5, -0.08 if len(rows) > 3 else -0.15), ncol=4, fontsize=8, frameon=False)
    ax.set_title(title or f"ArtiHippo: attn.proj experts per task (adapt: {report.get('adapt')}, "
                 f"new: {report.get('new_init')} init)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
