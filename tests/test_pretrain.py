"""Formula-driven pretraining data (gift_cl.data.formula) and the resumable pretraining script (gift_cl.pretrain)."""
import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from gift_cl.data import formula
from gift_cl.pretrain import main as pretrain_main

SMALL = formula.FormulaSpec(n_fractal=6, n_atom=6, seed=0)


@pytest.fixture(scope="module")
def images():
    return formula.FormulaImages(SMALL, 32)


def test_batches_are_a_function_of_the_generator(images):
    a = images.batch(32, torch.Generator().manual_seed(3))
    b = images.batch(32, torch.Generator().manual_seed(3))
    c = images.batch(32, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and all(torch.equal(a[1][k], b[1][k]) for k in a[1])
    assert not torch.equal(a[0], c[0])
    again = formula.FormulaImages(SMALL, 32)  # the category table is a function of the spec
    assert torch.equal(again.maps, images.maps) and torch.equal(again.atoms, images.atoms)
    other = formula.FormulaImages(formula.FormulaSpec(6, 6, seed=1), 32)
    assert not torch.equal(other.maps, images.maps)


def test_images_and_labels_are_well_formed(images):
    x, y = images.batch(256, torch.Generator().manual_seed(0))
    assert x.shape == (256, 3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert set(y) == set(images.heads) and y["layout"].shape == (256, formula.LAYOUT_GRID ** 2)
    assert 0 <= y["layout"].min() and y["layout"].max() <= 1
    for k, n in images.heads.items():
        if k == "layout":
            continue
        v = y[k][y[k] != formula.IGNORE]
        assert len(v) > 0 and 0 <= v.min() and v.max() < n, k
    fractal = y["category"] < SMALL.n_fractal
    assert fractal.any() and (~fractal).any()
    assert (y["angle"][~fractal] == formula.IGNORE).all()  # atoms are rotation-symmetric: no angle label
    assert (y["angle"][fractal] != formula.IGNORE).all()
    grey = y["hue"] == formula.IGNORE  # grey images carry no hue label, and are grey
    assert 0.1 < grey.float().mean() < 0.3
    spread = (x[grey] - x[grey].mean(1, keepdim=True)).abs().amax()
    assert spread < 0.1  # only the per-channel pixel noise differs


def test_layout_marks_where_the_shape_is(images):
    """Cells the layout calls covered differ from the image's median brightness more than empty cells do."""
    x, y = images.batch(512, torch.Generator().manual_seed(1))
    grey = x.mean(1)
    cells = torch.nn.functional.avg_pool2d(grey[:, None], 32 // formula.LAYOUT_GRID).flatten(1)
    dev = (cells - grey.flatten(1).median(1).values[:, None]).abs()
    layout = y["layout"]
    ok = total = 0
    for i in range(len(x)):
        full, empty = layout[i] > 0.6, layout[i] == 0
        if full.any() and empty.any():
            total += 1
            ok += bool(dev[i][full].mean() > dev[i][empty].mean())
    assert total > 150 and ok / total > 0.9


def _run(tmp_path, *extra):
    args = ["--out", str(tmp_path / "bb"), "--samples", "96", "--batch-size", "16", "--n-fractal", "3",
            "--n-atom", "3", "--upstream-per-domain", "8", "--val-size", "32", "--eval-every", "48",
            "--threads", "1", *extra]
    pretrain_main(args)


def test_a_stopped_and_resumed_pretraining_equals_an_uninterrupted_one(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _run(tmp_path / "a")
    _run(tmp_path / "b", "--stop-after", "2")
    card = json.loads((tmp_path / "b" / "bb.json").read_text())
    assert card["finished"] is False and card["pretraining"]["steps"] == 2
    with pytest.raises(SystemExit, match="--resume"):
        _run(tmp_path / "b")  # a state exists: continuing it must be asked for
    _run(tmp_path / "b", "--resume", "--stop-after", "1")
    _run(tmp_path / "b", "--resume")
    files = [tmp_path / d / "bb.safetensors" for d in "ab"]
    tensors = []
    for f in files:
        with safe_open(str(f), "pt") as st:
            tensors.append({k: st.get_tensor(k) for k in st.keys()})
            assert st.metadata()["finished"] == "True"
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    assert not any(k.startswith("head") for k in tensors[0]) and all(v.dtype == torch.float16 for v in tensors[0].values())
    card = json.loads((tmp_path / "b" / "bb.json").read_text())
    a_card = json.loads((tmp_path / "a" / "bb.json").read_text())
    assert card["finished"] and card["pretraining"]["samples_seen"] == 96 and card["pretraining"]["steps"] == 6
    assert [h["loss"] for h in card["accuracy_curve"]] == [h["loss"] for h in a_card["accuracy_curve"]]
    assert card["data_config"] == {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    for key in ("hardware", "wall_time_s", "git_commit", "formula", "upstream", "command"):
        assert key in card["pretraining"]


def test_resume_with_other_settings_is_refused(tmp_path):
    from gift_cl.checkpoint import CheckpointError

    _run(tmp_path, "--stop-after", "1")
    with pytest.raises(CheckpointError, match="other settings"):
        _run(tmp_path, "--resume", "--lr", "0.01")


def test_a_shortened_schedule_goes_on_from_the_current_learning_rate(tmp_path):
    from gift_cl.checkpoint import CheckpointError
    from gift_cl.pretrain import _lr_at

    _run(tmp_path, "--samples", "320", "--stop-after", "8")  # 20 steps planned
    with pytest.raises(CheckpointError, match="must end after"):
        _run(tmp_path, "--samples", "320", "--resume", "--shorten-to", "64")
    _run(tmp_path, "--samples", "320", "--resume", "--shorten-to", "192", "--stop-after", "1")
    with pytest.raises(CheckpointError, match="already shortened"):
        _run(tmp_path, "--samples", "320", "--resume", "--shorten-to", "256")
    _run(tmp_path, "--samples", "320", "--resume")  # the recorded cut holds without the flag
    card = json.loads((tmp_path / "bb.json").read_text())["pretraining"]
    assert card["steps"] == 12 and card["samples_seen"] == 192 and card["samples_planned"] == 192
    assert "shortened at step 8" in card["optimizer"]["schedule"] and "1e-6 at step 12" in card["optimizer"]["schedule"]
    cut = {"at_step": 8, "total_steps": 12, "lr": _lr_at(8, 20, 1, 1e-3)}
    assert _lr_at(8, 20, 1, 1e-3, shortened=cut) == cut["lr"]  # continuous where it is cut
    lrs = [_lr_at(s, 20, 1, 1e-3, shortened=cut) for s in range(8, 13)]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] == pytest.approx(1e-6)


def test_the_pretrained_backbone_loads_through_the_model_config(tmp_path):
    from gift_cl.backbones import backbone_data_config, create_backbone
    from gift_cl.pretrain import ARCH, ARCH_KWARGS

    _run(tmp_path)
    path = str(tmp_path / "bb.safetensors")
    model = create_backbone(ARCH, num_classes=5, checkpoint=path, kwargs=ARCH_KWARGS)
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 5)
    assert backbone_data_config(ARCH, ARCH_KWARGS, path) == {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    with safe_open(path, "pt") as st:
        w = st.get_tensor("blocks.0.attn.proj.weight").float()
    assert torch.equal(model.blocks[0].attn.proj.weight.detach(), w)
    assert np.isfinite(w.numpy()).all()
