"""Cluster maps of a finished GIFT run (every generator), and a quick concept-reuse summary.

    python analysis/cluster_maps.py outputs/gift_multitask/procedural/<time>
    python analysis/cluster_maps.py <run> --task textures --layer blocks.3.attn.proj --norm minmax --pre-delta
    python analysis/cluster_maps.py <run> --source projection     # W φᵀ, one map per rank (official visualiser)
    python analysis/cluster_maps.py <run> --center                # concepts centred over the parameter tokens

Writes into ``<run>/interpret/`` (or ``--out``):
- ``maps_<task>_<layer>[_pre_delta].png``: test images (rows) with the clusters whose raw maps vary most
  across the image (columns) overlaid. Each task's maps use that task's own residuals and concepts;
- for runs with several tasks, per layer ``concept_reuse_<layer>.png`` (task × task reuse: mean cosine of
  Hungarian-matched concepts) and ``concept_reuse.json`` with every layer under ``layers`` and the
  matrix averaged over those layers under ``reuse``
  (a later call with other layers adds them). The full analysis is ``analysis/concept_reuse.py``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from gift_cl.atomic import write_json
from gift_cl.concepts import off_diagonal_mean, plot_matrix, reuse_matrix, save_figure
from gift_cl.interpret import SOURCES, cluster_map_figure, load_run, resolve_source


def read_json(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--out", help="output directory (default: <run>/interpret)")
    p.add_argument("--task", action="append", help="task to draw maps for (repeatable; default: every task)")
    p.add_argument("--layer", action="append", help="target layer (repeatable; default: the last one)")
    p.add_argument("--source", choices=SOURCES, default="auto",
                   help="concept matrix: PaCa assignment, W φᵀ projection, or generator hidden states")
    p.add_argument("--block", type=int, default=0, help="generator block whose assignment/hidden state is used (0: the first; -1: the last)")
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--clusters", type=int, default=8, help="cluster maps shown per image")
    p.add_argument("--norm", choices=["meanstd", "minmax"], default="meanstd")
    p.add_argument("--pre-delta", action="store_true", help="the frozen layer's output on the adapted input")
    p.add_argument("--center", action="store_true",
                   help="centre each concept over the parameter tokens (maps of what distinguishes the clusters)")
    a = p.parse_args()

    run = load_run(a.run_dir)
    out = Path(a.out) if a.out else run.run_dir / "interpret"
    layers = a.layer or [run.layers()[-1]]
    mean, std = run.normalisation
    tasks = a.task or run.names
    suffix = ("_pre_delta" if a.pre_delta else "") + ("_centred" if a.center else "")
    vectors: dict[str, dict[str, torch.Tensor]] = {}
    for name in tasks:
        view = run.task(name)
        images = view.test_images(a.images)
        for layer in layers:
            raw = view.cluster_maps(images, layer, block=a.block, pre_delta=a.pre_delta, source=a.source,
                                    center=a.center)
            source = resolve_source(view.gift, layer, a.source)
            path = out / f"maps_{name}_{layer}{suffix}.png"
            save_figure(cluster_map_figure(images, raw, mean, std, a.norm, a.clusters,
                                           f"{name} · {layer} · {source} · block {a.block}"), path)
            vectors.setdefault(layer, {})[name] = view.concept_vectors(layer, a.source, a.block)
            print(f"{name}: {path}")
    if len(tasks) > 1:
        previous = read_json(out / "concept_reuse.json") or {}
        same = previous.get("tasks") == tasks and previous.get("source") == a.source
        summary = {"tasks": tasks, "source": a.source, "layers": previous.get("layers", {}) if same else {}}
        for layer, v in vectors.items():
            names, r = reuse_matrix(v)
            plot_matrix(names, r, f"concept reuse · {layer}", out / f"concept_reuse_{layer}.png", vmin=-1.0)
            summary["layers"][layer] = {"reuse": r.tolist(), "reuse_off_diagonal": off_diagonal_mean(r)}
        summary["reuse"] = np.mean([s["reuse"] for s in summary["layers"].values()], axis=0).tolist()
        write_json(summary, out / "concept_reuse.json")
        print(json.dumps({layer: s["reuse_off_diagonal"] for layer, s in summary["layers"].items()}))


if __name__ == "__main__":
    from gift_cl.errors import one_line_errors

    with one_line_errors():
        main()
