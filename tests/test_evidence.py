"""gift_cl.probe (linear probes of frozen features) and analysis/evidence.py (the README's evidence tables)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gift_cl.analysis import evidence
from gift_cl.probe import cls_features, fit_probe, probe_task

REPO = Path(__file__).resolve().parents[1]


def _blobs(n, d, seed, sep=3.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.random.default_rng(99).normal(0, sep, (3, d))
    return (centres[y] + rng.normal(0, 1, (n, d))).astype(np.float32), y


def test_the_probe_chooses_c_on_val_and_scores_test_per_image():
    train, val, test = _blobs(60, 5, 0), _blobs(60, 5, 1), _blobs(200, 5, 2)
    res = fit_probe(train, val, test)
    assert res["test"] > 0.9 and res["test_correct"].shape == (200,)
    assert res["test"] == pytest.approx(res["test_correct"].mean())
    noise = fit_probe((train[0], np.random.default_rng(3).integers(0, 3, 60)), val, test)
    assert noise["test"] < 0.6  # labels the features cannot predict stay near chance


def test_pixels_and_backbone_features():
    import timm

    x = torch.rand(6, 3, 32, 32)
    assert cls_features(None, x).shape == (6, 3 * 32 * 32)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=32, patch_size=8, embed_dim=64, depth=1,
                            num_heads=2)
    feats = cls_features(vit, x, batch_size=4)
    assert feats.shape == (6, 64)
    assert np.allclose(feats, vit(x).detach().numpy(), atol=1e-5)  # the pooled pre-logits feature ([CLS])

    class Images(torch.utils.data.Dataset):
        def __init__(self, seed):
            g = torch.Generator().manual_seed(seed)
            self.y = torch.randint(0, 2, (40,), generator=g)
            self.x = torch.rand(40, 3, 32, 32, generator=g) * 0.2 + self.y[:, None, None, None] * 0.8

        def __len__(self):
            return 40

        def __getitem__(self, i):
            return self.x[i], int(self.y[i])

    out = probe_task({"pixels": None, "vit": vit}, Images(0), Images(1), Images(2))
    assert set(out) == {"pixels", "vit"} and out["pixels"]["test"] == 1.0


def test_probe_summary_and_markdown(tmp_path):
    doc = {"protocol": {"n_train": 2, "n_val": 2, "n_test": 4, "data_seeds": [0, 1], "domains": ["a", "b"]},
           "summary": {"pixels": {"per_domain": {"a": {"mean": 0.5, "ci95": 0.1}, "b": {"mean": 0.25, "ci95": 0.0}},
                                  "mean": {"mean": 0.375, "ci95": 0.05}}}}
    md = evidence.probe_markdown(doc)
    assert "| raw pixels | 50.0 | 25.0 | **37.5** ± 5.0 |" in md
    assert evidence.probe_figure(doc, tmp_path / "probe.png").stat().st_size > 10_000


def test_report_collects_the_sweeps(tmp_path):
    """The report runs compare.py per backbone (selection, paired differences) and the Fashion-MNIST table."""
    sweep, fmnist, out = tmp_path / "sweep", tmp_path / "fmnist", tmp_path / "out"
    out.mkdir()

    def write(root, i, strategy, model, split, seed, acc, lr):
        run = root / f"{i}"
        run.mkdir(parents=True)
        over = [f"model={model}", f"strategy={strategy}", f"seed={seed}", f"optim.lr={lr}"]
        if split == "val":
            over += ["benchmark.eval_split=val"]
        res = {"schema_version": 1, "strategy": strategy, "method": "X", "protocol": "sequential",
               "benchmark": "procedural", "seed": seed, "data_seed": seed, "overrides": over,
               "tasks": [{"name": "digits", "num_classes": 10, "n_train": 1, "n_test": 1,
                          "info": {"eval_split": split}}],
               "accuracy_matrix": [[acc]], "final_accuracy": {"digits": acc}, "average_accuracy": acc,
               "params": {"per_task": {"digits": 10}, "per_task_excl_classifier": {"digits": 5}, "shared": 0,
                          "total": 10, "backbone": 100}, "forgetting": 0.0, "finished": True}
        (run / "results.json").write_text(json.dumps(res))

    i = 0
    for model in ("vit_formula", "vit_procedural"):
        for strategy, base in (("gift_multitask", 0.6), ("linear_multitask", 0.4)):
            for lr, shift in (("1e-2", 0.0), ("3e-2", -0.05), ("1e-3", -0.1)):
                for seed in (100, 101):
                    write(sweep, i := i + 1, strategy, model, "val", seed, base + shift, lr)
            for seed in range(5):
                write(sweep, i := i + 1, strategy, model, "test", seed, base + 0.01 * seed, "1e-2")
    for model, acc in (("vit_formula", 0.8), ("vit_procedural", 0.7)):
        write(fmnist, i := i + 1, "linear", model, "test", 0, acc, "1e-2")
    write(fmnist, i := i + 1, "linear", "vit_formula", "val", 100, 0.99, "1e-2")  # a selection run: not a test number
    selected = tmp_path / "fmnist_selected"  # learning rates chosen on Fashion-MNIST's own validation split
    for strategy, base in (("gift", 0.78), ("linear", 0.77)):
        for lr, shift in (("3e-3", 0.01), ("1e-2", 0.0)):
            for seed in (100, 101):
                write(selected, i := i + 1, strategy, "vit_formula", "val", seed, base + shift, lr)
        for seed in range(3):
            write(selected, i := i + 1, strategy, "vit_formula", "test", seed, base + 0.001 * seed, "3e-3")
    text = evidence.report(out, sweep, fmnist, selected)
    assert "#### `vit_formula`" in text and "#### `vit_procedural`" in text
    assert "gift_multitask[model=vit_formula]" in text and "val 60.0" in text
    assert "Resolved at α = 0.05 (Holm): gift_multitask[model=vit_formula] > linear_multitask[model=vit_formula]" in text
    assert "| `vit_formula` | `linear` | 1e-2 | 80.00 | 1 |" in text and "99.00" not in text
    chosen = text[text.index("### Learning rates chosen on Fashion-MNIST's validation split"):]
    assert "gift[model=vit_formula]" in chosen and "val 79.0" in chosen and (out / "validation_fmnist.md").is_file()
    assert (out / "evidence.md").read_text() == text and (sweep / "validation_vit_formula.md").is_file()


def test_model_card_figure(tmp_path):
    card = {"name": "bb", "pretraining": {"samples_seen": 2000, "wall_time_s": 7200.0, "hardware": "CPU"},
            "accuracy_curve": [{"samples": 1000 * i, "loss": 5.0 - i, "category": 0.1 * i, "upstream": 0.2 * i,
                                "hue": 0.3, "layout_mae": 0.1} for i in (1, 2)]}
    path = tmp_path / "bb.json"
    path.write_text(json.dumps(card))
    out = evidence.card_figure(path, tmp_path / "fig" / "curve.png")
    assert out.is_file() and out.stat().st_size > 10_000
    path.write_text(json.dumps({**card, "accuracy_curve": []}))
    with pytest.raises(SystemExit, match="no accuracy curve"):
        evidence.card_figure(path, tmp_path / "x.png")


def test_concept_statistics_of_a_finished_gift_run(tmp_path):
    from omegaconf import OmegaConf

    from runs import PROCEDURAL, TINY, compose_cfg, run_in_process

    run_dir = tmp_path / "run"
    cfg = compose_cfg(*TINY[1:], *PROCEDURAL, "strategy=gift_multitask", "benchmark.domains=[digits,signs,textures]")
    run_in_process(cfg, run_dir)
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # as run.py does
    stats = evidence.concept_stats(run_dir)
    assert stats["strategy"] == "gift_multitask" and 0 <= stats["average_accuracy"] <= 1
    assert set(stats["layers"]) == {"blocks.0.attn.proj", "blocks.1.attn.proj"}
    for layer in stats["layers"].values():
        assert layer["assignment_std_over_tokens"] > 0 and len(layer["concepts_used"]) == 3
        assert all(1 <= n for n in layer["concepts_used"])
        # NMI/ARI are defined exactly for the task pairs whose hard assignments use two or more concepts
        assert layer["nmi_defined_pairs"] == sum(1 for i, a in enumerate(layer["concepts_used"])
                                                 for b in layer["concepts_used"][i + 1:] if a > 1 and b > 1)
    md = evidence._concepts_section({"tiny": stats})
    assert "| tiny | `blocks.1.attn.proj` |" in md
