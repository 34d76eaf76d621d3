"""The backbone evidence: what a pretrained backbone gives the framework, old and new side by side.

    python analysis/evidence.py probe                        # frozen [CLS] vs raw pixels vs random ViT
    python -m gift_cl.orchestration.sweep analysis/sweeps/evidence_val_formula.txt --out sweeps/evidence --jobs 2
    python analysis/compare.py sweeps/evidence --where model=vit_formula --test-plan t.txt --seeds 0,1,2,3,4
    python -m gift_cl.orchestration.sweep t.txt --out sweeps/evidence --jobs 2                   # (and for vit_procedural)
    python -m gift_cl.orchestration.sweep analysis/sweeps/evidence_fmnist.txt --out sweeps/evidence_fmnist
    python -m gift_cl.orchestration.sweep analysis/sweeps/fmnist_val_formula.txt --out sweeps/fmnist --jobs 2  # (then its test plan)
    python analysis/evidence.py concepts formula=outputs/<default run> procedural=outputs/<run, model=vit_procedural>
    python analysis/evidence.py report                       # docs/results/evidence/evidence.md

``probe``: per decathlon domain, a logistic-regression probe (``gift_cl.probe``; C chosen on validation) on
raw pixels, on each shipped backbone's frozen [CLS] and on the same ViT with random weights; 200 train /
200 val / 1,000 test images per domain, over ``--data-seeds`` (each seed draws its own images; the random
ViT also takes it as its initialisation). Writes ``probe.json`` (every score) and ``probe.md``.
``concepts``: the spread of the PaCa assignments over parameter tokens and the NMI / ARI of the tasks' hard
assignments, per layer, of finished GIFT runs (``concepts.json``).
``report``: ``evidence.md``, every table of docs/results/evidence.md (Evidence), from those files and the sweeps
(methods through ``analysis/compare.py``: selection on validation, paired bootstrap differences, Holm).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Optional, cast

import numpy as np

BACKBONES = {  # name -> the asset it loads (``model=<name>`` in run.py)
    "vit_formula": "vit_formula.safetensors",
    "vit_procedural": "vit_procedural.safetensors",
}


def _t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its t confidence interval (0 with one value)."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float(v.mean()), 0.0
    return float(v.mean()), float(stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def load_backbone(name: str):
    import timm

    from gift_cl.backbones import asset_path, create_backbone
    from gift_cl.pretrain import ARCH, ARCH_KWARGS

    if name == "random":
        kwargs: dict[str, Any] = dict(ARCH_KWARGS)  # (inferred dict[str, int]; create_model's **kwargs mix types)
        return timm.create_model(ARCH, pretrained=False, num_classes=0, **kwargs)
    return create_backbone(ARCH, num_classes=0, checkpoint=asset_path(BACKBONES[name]), kwargs=ARCH_KWARGS)


def run_probe(out: Path, data_seeds: list[int], n_train: int, n_val: int, n_test: int, domains=None,
              only: list[str] | None = None) -> dict:
    import torch

    from gift_cl.data import procedural
    from gift_cl.probe import probe_task

    domains = domains or procedural.DECATHLON
    from gift_cl.backbones import asset_path

    missing = [n for n, f in BACKBONES.items() if not Path(asset_path(f)).is_file()]
    if missing:
        print(f"skipping backbones without weights: {missing} (python -m gift_cl.pretrain makes vit_formula)")
    backbones = {name: load_backbone(name) for name in BACKBONES if name not in missing}
    scores: dict[str, dict[str, list[float]]] = {}  # feature -> domain -> [test acc per seed]
    chosen_c: dict[str, dict[str, list[float]]] = {}
    t0 = time.time()
    for seed in data_seeds:
        torch.manual_seed(seed)
        features = {"pixels": None, **backbones, "random_vit": load_backbone("random")}
        features = {k: v for k, v in features.items() if not only or k in only}
        kw: dict[str, Any] = dict(n_train=n_train, n_test=n_test, n_val=n_val, data_seed=seed)
        test_tasks = procedural.load_procedural(domains, eval_split="test", **kw)
        val_tasks = procedural.load_procedural(domains, eval_split="val", **kw)
        for task, val in zip(test_tasks, val_tasks):
            res = probe_task(features, task.train, val.test, task.test)
            for feat, r in res.items():
                scores.setdefault(feat, {}).setdefault(task.name, []).append(r["test"])
                chosen_c.setdefault(feat, {}).setdefault(task.name, []).append(r["C"])
            print(f"seed {seed} {task.name:12s} " + " ".join(f"{f}={r['test']:.3f}" for f, r in res.items()),
                  flush=True)
    summary = {}
    for feat, per_domain in scores.items():
        means = {d: _t_interval(v) for d, v in per_domain.items()}
        per_seed_mean = [float(np.mean([per_domain[d][i] for d in domains])) for i in range(len(data_seeds))]
        summary[feat] = {"per_domain": {d: {"mean": m, "ci95": h} for d, (m, h) in means.items()},
                         "mean": dict(zip(("mean", "ci95"), _t_interval(per_seed_mean))),
                         "per_seed_mean": per_seed_mean}
    doc = {"protocol": {"n_train": n_train, "n_val": n_val, "n_test": n_test, "data_seeds": data_seeds,
                        "probe": "logistic regression on standardised features, C chosen on val from "
                                 "gift_cl.probe.C_GRID", "domains": domains},
           "scores": scores, "chosen_C": chosen_c, "summary": summary, "wall_time_s": time.time() - t0}
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(doc, indent=1))
    (out / "probe.md").write_text(probe_markdown(doc))
    probe_figure(doc, out / "probe.png")
    return doc


FEATURE_LABELS = {"pixels": "raw pixels", "vit_formula": "`vit_formula` [CLS] (default)",
                  "vit_procedural": "`vit_procedural` [CLS] (previous)", "random_vit": "random-init ViT [CLS]"}


def probe_figure(doc: dict, out: Path) -> Path:
    """Grouped bars: probe accuracy per domain for every feature, with the 95 % CI over data seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = doc["protocol"]["domains"] + ["mean"]
    feats = list(doc["summary"])
    fig, ax = plt.subplots(figsize=(11, 3.8), dpi=150)
    width = 0.8 / len(feats)
    for k, feat in enumerate(feats):
        s = doc["summary"][feat]
        means = [s["per_domain"][d]["mean"] for d in domains[:-1]] + [s["mean"]["mean"]]
        errs = [s["per_domain"][d]["ci95"] for d in domains[:-1]] + [s["mean"]["ci95"]]
        xs = [i + (k - (len(feats) - 1) / 2) * width for i in range(len(domains))]
        ax.bar(xs, [100 * m for m in means], width, yerr=[100 * e for e in errs], capsize=2,
               label=FEATURE_LABELS.get(feat, feat).replace("`", ""))
    ax.set_xticks(range(len(domains)), domains, rotation=30, ha="right")
    ax.set_ylabel("linear-probe test accuracy (%)")
    p = doc["protocol"]
    ax.set_title(f"frozen features, logistic regression ({p['n_train']} train / {p['n_test']} test images per domain, "
                 f"{len(p['data_seeds'])} data seeds, 95 % CI)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def probe_markdown(doc: dict) -> str:
    domains = doc["protocol"]["domains"]
    head = "| features | " + " | ".join(domains) + " | mean (95 % CI) |"
    lines = [head, "|" + "---|" * (len(domains) + 2)]
    for feat, s in doc["summary"].items():
        cells = [f"{100 * s['per_domain'][d]['mean']:.1f}" for d in domains]
        m = s["mean"]
        lines.append(f"| {FEATURE_LABELS.get(feat, feat)} | " + " | ".join(cells)
                     + f" | **{100 * m['mean']:.1f}** ± {100 * m['ci95']:.1f} |")
    p = doc["protocol"]
    lines.append("")
    lines.append(f"Logistic-regression probe, {p['n_train']} train / {p['n_val']} val / {p['n_test']} test images per "
                 f"domain, C chosen on val, data seeds {p['data_seeds']} (mean over seeds; the CI is over the "
                 f"per-seed means of the 10 domains).")
    return "\n".join(lines) + "\n"


def concept_stats(run_dir: Path, block: int = 0) -> dict:
    """Per target layer of a finished GIFT run, at generator block ``block`` (the analysis default, the first):
    the spread of the PaCa assignments over the parameter tokens (std over tokens of every concept column of C,
    averaged over concepts and tasks), how many distinct concepts the tokens' hard assignments use, the
    off-diagonal NMI / ARI of those assignments, and the same spread at every block (where it collapses)."""
    from gift_cl.concepts import agreement_matrices, hard_assignments, off_diagonal_mean
    from gift_cl.gift import GiftGenerator
    from gift_cl.interpret import load_run

    def spread(per_task: dict) -> float:
        return float(np.mean([float(v.double().std(1).mean()) for v in per_task.values()]))  # (M, d): over tokens

    run = load_run(run_dir)
    gift = run.task(run.names[0]).gift
    # (ModuleDict values are typed Module; GiftModel fills gift.generators with GiftGenerator only)
    depth = max(cast(GiftGenerator, g).config.depth for g in gift.generators.values())
    by_block = [run.concept_vectors(block=b) for b in range(depth)] if depth else [run.concept_vectors()]
    vectors = by_block[block]
    out = {}
    for layer, per_task in vectors.items():
        used = [int(len(np.unique(hard_assignments(v)))) for v in per_task.values()]
        _, nmi, ari = agreement_matrices(per_task)
        out[layer] = {"assignment_std_over_tokens": spread(per_task), "concepts_used": used,
                      "nmi": off_diagonal_mean(nmi), "ari": off_diagonal_mean(ari),
                      "nmi_defined_pairs": int(np.isfinite(nmi[np.triu_indices(len(nmi), 1)]).sum()),
                      "assignment_std_by_block": [spread(v[layer]) for v in by_block]}
    res = run.results or {}
    return {"run": str(run_dir), "strategy": run.config.strategy.name, "model": run.config.model.checkpoint,
            "block": block, "average_accuracy": res.get("average_accuracy"), "wall_time_s": res.get("wall_time_s"),
            "layers": out}


def _compare_markdown(sweep: Path, val_md: Path, where: tuple[str, ...] = ()) -> str:
    """``analysis/compare.py``'s table of a sweep (selection on validation, paired differences; ``--where`` filters)
    and every validation score written to ``val_md``; an italic line naming ``where`` when nothing has finished."""
    import contextlib
    import io

    from gift_cl.analysis import compare
    args = [str(sweep), *(a for w in where for a in ("--where", w)), "--val-md", str(val_md)]
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            return compare.main(args)
        except SystemExit as err:  # no finished runs yet
            return f"_{', '.join(where) + ': ' if where else ''}no finished runs in {sweep} ({err})._\n"


def _compare_section(sweep: Path, backbone: str, seeds_note: str) -> str:
    """The method table of one backbone (``analysis/compare.py --where model=<backbone>``) with its paired
    differences, and the validation scores of every setting."""
    val_md = sweep / f"validation_{backbone}.md"
    md = _compare_markdown(sweep, val_md, (f"model={backbone}",))
    if md.startswith("_"):  # nothing finished: the italic line alone
        return md
    return f"#### `{backbone}`\n\n{seeds_note}\n\n{md}\nEvery validation score: `{val_md}`.\n"


def _fmnist_section(sweep: Path) -> str:
    from gift_cl.reporting import find_result_dirs, read_results
    from gift_cl.stats import t_interval

    cells: dict = {}
    for run in find_result_dirs([sweep]):
        res = read_results(run)
        if not res.get("finished") or any((t.get("info") or {}).get("eval_split") == "val" for t in res["tasks"]):
            continue  # test runs only: selection runs belong to the selected table
        over = dict(o.split("=", 1) for o in res["overrides"] if "=" in o)
        lr = over.get("optim.lr", "default")
        cells.setdefault((over.get("model", "?"), res["strategy"], lr), []).append(res["average_accuracy"])
    if not cells:
        return f"_no finished Fashion-MNIST runs in {sweep}._\n"
    lines = ["| backbone | strategy | lr | accuracy (mean ± 95 % CI) | seeds |", "|---|---|---|---|---|"]
    for (model, strategy, lr), accs in sorted(cells.items()):
        m, h = t_interval(accs)
        lines.append(f"| `{model}` | `{strategy}` | {lr} | {100 * m:.2f}" + (f" ± {100 * h:.2f}" if h else "")
                     + f" | {len(accs)} |")
    return "\n".join(lines) + "\n"


def _concepts_section(doc: dict) -> str:
    lines = ["| run | layer | std of the PaCa assignments over parameter tokens | concepts used (per task) | NMI | ARI "
             "| std at blocks 0, 1, … |", "|---|---|---|---|---|---|---|"]
    for name, d in doc.items():
        for layer, s in d["layers"].items():
            nmi = "undefined" if not np.isfinite(s["nmi"]) else f"{s['nmi']:.3f}"
            ari = "undefined" if not np.isfinite(s["ari"]) else f"{s['ari']:.3f}"
            by_block = ", ".join(f"{v:.4f}" for v in s.get("assignment_std_by_block", []))
            lines.append(f"| {name} | `{layer}` | {s['assignment_std_over_tokens']:.4f} | "
                         f"{min(s['concepts_used'])}–{max(s['concepts_used'])} | {nmi} | {ari} | {by_block} |")
    blocks = {d.get("block", 0) for d in doc.values()}
    lines.append(f"\nAt generator block {', '.join(map(str, sorted(blocks)))} (the analysis default: the first PaCa block).")
    return "\n".join(lines) + "\n"


def report(out: Path, sweep: Path, fmnist: Path, fmnist_selected: Optional[Path] = None) -> str:
    """``evidence.md``: every table of docs/results/evidence.md, from the files the other commands wrote.
    ``fmnist``: Fashion-MNIST runs at fixed learning rates; ``fmnist_selected``: the sweep whose learning rates
    were chosen on Fashion-MNIST's held-out validation images (``analysis/sweeps/fmnist_val_formula.txt``)."""
    parts = ["## Linear probes of frozen features\n"]
    probe = out / "probe.json"
    parts.append(probe_markdown(json.loads(probe.read_text())) if probe.is_file() else "_run `probe` first._\n")
    parts.append("\n## Methods on the sequential decathlon\n")
    note = ("Selection: validation split (500 images per domain), seeds 100 and 101; test: 1,000 images per "
            "domain, seeds 0–4 (data seed = seed).")
    for backbone in BACKBONES:
        parts.append(_compare_section(sweep, backbone, note))
    parts.append("\n## Fashion-MNIST (real data, one 10-class task, 1 epoch)\n")
    parts.append(_fmnist_section(fmnist))
    if fmnist_selected is not None and fmnist_selected.is_dir():
        parts.append("\n### Learning rates chosen on Fashion-MNIST's validation split\n")
        val_md = out / "validation_fmnist.md"
        parts.append(_compare_markdown(fmnist_selected, val_md) + f"\nEvery validation score: `{val_md}`.\n")
    concepts = out / "concepts.json"
    parts.append("\n## PaCa assignments of the default run\n")
    parts.append(_concepts_section(json.loads(concepts.read_text())) if concepts.is_file() else "_run `concepts`._\n")
    text = "\n".join(parts)
    (out / "evidence.md").write_text(text)
    return text


def card_figure(card_path: Path, out: Path) -> Path:
    """The pretraining curves of a model card: held-out accuracy of every head against samples seen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    card = json.loads(Path(card_path).read_text())
    curve = card["accuracy_curve"]
    if not curve:
        raise SystemExit(f"{card_path}: the model card has no accuracy curve yet")
    samples = [c["samples"] / 1e6 for c in curve]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 3.6), dpi=150)
    for key in ("category", "upstream", "hue", "scale", "position", "angle"):
        if key in curve[0]:
            ax.plot(samples, [100 * c[key] for c in curve], label=key, lw=1.6)
    ax.set(xlabel="samples seen (millions)", ylabel="held-out accuracy (%)", title="heads on held-out images")
    ax.legend(fontsize=8, ncol=2)
    ax2.plot(samples, [c["loss"] for c in curve], color="k", lw=1.6, label="training loss")
    if "layout_mae" in curve[0]:
        ax3 = ax2.twinx()
        ax3.plot(samples, [c["layout_mae"] for c in curve], color="tab:red", lw=1.2, label="layout MAE")
        ax3.set_ylabel("layout mean absolute error", color="tab:red")
    ax2.set(xlabel="samples seen (millions)", ylabel="training loss", title="loss")
    p = card["pretraining"]
    fig.suptitle(f"{card['name']}: {p['samples_seen']:,} samples, {p['wall_time_s'] / 3600:.1f} h on {p['hardware']}",
                 fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("probe", help="linear probes: pixels, backbones, random ViT")
    pr.add_argument("--out", type=Path, default=Path("docs/results/evidence"))
    pr.add_argument("--data-seeds", default="0,1,2,3,4")
    pr.add_argument("--n-train", type=int, default=200)
    pr.add_argument("--n-val", type=int, default=200)
    pr.add_argument("--n-test", type=int, default=1000)
    pr.add_argument("--domains", default=None, help="comma-separated (default: the decathlon)")
    pr.add_argument("--only", default=None, help="comma-separated features to probe (default: all)")
    pr.add_argument("--backbone", action="append", default=None,
                    help="NAME=PATH of another checkpoint to probe (e.g. a pretraining in progress)")
    co = sub.add_parser("concepts", help="PaCa assignment spread and NMI/ARI of finished GIFT runs")
    co.add_argument("runs", nargs="+", type=Path, help="NAME=RUN_DIR")
    co.add_argument("--out", type=Path, default=Path("docs/results/evidence"))
    co.add_argument("--block", type=int, default=0, help="generator block of the assignments (0: the first)")
    rp = sub.add_parser("report", help="evidence.md from what probe / the sweeps / concepts wrote")
    rp.add_argument("--out", type=Path, default=Path("docs/results/evidence"))
    rp.add_argument("--sweep", type=Path, default=Path("sweeps/evidence"))
    rp.add_argument("--fmnist", type=Path, default=Path("sweeps/evidence_fmnist"))
    rp.add_argument("--fmnist-selected", type=Path, default=Path("sweeps/fmnist"),
                    help="the Fashion-MNIST sweep with validation-chosen learning rates (skipped if absent)")
    cf = sub.add_parser("card", help="plot a model card's pretraining curves")
    cf.add_argument("card", type=Path, nargs="?", default=Path("gift_cl/assets/vit_formula.json"))
    cf.add_argument("--out", type=Path, default=Path("docs/figures/vit_formula_pretraining.png"))
    a = p.parse_args(argv)
    if a.cmd == "card":
        print(card_figure(a.card, a.out))
    if a.cmd == "report":
        print(report(a.out, a.sweep, a.fmnist, a.fmnist_selected))
    if a.cmd == "concepts":
        doc = {}
        for spec in a.runs:
            name, _, path = str(spec).partition("=")
            doc[name] = concept_stats(Path(path), a.block)
            last = list(doc[name]["layers"].values())[-1]
            print(name, json.dumps({k: last[k] for k in ("assignment_std_over_tokens", "nmi", "ari")}))
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "concepts.json").write_text(json.dumps(doc, indent=1))
    if a.cmd == "probe":
        for spec in a.backbone or []:
            name, _, path = spec.partition("=")
            BACKBONES[name] = str(Path(path).resolve())
        domains = a.domains.split(",") if a.domains else None
        run_probe(a.out, [int(s) for s in a.data_seeds.split(",")], a.n_train, a.n_val, a.n_test, domains,
                  a.only.split(",") if a.only else None)


if __name__ == "__main__":
    main()
