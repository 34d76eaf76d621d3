"""What ``python run.py`` does: validate the configuration, pick and lock the run directory, run the
protocol, print the summary. ``main`` is also the ``gift-cl`` console script."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from gift_cl.backbones import BackboneError
from gift_cl.checkpoint import CheckpointError, write_text
from gift_cl.config import ConfigError
from gift_cl.data.base import DataError
from gift_cl.reporting import format_summary
from strategies import DivergenceError

from . import distributed
from .loop import CHECKPOINT, run_protocol
from .rundir import CONFIG_FILE, RunDirError, RunLock, resolve_run_dir
from .validation import validate

log = logging.getLogger("gift_cl")

# errors whose message says everything a user needs: reported as one line, exit status 1
USER_ERRORS = (ConfigError, RunDirError, CheckpointError, DataError, BackboneError, DivergenceError)


def user_error(exc: BaseException):
    """The user error behind ``exc`` (Hydra's ``instantiate`` wraps what a loader raises), or None."""
    while exc is not None:
        if isinstance(exc, USER_ERRORS):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def run(cfg: DictConfig, hydra_dir: Path) -> dict:
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.get("distributed", False):  # under torchrun: rank 0 picks and locks the run directory
        dist = distributed.init_from_env(cfg.device)
        try:
            return _run_ranks(cfg, Path(hydra_dir), dist.is_main)
        finally:
            distributed.shutdown()
    run_dir, resuming = resolve_run_dir(cfg, Path(hydra_dir))
    with RunLock(run_dir):
        ckpt = run_dir / CHECKPOINT
        if not resuming:
            write_text(OmegaConf.to_yaml(cfg, resolve=True), run_dir / CONFIG_FILE)
        elif not ckpt.is_file():
            log.warning("%s has no checkpoint yet: starting it from the beginning", run_dir)
        results = run_protocol(cfg, run_dir, ckpt if resuming and ckpt.is_file() else None)
    print(format_summary(results))
    print(f"run directory: {run_dir}")
    return results


def _run_ranks(cfg: DictConfig, hydra_dir: Path, is_main: bool) -> dict:
    """``run`` on one rank of a distributed run: rank 0 resolves, locks and writes the run directory; every
    rank trains; errors rank 0 meets stop every rank."""
    run_dir, resuming = distributed.on_main(lambda: resolve_run_dir(cfg, hydra_dir))
    lock = RunLock(run_dir) if is_main else contextlib.nullcontext()
    with lock:
        ckpt = run_dir / CHECKPOINT
        if is_main and not resuming:
            write_text(OmegaConf.to_yaml(cfg, resolve=True), run_dir / CONFIG_FILE)
        resume_from = distributed.broadcast_object(ckpt if resuming and ckpt.is_file() else None)
        results = run_protocol(cfg, run_dir, resume_from)
    if is_main:
        print(format_summary(results))
        print(f"run directory: {run_dir}")
    return results
