"""A run's life cycle beyond its numbers: what it logs across a kill -9 and resume (CSV, TensorBoard, W&B
continue the uninterrupted run's series, values and steps), a kill in start-up, a command refused in a
directory that holds a run, data-loader workers, Ctrl-C and a read-only output directory."""
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gift_cl.checkpoint import load_run_checkpoint
from gift_cl.orchestration.loop import CHECKPOINT, Run
from gift_cl.orchestration.rundir import RunLock
from gift_cl.strategies.evaluation import close_loggers

from runs import (
    PROCEDURAL,
    REPO,
    TINY,
    compose_cfg,
    env,
    results,
    run_py,
    tensorboard_scalars,
    wandb_file,
    wandb_records,
)

QUICK = [*TINY, *PROCEDURAL, "optim.epochs=1", "benchmark.domains=[digits,pedestrians]"]
# a free trunk and a high learning rate: the second task moves the first task's accuracy, so forgetting is not 0
# in the logs (a resume that lost the stored first accuracies would log 0 there)
FORGETS = ["strategy=gift_multitask", "strategy.method.trunk=free", "optim.lr=0.05", "optim.epochs=2",
           "benchmark.domains=[pedestrians,digits]", "benchmark.n_train=32"]


# ----------------------------------------------------------------------------- helpers
def start(*args) -> subprocess.Popen:
    """``run.py args`` in its own process group, with Ctrl-C's default action (a shell's background job,
    and so a test run started as one, would pass SIGINT on as ignored)."""
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def wait_for(proc: subprocess.Popen, condition, timeout=240) -> None:
    deadline = time.time() + timeout
    while not condition() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the moment it was to be stopped at"


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.is_file() else 0


def wandb_history(path: Path) -> dict:
    """``{step: {key: value}}`` from an offline run's ``.wandb`` file."""
    history = {}
    for record in wandb_records(path):
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history[int(items["_step"])] = {k: v for k, v in items.items() if not k.startswith("_")}
    return history


def latest_wandb_history(log_dir: Path, timeout: float = 60.0) -> dict:
    """The newest offline run's history, once W&B's service process has written it: on a loaded machine the
    file can still be empty or growing when ``finish()`` returns, so it is read until two reads a second
    apart agree."""
    deadline, last = time.time() + timeout, None
    while True:
        history = wandb_history(wandb_file(log_dir))
        if (history and history == last) or time.time() > deadline:
            return history
        last = history
        time.sleep(1.0)


# ----------------------------------------------------------------------------- logs across kill -9 and resume
def test_killed_sequential_run_logs_continue_the_uninterrupted_series(tmp_path):
    """Killed mid-way through the second experience, after a checkpoint inside it: the resumed run's CSV
    logs are the uninterrupted run's, byte for byte (forgetting of the first task included), and its
    TensorBoard scalars the same values at the same, increasing steps."""
    args = [*TINY, *PROCEDURAL, *FORGETS, "checkpoint_every=1", "logger=tensorboard"]
    reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    run_py(*args, f"hydra.run.dir={reference}")

    proc = start(*args, f"hydra.run.dir={killed}")
    wait_for(proc, lambda: (killed / "results.json").is_file())  # the first experience is done
    first = mtime(killed / CHECKPOINT)
    wait_for(proc, lambda: mtime(killed / CHECKPOINT) != first)  # an epoch of the second one is checkpointed
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not results(killed)["finished"]
    run_py(*args, f"resume={killed}")

    for name in ("training_results.csv", "eval_results.csv"):
        assert (killed / "logs" / name).read_text() == (reference / "logs" / name).read_text(), name
    forgetting = [row.split(",")[4] for row in (reference / "logs" / "eval_results.csv").read_text().splitlines()[1:]]
    assert any(float(f) != 0 for f in forgetting)  # the series compared is one that a lost state would zero

    got = tensorboard_scalars(killed / "logs" / "tensorboard")
    expected = tensorboard_scalars(reference / "logs" / "tensorboard")
    assert got == expected
    assert any(v != 0 for tag, series in got.items() if tag.startswith("ExperienceForgetting") for _, v in series)
    for tag, series in got.items():
        steps = [step for step, _ in series]
        assert steps == sorted(set(steps)), tag  # one value per step, in order
    assert len(list((killed / "logs" / "tensorboard").glob("events.out.tfevents.*"))) == 1


def stream_run(run_dir: Path, *overrides) -> Run:
    cfg = compose_cfg(*PROCEDURAL, *FORGETS, "optim.batch_size=16", "checkpoint_every=1", *overrides)
    return Run(cfg, run_dir)


def test_resumed_run_logs_the_whole_series_to_wandb_offline(tmp_path, monkeypatch):
    """W&B offline keeps nothing of a killed process (wandb buffers): the resumed process's offline run,
    under the run id stored in the log directory, holds the whole series, equal to an uninterrupted run's.
    The killed process is simulated in-process: it logs to the end, and the run resumes from a checkpoint
    copied after its first experience."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    reference = stream_run(tmp_path / "uninterrupted", "logger=wandb")
    reference.train_and_evaluate()
    close_loggers(reference.strategy)

    killed = stream_run(tmp_path / "killed", "logger=wandb")
    save = killed._save_boundary

    def save_and_keep_the_first():
        save()
        if killed.progress["position"] == 1:
            shutil.copy(tmp_path / "killed" / CHECKPOINT, tmp_path / "after_first.pt")

    killed._save_boundary = save_and_keep_the_first
    killed.train_and_evaluate()
    close_loggers(killed.strategy)
    run_id = (tmp_path / "killed" / "logs" / "wandb" / "gift_cl-run-id").read_text().strip()

    resumed = stream_run(tmp_path / "killed", "logger=wandb")
    resumed.restore(tmp_path / "after_first.pt")
    resumed.train_and_evaluate()
    close_loggers(resumed.strategy)

    offline = sorted((tmp_path / "killed" / "logs" / "wandb").glob("offline-run-*"))
    # one W&B run, resumed (a directory made in the same second as the first gets W&B's "-1" suffix)
    assert offline and all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", p.name) for p in offline)
    got = latest_wandb_history(tmp_path / "killed" / "logs")
    expected = latest_wandb_history(tmp_path / "uninterrupted" / "logs")
    assert got == expected and sorted(got) == list(got)
    assert any(v != 0 for row in got.values() for k, v in row.items() if k.startswith("ExperienceForgetting"))


# ----------------------------------------------------------------------------- start-up, refusals
def snapshot(run_dir: Path) -> dict:
    """Every file of a run directory, Hydra's and the log included, with its bytes and modification time."""
    return {p.relative_to(run_dir): (p.read_bytes(), p.stat().st_mtime_ns) for p in run_dir.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "finished"
    run_py(*QUICK, "strategy=linear", f"hydra.run.dir={run_dir}")
    return run_dir


def test_a_refused_command_touches_nothing_of_the_run_there(finished_run):
    """The same directory for a second command (two runs started in the same second): refused, and the first
    run's Hydra record (.hydra/overrides.yaml), job log and files stay as they were."""
    assert (finished_run / ".hydra" / "overrides.yaml").is_file() and (finished_run / "gift_cl.log").is_file()
    before = snapshot(finished_run)
    proc = run_py(*QUICK, "strategy=linear", "optim.lr=0.5", f"hydra.run.dir={finished_run}", check=False)
    assert proc.returncode == 1 and "already holds a run" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(finished_run) == before
    assert "optim.lr=0.5" not in (finished_run / ".hydra" / "overrides.yaml").read_text()


def test_a_command_refused_by_the_lock_touches_nothing(tmp_path):
    """A run still starting (it holds the lock, has not saved its configuration yet): the second is refused
    and writes nothing there."""
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- first=run\n")
    with RunLock(tmp_path):
        before = snapshot(tmp_path)
        proc = run_py(*QUICK, "strategy=linear", f"hydra.run.dir={tmp_path}", check=False)
        after = snapshot(tmp_path)
    assert proc.returncode == 1 and "in use by a running run" in proc.stderr
    assert after == before


def test_resume_of_a_directory_killed_in_start_up_starts_the_run_there(tmp_path):
    """Killed before it saved its configuration: only Hydra's record, the log and the lock are there. The
    requeued command (the same every time: hydra.run.dir=D resume=D) starts the run afresh in D."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- strategy=linear\n")
    (run_dir / "gift_cl.log").write_text("")
    (run_dir / ".lock").write_text("12345")
    run_py(*QUICK, "strategy=linear", f"hydra.run.dir={run_dir}", f"resume={run_dir}")
    res = results(run_dir)
    assert res["finished"] and not any(o.startswith("resume=") for o in res["overrides"])
    # the requeue loop's first command, before the directory exists: Hydra creates it, the run starts there
    fresh = tmp_path / "fresh"
    run_py(*QUICK, "strategy=linear", f"hydra.run.dir={fresh}", f"resume={fresh}")
    assert results(fresh)["finished"]


def test_resume_of_a_directory_with_other_files_is_refused_and_untouched(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    before = snapshot(tmp_path)
    proc = run_py(*QUICK, "strategy=linear", f"resume={tmp_path}", f"hydra.run.dir={tmp_path / 'new'}", check=False)
    assert proc.returncode == 1 and "not a run directory" in proc.stderr and "Traceback" not in proc.stderr
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- data-loader workers
def trained_weights(run_dir: Path, **loader) -> dict:
    cfg = compose_cfg(*PROCEDURAL, "benchmark.domains=[signs]", "benchmark.n_train=32", "benchmark.augment=true",
                      "strategy=gift_multitask", "optim.epochs=2", "optim.batch_size=16", "checkpoint_every=0")
    run = Run(cfg, run_dir)
    run.env.loader = dict(loader)
    run.train_and_evaluate()
    return {k: v.clone() for k, v in run.model.trainable_state_dict().items() if torch.is_tensor(v)}


def test_workers_do_not_change_what_a_run_trains(tmp_path):
    """Random crops and flips drawn per sample from (seed, task, experience, epoch, index): the main process,
    two workers and two persistent workers (CUDA's default) train the same weights, bit for bit."""
    main = trained_weights(tmp_path / "w0", num_workers=0)
    for name, loader in {"w2": {"num_workers": 2}, "w2p": {"num_workers": 2, "persistent_workers": True}}.items():
        other = trained_weights(tmp_path / name, **loader)
        assert main.keys() == other.keys()
        assert all(torch.equal(main[k], other[k]) for k in main), name


def test_each_epoch_and_sample_gets_its_own_augmentation(tmp_path):
    """The seeding keeps augmentation random: another epoch crops differently, the same sample in the same
    epoch identically, and the caller's random stream is left as it was."""
    cfg = compose_cfg(*PROCEDURAL, "benchmark.domains=[digits]", "benchmark.augment=true", "strategy=linear")
    run = Run(cfg, tmp_path)
    data = run.tasks[0].train
    before = torch.get_rng_state()
    first = data[0][0]
    assert torch.equal(data[0][0], first) and torch.equal(torch.get_rng_state(), before)
    epoch0 = [data[i][0] for i in range(8)]
    run.augmentation.position[1] = 1  # the next epoch
    assert not all(torch.equal(data[i][0], epoch0[i]) for i in range(8))


# ----------------------------------------------------------------------------- Ctrl-C, read-only output
def test_ctrl_c_is_one_line_exit_130_and_the_run_resumes(tmp_path):
    args = [*TINY, *PROCEDURAL, *FORGETS, "checkpoint_every=1"]
    proc = start(*args, f"hydra.run.dir={tmp_path}")
    wait_for(proc, lambda: (tmp_path / CHECKPOINT).is_file())
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal sends on Ctrl-C: the whole foreground group
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert stderr.strip().splitlines() == [f"interrupted: the run in {tmp_path} stopped (its last checkpoint is "
                                           f"intact); resume with resume={tmp_path}"]
    assert load_run_checkpoint(tmp_path / CHECKPOINT)["progress"]["position"] < 2
    run_py(*args, f"resume={tmp_path}")
    assert results(tmp_path)["finished"]


READ_ONLY = """
import builtins, errno, os, runpy, sys
ro = os.path.realpath(sys.argv.pop(1))
def under(path):
    try:
        p = os.path.realpath(os.fsdecode(path))
    except TypeError:
        return False
    return p == ro or p.startswith(ro + os.sep)
def refuse(path):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fsdecode(path))
_open, _os_open, _mkdir = builtins.open, os.open, os.mkdir
def open_(file, mode="r", *a, **k):
    if isinstance(file, (str, bytes, os.PathLike)) and set(mode) & set("wax+") and under(file):
        refuse(file)
    return _open(file, mode, *a, **k)
def os_open(path, flags, *a, **k):
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
        refuse(path)
    return _os_open(path, flags, *a, **k)
def mkdir(path, *a, **k):
    if under(path) and not os.path.isdir(path):
        refuse(path)
    return _mkdir(path, *a, **k)
builtins.open, os.open, os.mkdir = open_, os_open, mkdir
sys.argv[0] = "run.py"
runpy.run_path("run.py", run_name="__main__")
"""


@pytest.mark.parametrize("where", ["existing", "new"])
def test_read_only_output_directory_is_one_line(tmp_path, where):
    """A read-only file system (simulated: every write under it fails with EROFS, as root cannot be denied
    by permissions); without root, a chmod'ed directory is tried too."""
    read_only = tmp_path / "ro"
    (read_only / "existing").mkdir(parents=True)
    cases = {errno.EROFS: [sys.executable, "-c", READ_ONLY, str(read_only)]}
    if os.geteuid() != 0:
        read_only.chmod(0o555)
        (read_only / "existing").chmod(0o555)
        cases[errno.EACCES] = [sys.executable, "run.py"]
    try:
        for code, command in cases.items():
            proc = subprocess.run([*command, *QUICK, "strategy=linear", f"hydra.run.dir={read_only / where}"],
                                  cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
            lines = proc.stderr.strip().splitlines()
            assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
            assert str(read_only / where) in lines[0] and os.strerror(code) in lines[0], lines[0]
    finally:
        read_only.chmod(0o755)
        (read_only / "existing").chmod(0o755)
    assert [p.name for p in read_only.iterdir()] == ["existing"] and not list((read_only / "existing").iterdir())
