"""Helpers shared by the tests: the tiny random ViT the unit tests build on; compose a configuration as
``run.py`` would, run it in-process or as a subprocess (``python run.py ...``), read its results and its
TensorBoard and W&B logs back.

Usable from any test: ``from runs import tiny_vit`` (pytest puts ``tests/`` on sys.path)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import timm
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from gift_cl.config import register_resolvers

register_resolvers()  # ${asset:...}, ${backbone_data:...}

REPO = Path(__file__).resolve().parents[1]
# a 2-block random ViT, one thread, no bars: what most run tests use
TINY = ["model=vit_tiny_random", "threads=1", "progress=false", "optim.epochs=2", "optim.batch_size=16"]
PROCEDURAL = ["benchmark=procedural", "benchmark.n_train=48", "benchmark.n_test=24"]


def tiny_vit(*, embed_dim: int = 64, depth: int = 2, num_classes: int = 0, seed: int = 0, training: bool = False):
    """A random timm ViT for 32 px images (8 px patches, 2 heads), its weights drawn after
    ``torch.manual_seed(seed)``; in eval mode unless ``training`` (the mode timm builds it in)."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=embed_dim,
                            depth=depth, num_heads=2, num_classes=num_classes)
    return vit.train(training)


def compose_cfg(*overrides, model: str = "vit_tiny_random"):
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={model}", "progress=false", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.benchmark_name = "procedural"
    OmegaConf.set_struct(cfg, True)
    return cfg


def tiny_gift_run(run_dir: Path, domains: str, *overrides: str) -> Path:
    """A tiny finished multi-task GIFT run on the procedural ``domains`` (``"[digits,signs]"``), made in-process,
    with the ``config_resolved.yaml`` run.py writes: what the analysis tools read."""
    cfg = compose_cfg(*PROCEDURAL, "strategy=gift_multitask", f"benchmark.domains={domains}", "benchmark.n_train=16",
                      "benchmark.n_test=8", "optim.epochs=1", "optim.batch_size=16", *overrides)
    run_in_process(cfg, run_dir)
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return run_dir


def run_in_process(cfg, run_dir: Path) -> dict:
    from gift_cl.orchestration.loop import run_protocol
    from gift_cl.orchestration.validation import validate

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


def tensorboard_accumulator(tb_dir):
    """TensorBoard's own reader of an event directory, every scalar kept, loaded."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def tensorboard_scalars(tb_dir) -> dict:
    """``{tag: [(step, value), ...]}`` as TensorBoard reads the directory back."""
    acc = tensorboard_accumulator(tb_dir)
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_file(log_dir) -> Path:
    """The ``.wandb`` file of the newest offline W&B run under a run's ``logs/``."""
    return next((Path(log_dir) / "wandb" / "latest-run").resolve().glob("*.wandb"))


def wandb_records(path) -> list:
    """Every record of an offline run's ``.wandb`` file (W&B's record log: a 7-byte header, then records of
    crc32, length, type and a protobuf ``Record``, in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunk, records = Path(path).read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def stop_then_restore(make, run_dir: Path, stop_after: int = 1):
    """A run (``make(run_dir)`` builds an ``orchestration.loop.Run``) that dies after ``stop_after`` experiences,
    and a fresh one restored from its checkpoint, not trained yet: ``(stopped, restored)``."""
    from gift_cl.orchestration.runfiles import CHECKPOINT

    stopped = make(run_dir)
    stopped.experiences = stopped.experiences[:stop_after]  # the process dies here
    stopped.train_and_evaluate()
    restored = make(run_dir)
    restored.restore(Path(run_dir) / CHECKPOINT)
    return stopped, restored
