"""Concept reuse made refutable: an untrained-head null, a Mantel test against task similarity and an ablation,
per finished multi-task GIFT run (one per seed) and GIFT layer, then over seeds.

    python analysis/reuse_tests.py RUN [RUN ...] --out DIR      # one finished multi-task GIFT run per seed
    gift-cl reuse-tests RUN [RUN ...] --out DIR

The concepts of a task at a layer are the columns of its PaCa assignment ``C`` (``d_out × M``, generator block 0,
the ``assignment`` source of :mod:`gift_cl.interpret`), read as ``M`` vectors over the ``d_out`` parameter tokens.
Rules (:mod:`gift_cl.concepts.refute`):

1. **Used-concept reuse** (``refute.mean_used_reuse``). A concept is *used* by a task when it wins (argmax over the
   ``M`` concepts) at least ``1 / (2M)`` of the parameter tokens. For every task pair the used concepts of both
   are matched one-to-one by the Hungarian algorithm on their centred cosine; the pair's reuse is the mean matched
   cosine (``refute.used_reuse_matrix``), and the statistic is its mean over all task pairs.
   **Null**: the same statistic with every task's generator head freshly initialised (trained trunk and frozen
   tokens kept; draw ``s`` gives task ``i`` of ``n`` the seed ``s·n + i``, ``refute.untrained_vectors``), ``--draws``
   (≥ 20) draws. Reported: observed, null median and central 95 % range, ``p = (1 + #{null ≥ observed}) /
   (1 + draws)`` (one-sided), and the excess ``observed − mean(null)`` with its bootstrap 95 % interval
   (``refute.untrained_null``).
2. **Mantel test** (``refute.mantel_test``): Spearman correlation, over task pairs, of the task × task used-concept
   reuse matrix and the task similarity of the run's prototypes (cosine of the mean frozen [CLS] per task,
   ``concepts.stats.prototype_similarity``); one-sided (``greater``: more similar tasks reuse more); every one of the
   ``n!`` task relabellings when ``n! ≤ --permutations`` (exact: up to 8 tasks with the default), else
   ``--permutations`` random ones. ``mantel_min_p`` is the smallest p the test can give (3 tasks: 1/6, so never
   p < 0.05). Skipped with a note for runs without prototypes or with fewer than 3 tasks.
3. **Ablation** (``refute.ablation_effect``; ``--ablation-mode share``, the default: the cluster's term is removed
   from block 0's PaCa output for this layer's tokens, ``drop``: it is taken out of the softmax). The layer's most reused matched pair is the matched used-concept pair with the highest
   cosine over all task pairs (``refute.used_matches``); its first task ``a`` and cluster ``c`` are the reference.
   Every other task ablates its counterpart of ``c`` (``refute.counterparts``: the used concept matched to ``c``;
   tasks where ``c`` is not matched are left out, with a note); ``a`` and the tasks whose counterpart has cosine
   ≥ ``--share-threshold`` *share* the concept, the others do not. Accuracy before and after ablation on
   ``--n-images`` fresh validation images per task (``generate(domain, n, split="val", seed=<run data seed>)``,
   normalised as in training, as ``analysis/mask_scores.task_images`` does); reported: mean drop of the sharing
   tasks, of the others, and their difference (reuse predicts > 0). The cost is estimated from one timed task
   first; when the whole run's ablations would take longer than ``--ablation-budget`` seconds, the ablation of
   that run is skipped and a note says so (``--no-ablation`` skips it always).

Writes ``reuse_tests.csv`` (one row per run and layer), ``reuse_ablation.csv`` (one row per run, layer and ablated
task), ``reuse_tests.json`` (rows, the reuse and task-similarity matrices and null draws, the summary, the notes and
each run's wall time per stage) and
``reuse_tests.md``: per layer, the mean of each statistic over seeds with its 95 % t-interval, and the number of
seeds with p < 0.05 for the null test and for the Mantel test.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from gift_cl.analysis.mask_scores import write_rows
from gift_cl.atomic import write_json, write_text
from gift_cl.concepts import refute
from gift_cl.concepts.stats import prototype_similarity
from gift_cl.data.procedural import generate
from gift_cl.interpret import load_run, resolve_source, untrained_head
from gift_cl.stats import t_interval

BLOCK = 0  # the generator block whose assignments are the concepts (and whose clusters the ablation removes)
DEFAULT_PERMUTATIONS = 99999  # exact Mantel test up to 8 tasks (8! = 40320)
ABLATION_BUDGET_S = 60.0
ALPHA = 0.05
SUMMARY_KEYS = ("used_reuse", "null_median", "excess", "p", "mantel_r", "mantel_p", "sharing_drop", "other_drop",
                "drop_difference", "logprob_difference")


# ---------------------------------------------------------------------- concept vectors, trained and untrained
def concept_matrices(gift, head: str, layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """``{layer: C}`` (``d_out × M``) of head ``head``: what ``interpret.concept_matrix(source="assignment")``
    gives, from one generator call per shape group instead of one per layer."""
    assignments = gift.cluster_assignments(head)
    return {layer: assignments[layer][BLOCK].float() for layer in layers}


def untrained_draws(run, layers: Sequence[str]) -> dict[str, dict[str, Callable[[int], torch.Tensor]]]:
    """``{layer: {task: seed -> C}}`` with the task's head freshly initialised from ``seed``: the draws of
    ``interpret.untrained_concepts`` (the same seeds, the same matrices), cached per (task, seed) so that one
    generator call serves every layer."""
    cache: dict[tuple[str, int], dict[str, torch.Tensor]] = {}

    def draw(name: str, layer: str, seed: int) -> torch.Tensor:
        if (name, seed) not in cache:
            view = run.task(name)
            with untrained_head(view.gift, view.head, seed):
                cache[name, seed] = concept_matrices(view.gift, view.head, layers)
        return cache[name, seed][layer]

    return {layer: {name: partial(draw, name, layer) for name in run.names} for layer in layers}


# ---------------------------------------------------------------------- the statistics of one layer
def _finite(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


def null_columns(test: refute.NullTest) -> dict[str, Any]:
    return {"used_reuse": test.observed, "null_median": float(np.median(test.null)), "null_low": test.null_low,
            "null_high": test.null_high, "p": test.p_value, "min_p": test.min_p, "excess": test.excess,
            "excess_low": test.excess_low, "excess_high": test.excess_high, "draws": len(test.null)}


def mantel_columns(reuse: np.ndarray, similarity: Optional[np.ndarray], n_perm: int,
                   notes: list[str]) -> dict[str, Any]:
    empty = {"mantel_r": None, "mantel_p": None, "mantel_min_p": None, "mantel_permutations": None,
             "mantel_exact": None}
    if similarity is None:
        notes.append("Mantel test skipped: the run has no task prototypes")
        return empty
    if len(reuse) < 3:
        notes.append(f"Mantel test skipped: {len(reuse)} task(s), it needs at least 3")
        return empty
    try:
        m = refute.mantel_test(reuse, similarity, n_perm=n_perm, method="spearman", alternative="greater")
    except ValueError as err:  # a matrix constant over the task pairs: no correlation
        notes.append(f"Mantel test skipped: {err}")
        return empty
    min_p = 1 / m.n_perm if m.exact else 1 / (1 + m.n_perm)
    if min_p >= ALPHA:
        notes.append(f"Mantel test: with {len(reuse)} tasks its p cannot go below {min_p:.3f}")
    return {"mantel_r": m.r, "mantel_p": m.p, "mantel_min_p": min_p, "mantel_permutations": m.n_perm,
            "mantel_exact": m.exact}


@dataclass
class Pair:
    """The most reused matched pair of a layer: concept ``cluster`` of ``task`` matched to ``partner_cluster``
    of ``partner`` with cosine ``cosine``."""

    task: str
    cluster: int
    partner: str
    partner_cluster: int
    cosine: float


def most_reused_pair(vectors: refute.Vectors) -> Pair:
    """The matched used-concept pair with the highest cosine over every task pair (the first on ties)."""
    best: Optional[Pair] = None
    for (a, b), m in refute.used_matches(vectors).items():
        for row, col, cos in zip(m.rows.tolist(), m.cols.tolist(), m.similarity.tolist()):
            if best is None or cos > best.cosine:
                best = Pair(a, int(row), b, int(col), float(cos))
    if best is None:
        raise ValueError("no task pair has a matched used concept")
    return best


# ---------------------------------------------------------------------- the ablation
def val_batch(run, domain: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` fresh validation images of ``domain`` and their labels, at the run's image size and data seed, as
    the run's model sees them (:meth:`GiftRun.model_inputs`)."""
    bench = run.config.benchmark
    x, y = generate(domain, n, split="val", seed=int(bench.data_seed), image_size=int(bench.image_size))
    return run.model_inputs(x), torch.from_numpy(y).long()


@dataclass
class Ablation:
    """The probes of one layer: the pair, which tasks share its concept, and the tasks left out."""

    pair: Pair
    probes: dict[str, refute.AblationProbe]
    sharing: set[str]
    unmatched: list[str] = field(default_factory=list)
    cosine: dict[str, float] = field(default_factory=dict)


def ablation_design(run, vectors: refute.Vectors, batches: dict[str, tuple[torch.Tensor, torch.Tensor]],
                    threshold: float) -> Ablation:
    pair = most_reused_pair(vectors)
    found = refute.counterparts(vectors, pair.task, pair.cluster)
    clusters = {pair.task: (pair.cluster, 1.0), **found}
    probes = {}
    for name, (cluster, _) in clusters.items():
        view = run.task(name)
        images, labels = batches[name]
        probes[name] = refute.AblationProbe(view.head, cluster, images, labels, view.classifier)
    sharing = {pair.task} | {t for t, (_, cos) in found.items() if cos >= threshold}
    unmatched = [t for t in vectors if t not in clusters]
    return Ablation(pair, probes, sharing, unmatched, {t: cos for t, (_, cos) in clusters.items()})


def ablation_columns(design: Ablation, effect: Optional[refute.AblationEffect]) -> dict[str, Any]:
    p = design.pair
    out: dict[str, Any] = {"pair": f"{p.task}:{p.cluster}~{p.partner}:{p.partner_cluster}", "pair_cosine": p.cosine,
                           "sharing_tasks": len(design.sharing), "other_tasks": len(design.probes) - len(design.sharing),
                           "sharing_drop": None, "other_drop": None, "drop_difference": None,
                           "logprob_difference": None}
    if effect is not None:
        out.update(sharing_drop=effect.sharing_drop, other_drop=effect.other_drop,
                   drop_difference=_finite(effect.difference),
                   logprob_difference=_finite(effect.logprob_difference))
    return out


# ---------------------------------------------------------------------- one run
@dataclass
class RunResult:
    rows: list[dict]
    ablation_rows: list[dict]
    matrices: list[dict]
    notes: list[str]
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage


def _check_run(run, layers: Sequence[str]) -> None:
    if not run.shared_model:
        raise SystemExit(f"{run.run_dir}: one model per task (independent protocol); reuse-tests needs a multi-task "
                         "run whose tasks share one GIFT model")
    if len(run.names) < 2:
        raise SystemExit(f"{run.run_dir}: one task; reuse needs at least two")
    gift = run.task().gift
    unknown = [layer for layer in layers if layer not in gift.layers()]
    if unknown:
        raise SystemExit(f"{run.run_dir}: not GIFT layers: {unknown}; layers: {list(gift.layers())}")
    for layer in layers:
        if resolve_source(gift, layer) != "assignment":
            raise SystemExit(f"{run.run_dir}: the generator of {layer} has no PaCa cluster assignments")


def analyse_run(run_dir: Path, layers: Optional[Sequence[str]], draws: int, n_perm: int, n_images: int,
                threshold: float, budget: Optional[float], mode: str = "share") -> RunResult:
    """Every test on every layer of one run. ``budget``: seconds the ablations may take (``None``: skip them)."""
    clock = time.perf_counter()
    run = load_run(run_dir)
    layers = list(layers or run.layers())
    _check_run(run, layers)
    seed = int(run.config.get("seed", 0))
    names = run.names
    vectors: dict[str, dict[str, torch.Tensor]] = {layer: {} for layer in layers}
    for name in names:
        view = run.task(name)
        for layer, c in concept_matrices(view.gift, view.head, layers).items():
            vectors[layer][name] = c.T.contiguous()
    draws_of = untrained_draws(run, layers)
    has_prototypes = all(n in run.prototypes for n in names)
    similarity = prototype_similarity(run.prototypes, names) if has_prototypes else None
    result = RunResult([], [], [], [])
    result.seconds["load_and_vectors"] = time.perf_counter() - clock
    for layer in layers:
        notes: list[str] = []
        _, reuse = refute.used_reuse_matrix(vectors[layer])
        test = refute.untrained_null(refute.mean_used_reuse, vectors[layer],
                                     refute.untrained_vectors(draws_of[layer]), n_draws=draws)
        row = {"run": str(run_dir), "seed": seed, "layer": layer, "tasks": len(names), **null_columns(test),
               **mantel_columns(reuse, similarity, n_perm, notes)}
        result.rows.append({**row, "note": notes})
        result.matrices.append({"seed": seed, "layer": layer, "tasks": names, "reuse": reuse.tolist(),
                                "task_similarity": None if similarity is None else similarity.tolist(),
                                "null": test.null.tolist()})
    result.seconds["null_and_mantel"] = time.perf_counter() - clock - result.seconds["load_and_vectors"]
    clock = time.perf_counter()
    _ablate(run, layers, vectors, n_images, threshold, budget, mode, result)
    result.seconds["ablation"] = time.perf_counter() - clock
    for row in result.rows:
        result.notes += [f"{run_dir} {row['layer']}: {n}" for n in row["note"]]
        row["note"] = "; ".join(row.pop("note"))  # the last column
    return result


ABLATION_COLUMNS = ("pair", "pair_cosine", "sharing_tasks", "other_tasks", "sharing_drop", "other_drop",
                    "drop_difference", "logprob_difference")


def _ablate(run, layers: Sequence[str], vectors: dict[str, dict[str, torch.Tensor]], n_images: int,
            threshold: float, budget: Optional[float], mode: str, result: RunResult) -> None:
    """The ablation of every layer into ``result`` (its columns, its per-task rows, its notes), or a note that
    says why not. ``budget``: seconds it may take, estimated from one timed task first (``None``: skipped)."""
    rows = {row["layer"]: row for row in result.rows}
    for row in rows.values():
        row.update(dict.fromkeys(ABLATION_COLUMNS))
    if budget is None:
        for row in rows.values():
            row["note"].append("ablation skipped (--no-ablation)")
        return
    start = time.perf_counter()
    batches = {name: val_batch(run, name, n_images) for name in run.names}
    designs = {}
    for layer in layers:
        try:
            designs[layer] = ablation_design(run, vectors[layer], batches, threshold)
        except ValueError as err:
            rows[layer]["note"].append(f"ablation skipped: {err}")
    if not designs:
        return
    gift = run.task().gift
    first, design = next(iter(designs.items()))
    t0 = time.perf_counter()
    pilot = {design.pair.task: design.probes[design.pair.task]}
    refute.ablation_effect(gift, first, pilot, set(pilot), block=BLOCK, mode=mode)
    per_probe = time.perf_counter() - t0
    n_probes = sum(len(d.probes) for d in designs.values())
    estimate = (t0 - start) + per_probe * (n_probes + 1)
    if estimate > budget:
        for layer, design in designs.items():
            rows[layer].update(ablation_columns(design, None))
            rows[layer]["note"].append(
                f"ablation skipped: estimated {estimate:.0f} s for the run ({n_probes} ablated tasks, "
                f"{per_probe:.1f} s each) > --ablation-budget {budget:.0f} s")
        return
    for layer, design in designs.items():
        effect = refute.ablation_effect(gift, layer, design.probes, design.sharing, block=BLOCK, mode=mode)
        row = rows[layer]
        row.update(ablation_columns(design, effect))
        if design.unmatched:
            row["note"].append(f"ablation: the concept has no counterpart in {', '.join(design.unmatched)} "
                               "(left out)")
        if not math.isfinite(effect.difference):
            row["note"].append("ablation: every ablated task is on one side of --share-threshold: no difference")
        if all(r["drop"] == 0 for r in effect.per_task.values()):
            row["note"].append(f"ablation: no task's accuracy on {n_images} images changed (drops all 0)")
        for name, r in effect.per_task.items():
            result.ablation_rows.append({"run": row["run"], "seed": row["seed"], "layer": layer, "task": name,
                                         "cluster": design.probes[name].cluster, "cosine": design.cosine[name],
                                         "sharing": bool(r["sharing"]), "accuracy": r["accuracy"],
                                         "ablated": r["ablated"], "drop": r["drop"],
                                         "logprob_drop": r["logprob_drop"]})


# ---------------------------------------------------------------------- summary over seeds
def seed_interval(values: Sequence[Optional[float]]) -> dict:
    """Mean and 95 % t-interval of the finite values (``None`` entries are runs where it was not computed)."""
    v = [float(x) for x in values if x is not None and math.isfinite(float(x))]
    if not v:
        return {"mean": None, "ci_low": None, "ci_high": None, "seeds": 0}
    mean, half = t_interval(v)
    return {"mean": mean, "ci_low": None if half is None else mean - half,
            "ci_high": None if half is None else mean + half, "seeds": len(v)}


def count_below(values: Sequence[Optional[float]], alpha: float = ALPHA) -> dict:
    tested = [float(p) for p in values if p is not None and math.isfinite(float(p))]
    return {"significant": sum(p < alpha for p in tested), "tested": len(tested)}


def summarize(rows: list[dict]) -> list[dict]:
    """Per layer (in first-seen order): every statistic of :data:`SUMMARY_KEYS` averaged over seeds (one row per
    seed) with a 95 % t-interval, and how many seeds had p < 0.05 in the null test and in the Mantel test."""
    out = []
    for layer in dict.fromkeys(r["layer"] for r in rows):
        here = sorted((r for r in rows if r["layer"] == layer), key=lambda r: r["seed"])
        entry: dict[str, Any] = {"layer": layer, "seeds": len(here)}
        for key in SUMMARY_KEYS:
            entry[key] = seed_interval([r.get(key) for r in here])
        entry["null_significant"] = count_below([r["p"] for r in here])
        entry["mantel_significant"] = count_below([r.get("mantel_p") for r in here])
        out.append(entry)
    return out


def fmt_interval(iv: dict) -> str:
    if iv["mean"] is None:
        return "–"
    if iv["ci_low"] is None:
        return f"{iv['mean']:.3f}"
    return f"{iv['mean']:.3f} [{iv['ci_low']:.3f}, {iv['ci_high']:.3f}]"


def markdown(summary: list[dict], n_runs: int, notes: Sequence[str] = ()) -> str:
    lines = [f"Concept reuse tests over {n_runs} run(s): per layer, mean [95 % t-interval] over seeds; "
             "p < 0.05: seeds significant / seeds tested.", "",
             "| layer | used reuse | untrained null median | excess | p < 0.05 (null) | Mantel r (Spearman) "
             "| p < 0.05 (Mantel) | ablation drop: sharing | other | sharing − other "
             "| true-class log-prob drop: sharing − other |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        count = "{significant}/{tested}".format
        lines.append(f"| {e['layer']} | {fmt_interval(e['used_reuse'])} | {fmt_interval(e['null_median'])} | {fmt_interval(e['excess'])} "
                     f"| {count(**e['null_significant'])} | {fmt_interval(e['mantel_r'])} "
                     f"| {count(**e['mantel_significant'])} | {fmt_interval(e['sharing_drop'])} | {fmt_interval(e['other_drop'])} "
                     f"| {fmt_interval(e['drop_difference'])} | {fmt_interval(e['logprob_difference'])} |")
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"


def json_safe(obj: Any) -> Any:
    """NaN and infinities as JSON null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished multi-task GIFT run directories (one per seed)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--layer", action="append", help="GIFT layer (repeatable; default: every one)")
    ap.add_argument("--draws", type=int, default=refute.MIN_NULL_DRAWS, help="untrained-head null draws (>= 20)")
    ap.add_argument("--permutations", type=int, default=DEFAULT_PERMUTATIONS,
                    help="Mantel permutations (every one when n_tasks! is at most this)")
    ap.add_argument("--n-images", type=int, default=64, help="validation images per task for the ablation")
    ap.add_argument("--share-threshold", type=float, default=0.5,
                    help="counterpart cosine from which a task shares the ablated concept")
    ap.add_argument("--ablation-mode", choices=refute.ABLATION_MODES, default="share")
    ap.add_argument("--ablation-budget", type=float, default=ABLATION_BUDGET_S,
                    help="seconds per run the ablations may take (estimated first; skipped with a note if over)")
    ap.add_argument("--no-ablation", action="store_true", help="skip the ablation (noted in the output)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1, the default, is several times faster on a busy 2-core machine)")
    args = ap.parse_args(argv)
    if args.draws < refute.MIN_NULL_DRAWS:
        ap.error(f"--draws must be at least {refute.MIN_NULL_DRAWS}")
    if min(args.permutations, args.n_images, args.threads) < 1:
        ap.error("--permutations, --n-images and --threads must be positive")
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, ablation_rows, matrices, notes = [], [], [], []
    seconds: dict[str, dict[str, float]] = {}
    budget = None if args.no_ablation else args.ablation_budget
    for run_dir in args.runs:
        result = analyse_run(Path(run_dir), args.layer, args.draws, args.permutations, args.n_images,
                          args.share_threshold, budget, args.ablation_mode)
        rows += result.rows
        ablation_rows += result.ablation_rows
        matrices += [{"run": run_dir, **m} for m in result.matrices]
        seconds[run_dir] = result.seconds
        notes += result.notes
        took = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
        print(f"tested {run_dir} ({took})", flush=True)
    summary = summarize(rows)
    write_rows(rows, out / "reuse_tests.csv")
    if ablation_rows:
        write_rows(ablation_rows, out / "reuse_ablation.csv")
    write_json(json_safe({"runs": args.runs, "settings": {k: v for k, v in vars(args).items() if k != "runs"},
                       "rows": rows, "ablation": ablation_rows, "matrices": matrices, "summary": summary,
                       "notes": notes, "seconds": seconds}), out / "reuse_tests.json")
    table = markdown(summary, len(args.runs), notes)
    write_text(table, out / "reuse_tests.md")
    print(table, end="")
    return 0


if __name__ == "__main__":
    main()
