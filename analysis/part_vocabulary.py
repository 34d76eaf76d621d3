"""The part-vocabulary experiment: do matched GIFT concepts align with the same object part more often between
tasks that share a part vocabulary than between tasks that do not?

    python analysis/part_vocabulary.py RUN [RUN ...] --out DIR      # one multi-task GIFT run per seed
    gift-cl part-vocabulary RUN [RUN ...] --out DIR

The runs train GIFT on the part-vocabulary domains (``gift_cl.data.procedural.parts``, ``PART_VOCABULARY``;
``analysis/sweeps/part_vocabulary.txt``): every object is a frame and markers whose shapes come from one of three
vocabularies; tasks of one vocabulary share their parts, tasks of different vocabularies share none.

Per run and GIFT layer (``refute``: :mod:`gift_cl.concepts.refute`):

1. The concepts of a task are the columns of its PaCa assignment ``C`` (generator block 0), its *used* concepts
   those that win at least ``1 / (2M)`` of the parameter tokens (``refute.used_concepts``); every task pair's used
   concepts are matched one-to-one on their centred cosine (``refute.used_matches``).
2. Each used concept gets the part its map ``Y C`` (centred over the parameter tokens, on the token grid) aligns
   with best on ``--n-images`` fresh validation images of its task: pooled AUROC against the part's tokens, the
   better sign (``refute.concept_parts``). Parts are compared by role (``PART_ROLES``: frame, marker), which every
   vocabulary has, so tasks that share no shape can still agree.
3. ``refute.part_vocabulary_test``: the mean agreement (the fraction of matched pairs with the same part) of the
   sharing pairs minus that of the other pairs, with its task-relabelling permutation p-value (exact over the
   6! relabellings; the design's smallest p is 1/60).

Writes ``part_vocabulary.csv`` (one row per run and layer), ``part_vocabulary.json`` (rows, every pair's
agreement and every concept's part) and ``part_vocabulary.md``: per layer, the sharing and other agreement and their
difference, mean [95 % t-interval] over seeds (resolved when the difference's interval excludes 0), and the
number of seeds with p < 0.05.
"""
from __future__ import annotations

import argparse
from itertools import combinations
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from gift_cl.analysis.mask_scores import write_rows
from gift_cl.analysis.reuse_tests import concept_matrices, count_below, fmt_interval, json_safe, seed_interval
from gift_cl.atomic import write_json, write_text
from gift_cl.concepts import refute
from gift_cl.data.procedural import PART_VOCABULARY, generate
from gift_cl.data.procedural.parts import PART_ROLES
from gift_cl.interpret import grid_maps, layer_outputs, load_run, resolve_source

ROLE_NAMES = ("background", "distractor", *PART_ROLES)  # mask label value -> name, the same for every domain
SUMMARY_KEYS = ("sharing", "other", "difference", "p")


def design(names: Sequence[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Every pair of the run's tasks, split into those of one vocabulary (sharing) and the others."""
    unknown = [n for n in names if n not in PART_VOCABULARY]
    if unknown:
        raise SystemExit(f"tasks {unknown} are not part-vocabulary domains ({', '.join(PART_VOCABULARY)}): train on "
                         "those (analysis/sweeps/part_vocabulary.txt)")
    pairs = list(combinations(names, 2))
    sharing = [p for p in pairs if PART_VOCABULARY[p[0]] == PART_VOCABULARY[p[1]]]
    other = [p for p in pairs if PART_VOCABULARY[p[0]] != PART_VOCABULARY[p[1]]]
    if not sharing or not other:
        raise SystemExit(f"tasks {list(names)}: the test needs pairs that share a vocabulary and pairs that do not")
    return sharing, other


def task_parts(run, name: str, layers: Sequence[str], concepts: dict[str, torch.Tensor], n_images: int
               ) -> dict[str, dict[int, str]]:
    """``{layer: {used concept: part role}}`` of task ``name`` on ``n_images`` fresh validation images."""
    bench = run.config.benchmark
    x, _, masks = generate(name, n_images, split="val", seed=int(bench.data_seed), image_size=int(bench.image_size),
                           masks=True)
    view = run.task(name)
    outputs = layer_outputs(view.gift, run.model_inputs(x), layers, view.head)
    parts = {}
    for layer in layers:
        c = concepts[layer].T  # (d_out, M)
        maps = grid_maps(outputs[layer], c - c.mean(0, keepdim=True), view.gift.model)
        used = refute.used_concepts(concepts[layer])
        parts[layer] = refute.concept_parts(maps, masks, ROLE_NAMES, concepts=used)
    return parts


def analyse_run(run_dir: Path, layers: Optional[Sequence[str]], n_images: int) -> tuple[list[dict], list[dict]]:
    run = load_run(run_dir)
    names = list(run.names)
    sharing, other = design(names)
    if not run.shared_model:
        raise SystemExit(f"{run_dir}: one model per task; the test needs a multi-task run whose tasks share GIFT")
    gift = run.task().gift
    layers = list(layers or run.layers())
    for layer in layers:
        if layer not in gift.layers() or resolve_source(gift, layer) != "assignment":
            raise SystemExit(f"{run_dir}: {layer} is not a GIFT layer with PaCa cluster assignments")
    vectors: dict[str, dict[str, torch.Tensor]] = {layer: {} for layer in layers}
    for name in names:
        view = run.task(name)
        for layer, c in concept_matrices(view.gift, view.head, layers).items():
            vectors[layer][name] = c.T.contiguous()  # (M, d_out)
    parts = {name: task_parts(run, name, layers, {layer: vectors[layer][name] for layer in layers}, n_images)
             for name in names}
    seed = int(run.config.get("seed", 0))
    rows, details = [], []
    for layer in layers:
        matches = refute.used_matches(vectors[layer])
        test = refute.part_vocabulary_test({n: parts[n][layer] for n in names}, matches, sharing, other)
        rows.append({"run": str(run_dir), "seed": seed, "layer": layer, "tasks": len(names),
                     "sharing_pairs": len(sharing), "other_pairs": len(other), "sharing": test.sharing,
                     "other": test.other, "difference": test.difference, "p": test.p_value, "min_p": test.min_p,
                     "exact": test.exact})
        details.append({"seed": seed, "layer": layer,
                        "agreement": {f"{a}|{b}": v for (a, b), v in test.agreement.items()},
                        "parts": {n: {str(c): p for c, p in parts[n][layer].items()} for n in names}})
    return rows, details


def summarize(rows: list[dict]) -> list[dict]:
    """Per layer: every statistic of :data:`SUMMARY_KEYS` over seeds (mean, 95 % t-interval), whether the
    difference is resolved (its interval excludes 0) and how many seeds had p < 0.05."""
    out = []
    for layer in dict.fromkeys(r["layer"] for r in rows):
        here = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["seed"])
        entry: dict[str, Any] = {"layer": layer, "seeds": len(here), "min_p": min(r["min_p"] for r in here)}
        for key in SUMMARY_KEYS:
            entry[key] = seed_interval([r[key] for r in here])
        lo, hi = entry["difference"]["ci_low"], entry["difference"]["ci_high"]
        entry["resolved"] = lo is not None and (lo > 0 or hi < 0)
        entry["significant"] = count_below([r["p"] for r in here])
        out.append(entry)
    return out


def markdown(summary: list[dict], n_runs: int) -> str:
    lines = [f"Part-vocabulary test over {n_runs} run(s): agreement = fraction of matched used-concept pairs that "
             "align with the same part role; mean [95 % t-interval] over seeds.", "",
             "| layer | sharing pairs | other pairs | sharing − other | resolved | seeds with p < 0.05 | design min p |",
             "|---|---|---|---|---|---|---|"]
    for e in summary:
        lines.append(f"| {e['layer']} | {fmt_interval(e['sharing'])} | {fmt_interval(e['other'])} | {fmt_interval(e['difference'])} "
                     f"| {'yes' if e['resolved'] else 'no'} | {e['significant']['significant']}/"
                     f"{e['significant']['tested']} | {e['min_p']:.4f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished multi-task GIFT runs on the part-vocabulary domains (one per seed)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--layer", action="append", help="GIFT layer (repeatable; default: every one)")
    ap.add_argument("--n-images", type=int, default=200, help="validation images per task that give concepts parts")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args(argv)
    if min(args.n_images, args.threads) < 1:
        ap.error("--n-images and --threads must be positive")
    not_runs = [r for r in args.runs if not (Path(r) / "config_resolved.yaml").is_file()]
    if not_runs:
        ap.error(f"not run directories (no config_resolved.yaml): {', '.join(not_runs)}")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, details = [], []
    for run_dir in args.runs:
        run_rows, run_details = analyse_run(Path(run_dir), args.layer, args.n_images)
        rows += run_rows
        details += run_details
        print(f"analysed {run_dir}", flush=True)
    summary = summarize(rows)
    write_rows(rows, out / "part_vocabulary.csv")
    write_json(json_safe({"runs": args.runs, "rows": rows, "details": details, "summary": summary}),
               out / "part_vocabulary.json")
    table = markdown(summary, len(args.runs))
    write_text(table, out / "part_vocabulary.md")
    print(table, end="")
    return 0


if __name__ == "__main__":
    main()
