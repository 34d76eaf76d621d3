"""Writing a concept-reuse report out: ``summary.json``, per-layer ``concepts.json`` and the CSV tables
(:func:`save_report`)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .figures import plot_depth, plot_layer


# ---------------------------------------------------------------------- writing it out
def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _write_csv(rows: list[list], path: Path) -> None:
    from ..atomic import write_text

    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    write_text(buf.getvalue(), path)


def _matrix_csv(names: Sequence[str], m: np.ndarray, path: Path) -> None:
    _write_csv([["task", *names], *[[n, *(f"{v:.6g}" for v in row)] for n, row in zip(names, m)]], path)


def save_report(report: dict, out_dir: str | Path, figures: bool = True) -> None:
    """``out_dir/summary.json`` (depth profile, depth-averaged reuse), ``depth.csv``, ``cross_layer.csv``
    and per layer ``out_dir/<layer>/``: ``concepts.json`` (everything), ``reuse.csv``, ``nmi.csv``,
    ``ari.csv``, ``tsne.csv``, ``global_concepts.csv`` and the figures. Layers never overwrite each other."""
    from ..atomic import write_json

    out = Path(out_dir)
    for layer, rep in report["layers"].items():
        d = out / layer
        write_json(_jsonable(rep), d / "concepts.json")
        for key in ("reuse", "reuse_fraction", "nmi", "ari", "task_similarity", "control_reuse"):
            if rep.get(key) is not None:
                _matrix_csv(rep["tasks"], rep[key], d / f"{key}.csv")
        if rep.get("tsne"):
            t = rep["tsne"]
            _write_csv([["task", "concept", "x", "y"],
                        *[[a, b, f"{x:.6g}", f"{y:.6g}"] for a, b, (x, y) in zip(t["task"], t["concept"], t["coords"])]],
                       d / "tsne.csv")
        if rep.get("global"):
            g = rep["global"]
            _write_csv([["task", *[f"concept_{k}" for k in range(g["k"])]],
                        *[[n, *row] for n, row in zip(g["tasks"], g["counts"])]], d / "global_concepts.csv")
        if figures:
            plot_layer(rep, layer, d)
    summary = {k: v for k, v in report.items() if k != "layers"}
    write_json(_jsonable(summary), out / "summary.json")
    if report["depth"]:
        cols = list(report["depth"][0])
        _write_csv([cols, *[[r[c] for c in cols] for r in report["depth"]]], out / "depth.csv")
    cl = report["cross_layer"]
    _matrix_csv(cl["layers"], cl["reuse"], out / "cross_layer.csv")
    if figures:
        plot_depth(report, out)
