"""The backbone evidence: what a pretrained backbone gives the framework, old and new side by side.

    python analysis/evidence.py probe  --out docs/results/evidence        # frozen [CLS] vs pixels vs random ViT
    python analysis/evidence.py report --out docs/results/evidence        # the README tables from the JSON files

``probe``: per decathlon domain, a logistic-regression probe (``gift_cl.probe``; C chosen on validation) on
raw pixels, on each shipped backbone's frozen [CLS] and on the same ViT with random weights; 200 train /
200 val / 1,000 test images per domain, over ``--data-seeds`` (each seed draws its own images; the random
ViT also takes it as its initialisation). Writes ``probe.json`` (every score) and ``probe.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
        return timm.create_model(ARCH, pretrained=False, num_classes=0, **ARCH_KWARGS)
    return create_backbone(ARCH, num_classes=0, checkpoint=asset_path(BACKBONES[name]), kwargs=ARCH_KWARGS)


def run_probe(out: Path, data_seeds: list[int], n_train: int, n_val: int, n_test: int, domains=None) -> dict:
    import torch

    from gift_cl.data import procedural
    from gift_cl.probe import probe_task

    domains = domains or procedural.DECATHLON
    from gift_cl.backbones import asset_path

    missing = [n for n, f in BACKBONES.items() if not Path(asset_path(f)).is_file()]
    if missing:
        print(f"skipping backbones without weights: {missing} (python -m gift_cl.pretrain makes vit_formula)")
    backbones = {name: load_backbone(name) for name in BACKBONES if name not in missing}
    scores = {}  # feature -> domain -> [test acc per seed]
    chosen_c = {}
    t0 = time.time()
    for seed in data_seeds:
        torch.manual_seed(seed)
        features = {"pixels": None, **backbones, "random_vit": load_backbone("random")}
        kw = dict(n_train=n_train, n_test=n_test, n_val=n_val, data_seed=seed)
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
    return doc


FEATURE_LABELS = {"pixels": "raw pixels", "vit_formula": "`vit_formula` [CLS] (default)",
                  "vit_procedural": "`vit_procedural` [CLS] (previous)", "random_vit": "random-init ViT [CLS]"}


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
    pr.add_argument("--backbone", action="append", default=None,
                    help="NAME=PATH of another checkpoint to probe (e.g. a pretraining in progress)")
    a = p.parse_args(argv)
    if a.cmd == "probe":
        for spec in a.backbone or []:
            name, _, path = spec.partition("=")
            BACKBONES[name] = str(Path(path).resolve())
        domains = a.domains.split(",") if a.domains else None
        run_probe(a.out, [int(s) for s in a.data_seeds.split(",")], a.n_train, a.n_val, a.n_test, domains)


if __name__ == "__main__":
    main()
