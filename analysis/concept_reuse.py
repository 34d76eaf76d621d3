"""Concept reuse across the tasks of a GIFT run, per layer and across depth (gift_cl.concepts).

    python analysis/concept_reuse.py outputs/gift_multitask/procedural/<time>
    python analysis/concept_reuse.py <run> --baseline outputs/linear_multitask/procedural/<time>   # + gains
    python analysis/concept_reuse.py <run> --gains gains.json --layer blocks.11.attn.proj --source projection

Writes into ``<run>/interpret/concepts/`` (or ``--out``): ``summary.json`` (depth profile, depth-averaged
reuse), ``depth.csv/png``, ``cross_layer.csv/png``, and per layer ``<layer>/``: ``concepts.json`` (every
statistic), ``reuse.csv/png``, ``reuse_fraction.csv``, ``nmi.csv/png``, ``ari.csv``, ``dendrogram.png``,
``tsne.csv/png``, ``global_concepts.csv/png``, ``task_similarity.csv`` and ``relations.png`` (reuse vs task
similarity from the task prototypes, and vs accuracy gain when gains are given).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from gift_cl.concepts import analyze
from gift_cl.interpret import SOURCES, load_run, task_accuracies


def gains_from(args, run) -> dict | None:
    if args.gains:
        return {k: float(v) for k, v in json.loads(Path(args.gains).read_text()).items()}
    if args.baseline:
        ours = task_accuracies(json.loads((run.run_dir / "results.json").read_text()))
        base = task_accuracies(json.loads((Path(args.baseline) / "results.json").read_text()))
        return {t: ours[t] - base[t] for t in ours if t in base}
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--out", help="output directory (default: <run>/interpret/concepts)")
    p.add_argument("--layer", action="append", help="target layer (repeatable; default: every target layer)")
    p.add_argument("--task", action="append", help="task to include (repeatable; default: every task)")
    p.add_argument("--source", choices=SOURCES, default="auto", help="concept vectors (see gift_cl.interpret)")
    p.add_argument("--block", type=int, default=-1, help="generator block of the assignment/hidden state")
    p.add_argument("--gains", help="JSON {task: accuracy gain} to set reuse against")
    p.add_argument("--baseline", help="run directory of a baseline (e.g. linear probe): gain = ours − baseline")
    p.add_argument("--raw-cosine", action="store_true", help="cosine of raw vectors instead of centred ones")
    p.add_argument("--threshold", type=float, default=0.5, help="matched cosine counted as a reused concept")
    p.add_argument("--k-max", type=int, default=16, help="largest number of global concepts tried")
    p.add_argument("--no-tsne", action="store_true")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    run = load_run(a.run_dir)
    out = Path(a.out) if a.out else run.run_dir / "interpret" / "concepts"
    vectors = run.concept_vectors(a.layer, a.source, a.block, a.task)
    report = analyze(vectors, prototypes=run.prototypes, gains=gains_from(a, run), out_dir=out,
                     center=not a.raw_cosine, threshold=a.threshold, k_range=range(2, a.k_max + 1), seed=a.seed,
                     tsne=not a.no_tsne, figures=not a.no_figures)
    for row in report["depth"]:
        print(f"{row['layer']:<28} reuse {row['reuse']:.3f} (chance {row['chance']:.3f})  NMI {row['nmi']:.3f}  "
              f"ARI {row['ari']:.3f}  used {row['concepts_used']:.1f}  global concepts k={row['global_k']} shared={row['shared_concepts']}")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
