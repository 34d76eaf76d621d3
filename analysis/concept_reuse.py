"""Concept reuse across the tasks of a GIFT run, per layer and across depth (gift_cl.concepts).

    python analysis/concept_reuse.py outputs/gift_multitask/procedural/<time>
    python analysis/concept_reuse.py <run> --baseline outputs/linear_multitask/procedural/<time>   # + gains
    python analysis/concept_reuse.py <run> --gains gains.json --layer blocks.11.attn.proj --source projection
    python analysis/concept_reuse.py <run> --group symbols=digits,glyphs,signs --group textures=textures,flowers

Writes into ``<run>/interpret/concepts/`` (or ``--out``): ``summary.json`` (depth profile, depth-averaged
reuse), ``depth.csv/png``, ``cross_layer.csv/png``, and per layer ``<layer>/``: ``concepts.json`` (every
statistic), ``reuse.csv/png``, ``reuse_fraction.csv``, ``nmi.csv/png``, ``ari.csv``, ``dendrogram.png``,
``tsne.csv/png``, ``global_concepts.csv/png``, ``task_similarity.csv`` and ``relations.png`` (reuse vs task
similarity from the task prototypes, and vs accuracy gain when gains are given).

Reference levels: ``chance`` (each task's token axis shuffled) and ``control`` (the same run with every
task's generator head freshly initialised on the trained trunk: the reuse the shared trunk alone gives;
``--no-control`` skips it). ``--group``: reuse within vs between named groups of tasks, with a
permutation p-value (``gift_cl.concepts.group_reuse``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from gift_cl.concepts import analyze
from gift_cl.interpret import SOURCES, accuracy_gains, load_run


def gains_from(args, run) -> dict | None:
    if args.gains:
        return {k: float(v) for k, v in json.loads(Path(args.gains).read_text()).items()}
    if args.baseline:
        return accuracy_gains(json.loads((run.run_dir / "results.json").read_text()),
                              json.loads((Path(args.baseline) / "results.json").read_text()))
    return None


def parse_groups(specs) -> dict | None:
    if not specs:
        return None
    groups = {}
    for spec in specs:
        name, sep, tasks = spec.partition("=")
        if not sep or not tasks:
            raise SystemExit(f"--group expects NAME=TASK,TASK,...; got {spec!r}")
        groups[name] = [t for t in tasks.split(",") if t]
    return groups


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--out", help="output directory (default: <run>/interpret/concepts)")
    p.add_argument("--layer", action="append", help="target layer (repeatable; default: every target layer)")
    p.add_argument("--task", action="append", help="task to include (repeatable; default: every task)")
    p.add_argument("--source", choices=SOURCES, default="auto", help="concept vectors (see gift_cl.interpret)")
    p.add_argument("--block", type=int, default=0, help="generator block of the assignment/hidden state (0: the first; -1: the last)")
    p.add_argument("--gains", help="JSON {task: accuracy gain} to set reuse against")
    p.add_argument("--baseline", help="run directory of a baseline (e.g. linear probe): gain = ours − baseline")
    p.add_argument("--raw-cosine", action="store_true", help="cosine of raw vectors instead of centred ones")
    p.add_argument("--threshold", type=float, default=0.5, help="matched cosine counted as a reused concept")
    p.add_argument("--k-max", type=int, default=16, help="largest number of global concepts tried")
    p.add_argument("--group", action="append", metavar="NAME=TASK,TASK,...",
                   help="a group of tasks for reuse within vs between groups (repeatable)")
    p.add_argument("--no-control", action="store_true", help="skip the untrained-heads reference")
    p.add_argument("--no-tsne", action="store_true")
    p.add_argument("--no-figures", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()

    run = load_run(a.run_dir)
    out = Path(a.out) if a.out else run.run_dir / "interpret" / "concepts"
    vectors = run.concept_vectors(a.layer, a.source, a.block, a.task)
    control = None if a.no_control else run.concept_vectors(a.layer, a.source, a.block, a.task,
                                                             untrained_heads=True, seed=a.seed)
    report = analyze(vectors, prototypes=run.prototypes, gains=gains_from(a, run), out_dir=out,
                     center=not a.raw_cosine, threshold=a.threshold, k_range=range(2, a.k_max + 1), seed=a.seed,
                     tsne=not a.no_tsne, figures=not a.no_figures, control=control, groups=parse_groups(a.group))
    for row in report["depth"]:
        extra = f" (untrained heads {row['control']:.3f})" if "control" in row else ""
        extra += (f"  within groups {row['within_groups']:.3f} between {row['between_groups']:.3f}"
                  if "within_groups" in row else "")
        print(f"{row['layer']:<20} reuse {row['reuse']:.3f} (chance {row['chance']:.3f}){extra}  NMI {row['nmi']:.3f}  "
              f"ARI {row['ari']:.3f}  used {row['concepts_used']:.1f}  global k={row['global_k']} shared={row['shared_concepts']}")
    print(f"written to {out}")


if __name__ == "__main__":
    from gift_cl.errors import one_line_errors

    with one_line_errors():
        main()
