"""GIFT's cluster maps scored against the procedural generators' object masks, with nulls, over seeds.

    python analysis/mask_scores.py RUN [RUN ...] --out DIR      # one finished GIFT run per seed
    gift-cl mask-scores RUN [RUN ...] --out DIR

For every run, task with masks (objects, signs, flowers, digits, glyphs, pedestrians, aircraft) and GIFT layer:
the cluster (and sign) whose map ``Y C`` best separates object from background tokens is chosen on validation
images and scored on test images (``gift_cl.maskscore``: pooled AUROC and top-k IoU on the token grid). The
same selection runs on the references: the task's generator head freshly initialised (``--draws`` draws; the
trained trunk and the trained tokens ``Y`` stay) or, for ``W φᵀ`` maps (GIFT-linear: no head enters them), the
shared trunk's φ freshly initialised instead, random concept matrices of the same shape (``--draws``),
k-means of the frozen model's patch tokens at the layer's block (k = the number of clusters, ``--kmeans-seeds``)
and the frozen model's last-block [CLS] attention. Validation and test images are fresh draws of the generators
(``split=val`` / ``split=test`` at the run's data seed), never training images.

Writes ``mask_scores.csv`` (one row per run, task, layer, metric and source), ``mask_scores.json`` and
``mask_scores.md``: per layer and metric, the trained heads' test score (mean over tasks per seed, then mean and
95 % t-interval over seeds), each reference the same way, and the paired difference trained − untrained null
median (head, or trunk for ``W φᵀ`` maps) per seed with its interval (resolved when the interval excludes 0).
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from gift_cl import maskscore
from gift_cl.atomic import write_json, write_text
from gift_cl.data.procedural import MASK_LABELS, generate, object_mask
from gift_cl.interpret import (
    cls_attention,
    concept_matrix,
    frozen_patch_tokens,
    layer_outputs,
    load_run,
    null_part,
    patch_grid,
    untrained_concepts,
)
from gift_cl.stats import t_interval

METRICS = ("auroc", "iou")
SOURCES = ("trained", "untrained_head", "untrained_trunk", "random_concepts", "kmeans_frozen", "cls_attention")
NULLS = ("untrained_head", "untrained_trunk")  # a layer's untrained null: one of the two (null_part)


@dataclass
class Images:
    """Generated images as the run's model sees them, and their object tokens on the patch grid."""

    images: torch.Tensor  # (B, 3, H, W), normalised
    tokens: np.ndarray  # (B, gh, gw) bool


def task_images(run, domain: str, split: str, n: int, grid: Sequence[int]) -> Images:
    """``n`` fresh ``split`` images of ``domain`` at the run's image size and data seed, normalised as in training."""
    bench = run.config.benchmark
    size = int(bench.image_size)
    x, _, masks = generate(domain, n, split=split, seed=int(bench.data_seed), image_size=size, masks=True)
    return Images(run.model_inputs(x), maskscore.object_tokens(object_mask(masks), grid))


def centred(draw: Callable[[int], torch.Tensor]) -> Callable[[int], torch.Tensor]:
    """``draw`` with each concept centred over the parameter tokens (as ``cluster_maps(center=True)``)."""
    return lambda seed: _centre(draw(seed))


def _centre(c: torch.Tensor) -> torch.Tensor:
    return c - c.mean(0, keepdim=True)


def score_task(view, layer: str, val: Images, test: Images, draws: int, kmeans_seeds: int,
               center: bool = False) -> list[dict]:
    """One task at one layer: the trained selection and every reference, for each metric (rows of the CSV).
    ``center``: concepts centred over the parameter tokens (the trained and the untrained heads' alike)."""
    gift, head = view.gift, view.head
    block = layer.split(".attn")[0]  # "blocks.3.attn.proj" -> the frozen tokens of "blocks.3"
    y_val, y_test = (patch_grid(layer_outputs(gift, imgs.images, [layer], head)[layer], gift.model)
                     for imgs in (val, test))
    c = concept_matrix(gift, layer, head)
    c = _centre(c) if center else c
    part = null_part(gift, layer)  # the head, or the trunk for W φᵀ maps (no head enters them)
    untrained = untrained_concepts(gift, layer, head, part=part)
    untrained = centred(untrained) if center else untrained
    frozen_val, frozen_test = (frozen_patch_tokens(gift.model, imgs.images, block) for imgs in (val, test))
    att_val, att_test = (cls_attention(gift.model, imgs.images) for imgs in (val, test))
    rows = []
    for metric in METRICS:
        picked = maskscore.select_and_score(maskscore.concept_maps(y_val, c), val.tokens,
                                            maskscore.concept_maps(y_test, c), test.tokens, metric)
        scores: dict[str, Any] = {
            "trained": [picked.test],
            f"untrained_{part}": maskscore.concept_null(untrained, y_val, val.tokens,
                                                        y_test, test.tokens, metric, draws),
            "random_concepts": maskscore.concept_null(maskscore.random_concepts(*c.shape), y_val, val.tokens,
                                                      y_test, test.tokens, metric, draws),
            "kmeans_frozen": maskscore.kmeans_reference(frozen_val, val.tokens, frozen_test, test.tokens,
                                                        c.shape[1], metric, range(kmeans_seeds)),
            "cls_attention": [maskscore.attention_reference(att_val, val.tokens, att_test, test.tokens,
                                                            metric).test],
        }
        for source, values in scores.items():
            values = np.asarray(values, dtype=float)
            rows.append({"task": view.name, "layer": layer, "metric": metric, "source": source,
                         "score": float(values.mean()), "median": float(np.median(values)),
                         "q025": float(np.quantile(values, 0.025)), "q975": float(np.quantile(values, 0.975)),
                         "draws": len(values),
                         "cluster": picked.cluster if source == "trained" else None,
                         "sign": picked.sign if source == "trained" else None})
    return rows


def score_run(run_dir: Path, layers: Optional[Sequence[str]], n_val: int, n_test: int, draws: int,
              kmeans_seeds: int, tasks: Optional[Sequence[str]] = None, center: bool = False) -> list[dict]:
    run = load_run(run_dir)
    seed = int(run.config.get("seed", 0))
    rows = []
    for name in run.names:
        if name not in MASK_LABELS or (tasks and name not in tasks):
            continue
        view = run.task(name)
        patch_embed: Any = view.gift.model.patch_embed  # a timm ViT's PatchEmbed
        grid = tuple(patch_embed.grid_size)
        val, test = (task_images(run, name, split, n, grid) for split, n in (("val", n_val), ("test", n_test)))
        for layer in layers or run.layers():
            for row in score_task(view, layer, val, test, draws, kmeans_seeds, center):
                rows.append({"run": str(run_dir), "seed": seed, **row})
    if not rows:
        raise SystemExit(f"{run_dir}: no task with masks (domains with masks: {', '.join(MASK_LABELS)})")
    return rows


# ---------------------------------------------------------------------- summary over seeds
def _interval(values: Sequence[float]) -> dict:
    mean, half = t_interval(values)
    return {"mean": mean, "ci_low": None if half is None else mean - half,
            "ci_high": None if half is None else mean + half, "seeds": len(values)}


def per_seed(rows: list[dict], source: str, key: str = "score") -> list[float]:
    """``source``'s ``key`` averaged over the tasks of each seed, in seed order."""
    seeds = sorted({r["seed"] for r in rows})
    return [float(np.mean([r[key] for r in rows if r["seed"] == s and r["source"] == source])) for s in seeds]


def summarize(rows: list[dict]) -> list[dict]:
    """Per layer and metric: each source's score averaged over tasks per seed, then over seeds with a 95 %
    t-interval; and the paired per-seed difference trained − untrained null median (``null``: the untrained
    head, or the trunk for ``W φᵀ`` maps)."""
    out = []
    for layer in dict.fromkeys(r["layer"] for r in rows):
        for metric in METRICS:
            here = [r for r in rows if r["layer"] == layer and r["metric"] == metric]
            entry: dict[str, Any] = {"layer": layer, "metric": metric}
            present = {r["source"] for r in here}
            nulls = [n for n in NULLS if n in present]
            if len(nulls) != 1:
                raise ValueError(f"{layer}: the runs' rows hold {nulls or 'no'} untrained null; expected one (runs "
                                 "whose generators differ at a layer cannot be summarised together)")
            entry["null"] = nulls[0]
            for source in SOURCES:
                if source in present:
                    entry[source] = _interval(per_seed(here, source))
            gap = np.subtract(per_seed(here, "trained"), per_seed(here, entry["null"], "median"))
            entry["trained_minus_untrained"] = _interval(list(gap))
            lo, hi = entry["trained_minus_untrained"]["ci_low"], entry["trained_minus_untrained"]["ci_high"]
            entry["resolved"] = lo is not None and (lo > 0 or hi < 0)
            out.append(entry)
    return out


def _fmt(iv: dict) -> str:
    if iv["ci_low"] is None or math.isnan(iv["mean"]):
        return f"{iv['mean']:.3f}"
    return f"{iv['mean']:.3f} [{iv['ci_low']:.3f}, {iv['ci_high']:.3f}]"


def markdown(summary: list[dict], n_runs: int) -> str:
    lines = [f"Mask scores over {n_runs} run(s): mean over tasks per seed, then mean [95 % t-interval] over seeds.",
             "Untrained: the generator head re-drawn, or the trunk (φ) where the maps are W φᵀ.", "",
             "| layer | metric | trained | untrained | re-drawn | random C | k-means (frozen) | [CLS] attention "
             "| trained − untrained | resolved |", "|---|---|---|---|---|---|---|---|---|---|"]
    others = ("random_concepts", "kmeans_frozen", "cls_attention")
    for e in summary:
        cells = [_fmt(e["trained"]), _fmt(e[e["null"]]), e["null"].removeprefix("untrained_")]
        cells += [_fmt(e[s]) for s in others]
        lines.append(f"| {e['layer']} | {e['metric']} | " + " | ".join(cells)
                     + f" | {_fmt(e['trained_minus_untrained'])} | {'yes' if e['resolved'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write_rows(rows: list[dict], path: Path) -> None:
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(buf.getvalue(), path)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="finished GIFT run directories (one per seed)")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--layer", action="append", help="GIFT layer (repeatable; default: every one)")
    ap.add_argument("--task", action="append", help="task (repeatable; default: every task with masks)")
    ap.add_argument("--n-val", type=int, default=100, help="validation images per task (choose the cluster)")
    ap.add_argument("--n-test", type=int, default=200, help="test images per task (score it)")
    ap.add_argument("--draws", type=int, default=maskscore.MIN_NULL_DRAWS, help="draws per null (>= 20)")
    ap.add_argument("--kmeans-seeds", type=int, default=3, help="k-means restarts scored as the reference")
    ap.add_argument("--center", action="store_true", help="concepts centred over the parameter tokens")
    args = ap.parse_args(argv)
    if args.draws < maskscore.MIN_NULL_DRAWS:
        ap.error(f"--draws must be at least {maskscore.MIN_NULL_DRAWS}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run_dir in args.runs:
        rows += score_run(Path(run_dir), args.layer, args.n_val, args.n_test, args.draws, args.kmeans_seeds,
                          args.task, args.center)
        print(f"scored {run_dir}", flush=True)
    summary = summarize(rows)
    write_rows(rows, out / "mask_scores.csv")
    write_json({"runs": args.runs, "summary": summary}, out / "mask_scores.json")
    table = markdown(summary, len(args.runs))
    write_text(table, out / "mask_scores.md")
    print(table, end="")
    return 0


if __name__ == "__main__":
    main()
