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
from .rundir import CONFIG_FILE, OVERRIDES_FILE, RunDirError, RunLock, resolve_run_dir
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


def run(cfg: DictConfig, hydra_dir: Path, overrides: tuple = ()) -> dict:
    """Validate, choose and lock the run directory, run the protocol. ``overrides`` (the command line) are
    recorded as the run's own ``overrides.yaml`` (Hydra's ``.hydra/`` may be rewritten by a later command
    that is refused)."""
    validate(cfg)
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    # under torchrun (distributed=true) every rank trains; rank 0 alone picks, locks and writes the run dir
    ctx = distributed.init_from_env(cfg.device) if cfg.get("distributed", False) else None
    try:
        return _run(cfg, Path(hydra_dir), overrides, is_main=ctx is None or ctx.is_main)
    finally:
        if ctx is not None:
            distributed.shutdown()


def _run(cfg: DictConfig, hydra_dir: Path, overrides: tuple, is_main: bool) -> dict:
    run_dir, resuming = distributed.on_main(lambda: resolve_run_dir(cfg, hydra_dir))  # errors reach every rank
    with RunLock(run_dir) if is_main else contextlib.nullcontext():
        ckpt = run_dir / CHECKPOINT
        if is_main and not resuming:
            write_text(OmegaConf.to_yaml(cfg, resolve=True), run_dir / CONFIG_FILE)
            write_text(OmegaConf.to_yaml(list(overrides)), run_dir / OVERRIDES_FILE)
        elif is_main and not ckpt.is_file():
            log.warning("%s has no checkpoint yet: starting it from the beginning", run_dir)
        resume_from = distributed.broadcast_object(ckpt if resuming and ckpt.is_file() else None)
        results = run_protocol(cfg, run_dir, resume_from)
    if is_main:
        print(format_summary(results))
        print(f"run directory: {run_dir}")
    return results


def config_dir() -> str:
    """The configs shipped with the package (``gift_cl/configs``: the repository's ``configs/`` in a checkout)."""
    import gift_cl

    return str(Path(gift_cl.__file__).resolve().parent / "configs")


def main() -> None:
    """The ``gift-cl`` console script: ``gift-cl strategy=gift_multitask benchmark=vdd ...`` = ``python run.py ...``."""
    import sys

    import hydra
    from hydra.core.hydra_config import HydraConfig

    import gift_cl.config  # noqa: F401  (resolvers)

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
    def _main(cfg: DictConfig) -> float:
        try:
            hydra_cfg = HydraConfig.get()
            results = run(cfg, Path(hydra_cfg.runtime.output_dir), tuple(hydra_cfg.overrides.task))
        except Exception as exc:
            err = user_error(exc)
            if err is None:
                raise
            log.error("%s: %s", type(err).__name__, err)
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
            sys.exit(1)
        return results["average_accuracy"]  # the value a sweeper optimises

    _main()
