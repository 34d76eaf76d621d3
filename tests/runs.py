"""Helpers for tests that run the protocol: compose a configuration as ``run.py`` would, run it in-process
or as a subprocess (``python run.py ...``), read its results."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gift_cl.config import register_resolvers

register_resolvers()  # ${asset:...}, ${backbone_data:...}

REPO = Path(__file__).resolve().parents[1]
# a 2-block random ViT, one thread, no bars: what most run tests use
TINY = ["model=vit_tiny_random", "threads=1", "progress=false", "optim.epochs=2", "optim.batch_size=16"]
PROCEDURAL = ["benchmark=procedural", "benchmark.n_train=48", "benchmark.n_test=24"]


def compose_cfg(*overrides, model: str = "vit_tiny_random"):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", "progress=false", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.benchmark_name = "procedural"
    OmegaConf.set_struct(cfg, True)
    return cfg


def run_in_process(cfg, run_dir: Path) -> dict:
    from orchestration.loop import run_protocol
    from orchestration.validation import validate

    validate(cfg)
    return run_protocol(cfg, Path(run_dir), None)


def env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def run_py(*args, cwd=REPO, timeout=300, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def results(run_dir) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


def kill_and_resume(args, tmp_path: Path) -> tuple[dict, dict, Path, Path]:
    """Run ``run.py args`` once uninterrupted and once killed with SIGKILL as soon as it has written a checkpoint,
    then resumed. Returns both results and both run directories."""
    import os
    import signal
    import time

    reference, killed = Path(tmp_path) / "uninterrupted", Path(tmp_path) / "killed"
    run_py(*args, f"hydra.run.dir={reference}")
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), *args, f"hydra.run.dir={killed}"], cwd=REPO,
                            env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = killed / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    # kill once a checkpoint exists but the stream is not finished: mid-experience or at a boundary
    while not ckpt.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.is_file()
    assert not (killed / "results.json").is_file() or not results(killed)["finished"]
    run_py(*args, f"resume={killed}")
    a, b = results(reference), results(killed)
    assert b["finished"]
    for key in ("accuracy_matrix", "average_accuracy", "forgetting", "bwt", "task_id_accuracy", "params"):
        assert a[key] == b[key], key
    return a, b, reference, killed
