"""Resume (orchestration.loop, orchestration.rundir) under kill -9 at random moments: kill, resume, repeat,
until the run finishes; in each protocol the result is the uninterrupted run's: its numbers, per-image
predictions, CSV logs byte for byte and TensorBoard scalars.
A run that finishes before enough kills is followed by another, killed afresh, until there were enough.

The moments: random times since the process started (start-up and imports included), and the moments
right after the run directory's lock is taken (start-up: before the configuration is saved or the
checkpoint read), a checkpoint or ``results.json`` is written.
Every attempt is the same command, as a requeue loop runs it: ``hydra.run.dir=D resume=D``.

Minutes on a CPU: ``pytest -m killloop -s tests/test_resume_kill.py`` (``GIFT_CL_KILLLOOP_SEED`` draws the
moments, ``GIFT_CL_KILLLOOP_KILLS`` is the number of kills per protocol, default 10).
"""
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from runs import PROCEDURAL, REPO, TINY, env, results, run_py, tensorboard_scalars

pytestmark = pytest.mark.killloop

ARGS = [*TINY, *PROCEDURAL, "strategy=gift_multitask", "strategy.method.trunk=free", "optim.lr=0.05",
        "optim.epochs=3", "checkpoint_every=1", "benchmark.domains=[digits,pedestrians,signs]",
        "logger=tensorboard"]
SAME = ("accuracy_matrix", "final_accuracy", "average_accuracy", "forgetting", "forgetting_per_task", "bwt",
        "task_id_accuracy", "task_inference", "average_accuracy_inferred_task", "params", "tasks", "overrides")
# (what to wait for, path): the file "changes" (is written) in this attempt, or a "time" (seconds, drawn)
MOMENTS = [("time", None), ("time", None), ("time", None), ("changes", ".lock"), ("changes", "checkpoints/last.pt"),
           ("changes", "results.json")]


def mtime(path: Path) -> int:
    return path.stat().st_mtime_ns if path.exists() else 0


def attempt(run_dir: Path, protocol: str, moment: tuple, duration: float, rng: random.Random):
    """One requeued command, killed at ``moment``: how far it had got (:func:`stage`), or None when it
    finished before."""
    stderr = run_dir.parent / "stderr.txt"
    with open(stderr, "w") as err:
        proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *ARGS, f"strategy.protocol={protocol}",
                                 f"hydra.run.dir={run_dir}", f"resume={run_dir}"], cwd=REPO, env=env(),
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    kind, name = moment
    deadline = time.time() + (rng.uniform(0, duration) if kind == "time" else 600)
    before = mtime(run_dir / name) if name else 0
    files = {f: mtime(run_dir / f) for f in (".lock", "checkpoints/last.pt", "results.json")}
    while proc.poll() is None and time.time() < deadline:
        if kind == "changes" and mtime(run_dir / name) != before:
            break
        time.sleep(0.005)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return stage(run_dir, files)
    assert proc.returncode == 0, stderr.read_text()[-3000:]
    return None


def stage(run_dir: Path, at_start: dict) -> str:
    """How far a killed process had got, from the files it wrote (``at_start``: their times before it)."""
    if mtime(run_dir / ".lock") == at_start[".lock"]:
        return "start-up"  # imports, Hydra, validation: the run directory not locked yet
    if mtime(run_dir / "checkpoints/last.pt") == at_start["checkpoints/last.pt"]:
        return "before a checkpoint"  # data, model, restore, training up to its first checkpoint
    if mtime(run_dir / "results.json") == at_start["results.json"]:
        return "after a checkpoint"
    return "after a results write"


def logs(run_dir: Path) -> dict:
    return {p.relative_to(run_dir): p.read_text() for p in sorted((run_dir / "logs").rglob("*.csv"))}


def scalars(run_dir: Path) -> dict:
    out = {}
    for tb_dir in sorted((run_dir / "logs").rglob("tensorboard")):
        assert len(list(tb_dir.glob("events.out.tfevents.*"))) == 1, tb_dir
        out[tb_dir.relative_to(run_dir)] = tensorboard_scalars(tb_dir)
    return out


def predictions(run_dir: Path) -> dict:
    with np.load(run_dir / "predictions.npz") as data:
        return {k: data[k].tolist() for k in data.files}


def assert_same_run(reference: Path, killed: Path) -> None:
    a, b = results(reference), results(killed)
    assert b["finished"] and b["schema_version"] == 2
    for key in SAME:
        assert a.get(key) == b.get(key), key
    assert predictions(killed) == predictions(reference)
    assert logs(killed) == logs(reference)
    assert scalars(killed) == scalars(reference)


@pytest.mark.parametrize("protocol", ["independent", "sequential", "joint"])
def test_kill_loop_ends_with_the_uninterrupted_results(tmp_path, protocol):
    seed = int(os.environ.get("GIFT_CL_KILLLOOP_SEED", "0"))
    min_kills = int(os.environ.get("GIFT_CL_KILLLOOP_KILLS", "10"))
    rng = random.Random(f"{seed}-{protocol}")
    reference = tmp_path / "uninterrupted"
    t0 = time.time()
    run_py(*ARGS, f"strategy.protocol={protocol}", f"hydra.run.dir={reference}")
    duration = time.time() - t0

    stages, rounds, t0 = Counter(), 0, time.time()
    while sum(stages.values()) < min_kills:
        killed, rounds = tmp_path / f"killed{rounds}", rounds + 1
        while (killed_at := attempt(killed, protocol, rng.choice(MOMENTS), duration, rng)) is not None:
            stages[killed_at] += 1
            assert sum(stages.values()) < 10 * min_kills, "the runs do not get to their end"
        assert_same_run(reference, killed)
    print(f"\n{protocol}: {sum(stages.values())} kills ({dict(stages)}) over {rounds} runs in "
          f"{time.time() - t0:.0f} s, each equal to the uninterrupted run ({duration:.1f} s)")
