"""``run.py`` (orchestration.cli) given bad input: every way a user can make a run exit 0 with something wrong,
or run code it should not, ends in one clear message (or the right behaviour). Through ``run.py`` where that is
how a user meets it; the guarantees are listed in docs/guide/safety.md."""
import os
import pickle
import shutil
import subprocess
import sys
import time

import pytest
import torch

from gift_cl.atomic import save_torch
from gift_cl.checkpoint import CheckpointError, load_run_checkpoint
from gift_cl.orchestration.loop import CHECKPOINT, Run
from gift_cl.orchestration.rundir import RunLock
from gift_cl.strategies import DivergenceError

from fixtures import write_vtab
from runs import PROCEDURAL, REPO, TINY, compose_cfg, env, results, run_py

QUICK = [*TINY, *PROCEDURAL, "optim.epochs=1", "benchmark.domains=[digits,pedestrians]"]


def fails(*args, timeout=120) -> str:
    """Run ``run.py``; it must exit non-zero with one ``error:`` line and no traceback. Returns stderr."""
    proc = run_py(*args, check=False, timeout=timeout)
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


# ----------------------------------------------------------------------------- an explicit choice wins
def test_optim_group_on_the_command_line_beats_the_strategy_default():
    cfg = compose_cfg("strategy=gift", "optim=paper")
    assert cfg.optim.lr == 1e-4 and cfg.optim.epochs == 100  # the strategy's lr 1e-2 does not leak in
    assert compose_cfg("strategy=gift").optim.lr == 1e-2  # its own default recipe keeps its lr
    assert compose_cfg("strategy=gift", "optim=paper", "optim.lr=3e-3").optim.lr == 3e-3


@pytest.mark.parametrize("preset,benchmark", [("vtab_gift", "vtab"), ("fgvc_gift", "fgvc"),
                                              ("vdd_gift_multitask", "vdd")])
def test_paper_presets(preset, benchmark):
    cfg = compose_cfg(f"experiment={preset}", model="vit_b16_in21k")
    assert cfg.optim.lr == 1e-4 and cfg.optim.epochs == 100 and cfg.optim.warmup_epochs == 10
    assert cfg.model.name == "vit_base_patch16_224.augreg_in21k" and benchmark in cfg.benchmark._target_
    # an explicit group on the command line still wins over the preset
    assert compose_cfg(f"experiment={preset}", "optim=default", model="vit_b16_in21k").optim.epochs == 10


# ----------------------------------------------------------------------------- validation before any work
@pytest.mark.parametrize("override,needle", [
    ("strategy.protocol=jiont", "strategy.protocol='jiont': must be one of independent, sequential, joint"),
    ("optim.epochs=0", "optim.epochs=0: must be an integer >= 1"),
    ("optim.epochs=-1", "optim.epochs=-1"),
    ("optim.batch_size=0", "optim.batch_size=0: must be an integer >= 1"),
    ("optim.lr=1e6", "optim.lr=1000000.0: must be a number in"),
    ("model.image_size=0", "model.image_size=0"),
    ("strategy.method.trunk=frozen", "unknown trunk policy"),
    ("+strategy.method.trnk=free", "strategy.method.trnk: not an argument of gift_cl.methods.GiftMethod"),
    ("generator.block=pacaa", "unknown GIFT block 'pacaa'"),
])
def test_bad_values_stop_with_one_message(tmp_path, override, needle):
    err = fails(*QUICK, "strategy=gift_multitask", override, f"hydra.run.dir={tmp_path}")
    assert needle in err, err
    assert not (tmp_path / "results.json").exists()


def test_misspelt_key_names_the_key(tmp_path):
    proc = run_py(*QUICK, "strategy.mode=joint", f"hydra.run.dir={tmp_path}", check=False)
    assert proc.returncode != 0 and "strategy.mode" in proc.stderr


# ----------------------------------------------------------------------------- divergence
def test_non_finite_loss_stops_the_run_and_saves_nothing_non_finite(tmp_path):
    cfg = compose_cfg(*PROCEDURAL, "benchmark.domains=[digits,pedestrians]", "strategy=gift_multitask",
                      "optim.epochs=2", "optim.batch_size=16", "checkpoint_every=1")
    run = Run(cfg, tmp_path)
    steps = {"n": 0}

    def penalty():
        steps["n"] += 1
        return float("nan") if steps["n"] > 4 else 0.0

    run.model.penalty = penalty
    with pytest.raises(DivergenceError, match=r"task\(s\) \[0\], epoch 2/2, step 2/3, lr"):
        run.train_and_evaluate()
    assert not (tmp_path / "results.json").exists()
    state = load_run_checkpoint(tmp_path / CHECKPOINT)  # the checkpoint of epoch 1, before the divergence
    assert state["training"]["epochs_done"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if torch.is_tensor(v))


# ----------------------------------------------------------------------------- resume is exact and honest
@pytest.fixture(scope="module")
def finished_single_task_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "single"
    run_py(*QUICK, "strategy=linear", f"hydra.run.dir={run_dir}")
    return run_dir


def snapshot(run_dir):
    """Every file of the run, except what Hydra itself writes into hydra.run.dir before our code runs (its
    record of each command, .hydra/ and gift_cl.log) and the lock file."""
    return {p.relative_to(run_dir): p.read_bytes() for p in run_dir.rglob("*")
            if p.is_file() and p.name not in (".lock", "gift_cl.log") and ".hydra" not in p.parts}


@pytest.mark.parametrize("change,needle", [
    ("optim.lr=0.5", "optim.lr: 0.01 -> 0.5"),
    ("benchmark.domains=[digits,signs]", "benchmark.domains"),
])
def test_resume_with_another_configuration_is_refused_and_rewrites_nothing(finished_single_task_run, change, needle):
    before = snapshot(finished_single_task_run)
    err = fails(*QUICK, "strategy=linear", change, f"resume={finished_single_task_run}")
    assert needle in err and "allow_config_change=true" in err
    assert snapshot(finished_single_task_run) == before


def test_rerun_in_a_directory_that_holds_a_run_is_refused(finished_single_task_run):
    before = snapshot(finished_single_task_run)
    err = fails(*QUICK, "strategy=linear", f"hydra.run.dir={finished_single_task_run}")
    assert "already holds a run" in err and f"resume={finished_single_task_run}" in err
    assert snapshot(finished_single_task_run) == before


def test_resume_true_picks_only_a_run_of_the_same_configuration(tmp_path):
    parent = tmp_path / "outputs"
    mine, other = parent / "a_mine", parent / "b_other"
    for run_dir, lr in ((mine, "0.01"), (other, "0.02")):
        run_py(*QUICK, "strategy=linear", f"optim.lr={lr}", f"hydra.run.dir={run_dir}")
        res = results(run_dir)
        res["finished"] = False  # as if killed after its last checkpoint
        (run_dir / "results.json").write_text(__import__("json").dumps(res))
    os.utime(other, (time.time() + 60, time.time() + 60))  # the other run is the most recent one
    proc = run_py(*QUICK, "strategy=linear", "optim.lr=0.01", "resume=true", f"hydra.run.dir={parent / 'new'}")
    assert f"continuing {mine}" in proc.stderr + proc.stdout
    assert results(mine)["finished"] and not results(other)["finished"]


def test_a_run_directory_in_use_is_refused(tmp_path):
    with RunLock(tmp_path):
        err = fails(*QUICK, "strategy=linear", f"hydra.run.dir={tmp_path}")
    assert "in use by a running run" in err and str(os.getpid()) in err


# ----------------------------------------------------------------------------- safe loading
class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint_runs_no_code(tmp_path, finished_single_task_run):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_single_task_run, run_dir)
    marker = tmp_path / "pwned"
    with open(run_dir / CHECKPOINT, "wb") as f:
        pickle.dump({"format": "gift_cl.run_checkpoint", "x": Exploit(marker)}, f)
    results_json = run_dir / "results.json"
    res = results(run_dir)
    res["finished"] = False
    results_json.write_text(__import__("json").dumps(res))
    err = fails(*QUICK, "strategy=linear", f"resume={run_dir}")
    assert "CheckpointError" in err and str(run_dir / CHECKPOINT) in err
    assert not marker.exists()


def test_crafted_target_in_a_saved_config_is_not_instantiated(tmp_path, finished_single_task_run):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_single_task_run, run_dir)
    marker = tmp_path / "pwned"
    cfg = (run_dir / "config_resolved.yaml").read_text()
    cfg = cfg.replace("_target_: gift_cl.data.procedural.load_procedural",
                      f"_target_: os.system\n  command: touch {marker}\n  _args_: []\n  x_: 0\n  _skip_: gift_cl")
    (run_dir / "config_resolved.yaml").write_text(cfg)
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "cluster_maps.py"), str(run_dir)], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "benchmark._target_='os.system': not a constructor" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "foreign", "empty"])
def test_damaged_checkpoint_gets_one_message_naming_the_file(tmp_path, damage):
    path = tmp_path / "last.pt"
    save_torch({"format": "gift_cl.run_checkpoint", "version": 1, "w": torch.ones(1000)}, path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "foreign":
        torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(path)):
        load_run_checkpoint(path)


def test_write_failures_name_the_path(tmp_path, monkeypatch):
    def full_disk(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=rf"cannot write {tmp_path / 'last.pt'}.*disk full"):
        save_torch({}, tmp_path / "last.pt")
    monkeypatch.undo()

    def denied(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", denied)
    with pytest.raises(CheckpointError, match=rf"cannot write {tmp_path / 'x.pt'}: Permission denied"):
        save_torch({}, tmp_path / "x.pt")
    assert not list(tmp_path.glob(".x.pt.*"))  # no temporary file left behind


# ----------------------------------------------------------------------------- data stays inside its root
@pytest.mark.parametrize("bad", ["../../outside.jpg", "/etc/passwd"])
def test_split_file_paths_must_stay_inside_the_root(tmp_path, bad):
    root = tmp_path / "vtab"
    write_vtab(str(root), task="dtd", num_classes=3)
    split = root / "dtd" / "train800.txt"
    lines = split.read_text().splitlines()
    lines[2] = f"{bad} 1"
    split.write_text("\n".join(lines) + "\n")
    err = fails(*TINY, "benchmark=vtab/dtd", f"benchmark.root={root}", f"hydra.run.dir={tmp_path / 'run'}")
    assert "DataError" in err and f"{split}:3" in err and bad in err


def test_a_run_that_fails_before_training_leaves_no_half_made_directory(tmp_path):
    """Data that cannot be built is found after the run has taken its directory: what the start wrote there
    goes again, so no directory looks like a run that resume=true or the tools would pick up."""
    from gift_cl.errors import library_user_errors
    from gift_cl.orchestration.cli import run, user_error

    cfg = compose_cfg(*PROCEDURAL, "threads=1", "benchmark.domains=[digits,no_such_domain]")
    with pytest.raises(Exception) as err:
        run(cfg, tmp_path / "run")
    assert isinstance(user_error(err.value), library_user_errors()) and "no_such_domain" in str(err.value)
    assert list((tmp_path / "run").iterdir()) == []
