"""Result files a researcher reads or looks at: CSV rows, a printed table, plots."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Optional

from .checkpoint import atomic_path, write_text


def read_json(path: str | os.PathLike) -> Optional[dict]:
    path = Path(path)
    if not path.is_file():
        return None
    with open(path) as f:
        return json.load(f)


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(buf.getvalue(), path)


def format_table(results: dict) -> str:
    """A fixed-width table of per-task accuracy and trainable parameters."""
    lines = [f"{results['strategy']} on {results['benchmark']} (seed {results['seed']})"]
    header = f"{'task':<24}{'classes':>8}{'top-1 %':>10}{'trainable':>12}{'time s':>9}"
    lines += [header, "-" * len(header)]
    for name, t in results["tasks"].items():
        lines.append(
            f"{name:<24}{t['num_classes']:>8}{100 * t['accuracy']:>10.2f}{t['params']['trainable']:>12,}{t['wall_time_s']:>9.1f}"
        )
    lines.append("-" * len(header))
    if results.get("mean_accuracy") is not None:
        lines.append(f"{'mean':<24}{'':>8}{100 * results['mean_accuracy']:>10.2f}")
    return "\n".join(lines)


def plot_task_accuracies(results: dict, path: str | os.PathLike) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["tasks"])
    accs = [100 * results["tasks"][n]["accuracy"] for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(names) + 2), 3.2))
    bars = ax.bar(names, accs, color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(f"{results['strategy']} on {results['benchmark']}")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
