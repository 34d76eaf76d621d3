"""What ``python run.py`` does: validate the configuration, pick and lock the run directory, run the
protocol, print the summary. ``main`` is also the ``gift-cl`` console script.

Hydra writes into the run directory before a task runs (``.hydra/``, the job log): a command that is then
refused (the directory holds another run, or is in use) would overwrite that run's record. ``main``
therefore defers those writes (:func:`with_deferred_outputs`): the run writes them itself once it owns the
directory (:class:`HydraRecord`), and a refused command touches nothing there.

This module imports torch, Avalanche and the project lazily: ``main`` turns a Ctrl-C into one line from
the first second on, the seconds spent importing included.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.experimental.callback import Callback

log = logging.getLogger("gift_cl")

# the file system refusing a write (read-only, no permission, full): its message names the path
REFUSED_WRITES = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)
INTERRUPTED = 130  # the exit status of a process stopped by SIGINT (128 + 2), as shells report it


def user_errors() -> tuple:
    """Errors whose message says everything a user needs: reported as one line, exit status 1."""
    from gift_cl.errors import library_user_errors
    from gift_cl.strategies import DivergenceError

    from .rundir import RunDirError

    return (*library_user_errors(), RunDirError, DivergenceError)


def user_error(exc: BaseException):
    """The user error behind ``exc`` (Hydra's ``instantiate`` wraps what a loader raises), or None."""
    known = user_errors()
    cause: Optional[BaseException] = exc
    while cause is not None:
        if isinstance(cause, known) or (isinstance(cause, OSError) and cause.errno in REFUSED_WRITES):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C while a run owned ``run_dir``; its checkpoint, written atomically, is consistent."""

    def __init__(self, run_dir: Path, checkpointed: bool):
        super().__init__(str(run_dir))
        self.run_dir, self.checkpointed = run_dir, checkpointed


def interrupted_message(exc: KeyboardInterrupt) -> str:
    if not isinstance(exc, RunInterrupted):
        return "interrupted: stopped before a run directory was in use; nothing was written"
    state = "its last checkpoint is intact" if exc.checkpointed else "no checkpoint yet"
    return f"interrupted: the run in {exc.run_dir} stopped ({state}); resume with resume={exc.run_dir}"


@dataclass
class HydraRecord:
    """What Hydra would have written into the run directory before the task, written by the run itself
    once it owns the directory: ``files`` under ``subdir`` (a new run only), and the job log
    (``log_file``, appended to by every process of the run, resumed ones included)."""

    subdir: Optional[str] = None
    files: dict = field(default_factory=dict)
    log_file: Optional[str] = None

    def write(self, run_dir: Path) -> None:
        from gift_cl.atomic import write_text

        for name, text in self.files.items():
            write_text(text, run_dir / (self.subdir or "") / name)

    @contextlib.contextmanager
    def logging_to(self, run_dir: Path):
        """Every log record also into ``run_dir/log_file`` (Hydra's format) while the block runs."""
        if self.log_file is None:
            yield
            return
        handler = logging.FileHandler(run_dir / self.log_file, delay=True)
        handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield
        except Exception as exc:
            err = user_error(exc)
            if err is not None:  # the run's log says why it stopped; the terminal gets the line once, from main
                handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s: %s",
                                              (type(err).__name__, err), None))
            raise
        finally:
            root.removeHandler(handler)
            handler.close()


def recorded_overrides(overrides) -> list:
    """The command line to record as the run's own: ``resume=`` says how it was started, not what it is."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") != "resume"]


def progress_bars(value) -> bool:
    """Whether the run draws tqdm bars (``progress``): ``auto`` (the default) when stderr is a terminal,
    ``true`` / ``false`` to force it. Bars redraw with carriage returns, which a file or a pipe keeps as
    kilobytes of half-drawn lines; without them the run logs one line per epoch and evaluated experience."""
    if value == "auto":
        return sys.stderr.isatty()
    if isinstance(value, bool):
        return value
    from gift_cl.config import ConfigError

    raise ConfigError(f"progress={value!r}: must be one of auto, true, false")


def run(cfg, hydra_dir: Path, overrides: tuple = (), record: Optional[HydraRecord] = None) -> dict:
    """Validate, choose and lock the run directory, run the protocol. ``overrides`` (the command line) are
    recorded as the run's own ``overrides.yaml``; ``record`` is what Hydra deferred (``main``)."""
    cfg.progress = progress_bars(cfg.progress)  # what this process does: saved so, a resume may change it
    import torch

    from gift_cl.strategies.evaluation import logger_options

    from . import distributed
    from .validation import validate

    validate(cfg, command_line=True)  # composed from the command line: the user's own _target_s are theirs to run
    logger_options(cfg.logger)  # each logger's options (logger.wandb.mode, ...), before anything is written
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    # under torchrun (distributed=true) every rank trains; rank 0 alone picks, locks and writes the run dir
    ctx = distributed.init_from_env(cfg.device) if cfg.get("distributed", False) else None
    try:
        return _run(cfg, Path(hydra_dir), overrides, is_main=ctx is None or ctx.is_main,
                    record=record or HydraRecord())
    finally:
        if ctx is not None:
            distributed.shutdown()


def _run(cfg, hydra_dir: Path, overrides: tuple, is_main: bool, record: HydraRecord) -> dict:
    from gift_cl.reporting import format_summary

    from . import distributed
    from .rundir import RunDirError, RunLock, holds_a_run, resolve_run_dir
    from .runfiles import CHECKPOINT

    run_dir, resuming = distributed.on_main(lambda: resolve_run_dir(cfg, hydra_dir))  # errors reach every rank
    with RunLock(run_dir) if is_main else contextlib.nullcontext():
        if is_main and not resuming and holds_a_run(run_dir):  # taken between the choice and the lock
            raise RunDirError(f"{run_dir}: a run started there meanwhile; continue it with resume={run_dir}")
        try:
            with record.logging_to(run_dir) if is_main else contextlib.nullcontext():
                results = _run_locked(cfg, run_dir, resuming, overrides, is_main, record)
        except KeyboardInterrupt:
            raise RunInterrupted(run_dir, (run_dir / CHECKPOINT).is_file()) from None
        except Exception:
            if is_main and not resuming:  # this process owns the directory (locked) and started the run
                discard_unstarted(run_dir)
            raise
    if is_main:
        print(format_summary(results))
        print(f"run directory: {run_dir}")
    return results


def discard_unstarted(run_dir: Path) -> None:
    """A new run that failed before it trained or logged anything (data that cannot be built, a model that
    cannot be made) leaves no half-made run behind: when ``run_dir`` holds only what the start wrote (the
    configuration, the command line, Hydra's record, the log, the lock), those files go; the error was
    printed. Anything more (a checkpoint, results, logs) and the directory stays as it is."""
    import shutil

    from .runfiles import CONFIG_FILE, START_UP_DEBRIS

    try:
        entries = list(run_dir.iterdir())  # the lock too: unlinked while held, released on its open descriptor
        if not entries or not all(p.name in START_UP_DEBRIS | {CONFIG_FILE} for p in entries):
            return
        for p in entries:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    except OSError:  # what could not go stays: the error being reported matters more
        pass


def _run_locked(cfg, run_dir: Path, resuming: bool, overrides: tuple, is_main: bool, record: HydraRecord) -> dict:
    from omegaconf import OmegaConf

    from gift_cl.atomic import write_text

    from . import distributed
    from .loop import run_protocol
    from .runfiles import CHECKPOINT, CONFIG_FILE, OVERRIDES_FILE

    ckpt = run_dir / CHECKPOINT
    if is_main and not resuming:  # the configuration last: once it is there, the run has started
        record.write(run_dir)
        write_text(OmegaConf.to_yaml(recorded_overrides(overrides)), run_dir / OVERRIDES_FILE)
        write_text(OmegaConf.to_yaml(cfg, resolve=True), run_dir / CONFIG_FILE)
    elif is_main and not ckpt.is_file():
        log.warning("%s has no checkpoint yet: starting it from the beginning", run_dir)
    resume_from = distributed.broadcast_object(ckpt if resuming and ckpt.is_file() else None)
    return run_protocol(cfg, run_dir, resume_from)


def config_dir() -> str:
    """The configs shipped with the package (``gift_cl/configs``: the repository's ``configs/`` in a checkout),
    found without importing ``gift_cl`` (which imports torch): Hydra's own errors come in a second."""
    import importlib.util

    spec = importlib.util.find_spec("gift_cl")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the gift_cl package is not installed (pip install -e .)")
    return str(Path(spec.submodule_search_locations[0]).resolve() / "configs")


RESOLVER_NAMES = ("asset", "backbone_data", "strategy_name")  # gift_cl.config.RESOLVERS' names (a test keeps them equal)


def defer_resolvers() -> None:
    """Stand-ins for the project's resolvers (:func:`gift_cl.config.register_resolvers`, the one place they are
    defined and registered) that, at their first use, register the real ones and answer through them: composing
    the configuration, and reporting a mistyped key, needs neither torch nor timm (importing ``gift_cl`` does)."""
    import inspect

    from omegaconf import OmegaConf

    def stand_in(name: str):
        def resolve(*args, _parent_):
            from gift_cl.config import RESOLVERS, register_resolvers

            register_resolvers()  # replaces the stand-ins: later interpolations go straight to the real ones
            resolver = RESOLVERS[name]
            if "_parent_" in inspect.signature(resolver).parameters:
                return resolver(*args, _parent_=_parent_)
            return resolver(*args)

        return resolve

    for name in RESOLVER_NAMES:
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, stand_in(name), use_cache=False)


# ---------------------------------------------------------------------- Hydra's writes, deferred
CALLBACK = "gift_cl_outputs"  # hydra.callbacks.<CALLBACK>: also how the task knows what main() deferred
CREATED: list = []  # the output folders DeferredOutputs created (the top one of each path)


def remove_unstarted(output_dir: Path) -> None:
    """A command refused before its run started (a configuration error, a run directory it may not use)
    leaves nothing behind: ``output_dir`` if this process created it and it is still empty, and the empty
    folders above it that it created with it (``outputs/<strategy>/<benchmark>/``). A folder that was there
    before, or that holds anything, stays."""
    output_dir = Path(output_dir).absolute()
    top = next((c for c in CREATED if c == output_dir or c in output_dir.parents), None)
    if top is None:
        return
    path = output_dir
    while True:
        try:
            path.rmdir()  # only an empty folder
        except OSError:
            return
        if path == top:
            return
        path = path.parent


class DeferredOutputs(Callback):
    """A Hydra callback: creates the output directory before Hydra does, so that one that cannot be
    created (read-only, no permission) is one error line rather than Hydra's traceback. ``record`` and
    ``log`` say which of Hydra's writes ``main`` deferred to the run (:class:`HydraRecord`)."""

    def __init__(self, record: Optional[str] = None, log: bool = False):
        self.record, self.log = record, log

    @staticmethod
    def _create(path: str) -> None:
        new = [p for p in (Path(path), *Path(path).parents) if not p.exists()]
        if new:
            CREATED.append(new[-1].absolute())  # the top folder this process creates
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            print(f"error: {type(err).__name__}: cannot create the output directory {path}: "
                  f"{err.strerror or err}; choose another hydra.run.dir (or hydra.sweep.dir)", file=sys.stderr)
            sys.exit(1)

    def on_run_start(self, config, **kwargs) -> None:
        self._create(config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._create(config.hydra.sweep.dir)


def with_deferred_outputs(args: list) -> list:
    """``args`` (the command line) plus the Hydra overrides that defer its writes into the run directory:
    ``.hydra/`` (``hydra.output_subdir=null``) and the job log file (Hydra's default job logging without
    its file handler). What the user sets about either is left to Hydra, as before."""
    keys = [a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a]
    if any(k.startswith(f"hydra.callbacks.{CALLBACK}") for k in keys):
        return args
    extra = [f"+hydra.callbacks.{CALLBACK}._target_={__name__}.DeferredOutputs"]
    if "hydra.output_subdir" not in keys:
        extra += ["hydra.output_subdir=null", f"+hydra.callbacks.{CALLBACK}.record=.hydra"]
    if not any(k.startswith(("hydra.job_logging", "hydra/job_logging")) for k in keys):
        extra += ["~hydra.job_logging.handlers.file", "hydra.job_logging.root.handlers=[console]",
                  f"+hydra.callbacks.{CALLBACK}.log=true"]
    # beside the user's overrides: Hydra's parser takes one run of positional overrides, so an override placed
    # after a flag (``run.py strategy=lora --cfg job``) would be refused as an unrecognised argument
    first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), None)
    if first is None:
        return [*extra, *args]
    return [*args[:first + 1], *extra, *args[first + 1:]]


def hydra_record(cfg) -> HydraRecord:
    """What ``main`` deferred of Hydra's writes for this job (nothing when it ran without ``main``)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hydra_cfg = HydraConfig.get()
    deferred = hydra_cfg.callbacks.get(CALLBACK) or {}
    record = HydraRecord(log_file=f"{hydra_cfg.job.name}.log" if deferred.get("log") else None)
    if deferred.get("record"):  # Hydra's own three files, as run_job writes them
        record.subdir = deferred.get("record")
        record.files = {"config.yaml": OmegaConf.to_yaml(cfg),
                        "hydra.yaml": OmegaConf.to_yaml(HydraConfig.instance().cfg),
                        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task)}
    return record


def _hydra_main() -> None:
    import hydra
    from hydra.core.hydra_config import HydraConfig

    defer_resolvers()

    @hydra.main(version_base="1.3", config_path=config_dir(), config_name="config")
    def _main(cfg) -> float:
        hydra_cfg = HydraConfig.get()
        try:  # a single run (-m: hydra_plugins/gift_cl_sweep runs the grid through gift_cl.orchestration.sweep)
            results = run(cfg, Path(hydra_cfg.runtime.output_dir), tuple(hydra_cfg.overrides.task),
                          record=hydra_record(cfg))
        except Exception as exc:
            err = user_error(exc)
            if err is None:
                raise
            print(f"error: {type(err).__name__}: {err}", file=sys.stderr)  # once (the run's log has it too)
            remove_unstarted(Path(hydra_cfg.runtime.output_dir))
            sys.exit(1)
        return results["average_accuracy"]  # the value a sweeper optimises

    _main()


# ``gift-cl <tool> ...``: the project's other commands, each also ``python -m <module>`` (in a checkout
# ``python -m orchestration.sweep`` and ``python analysis/compare.py`` as well)
TOOLS = {
    "sweep": "gift_cl.orchestration.sweep",  # run a sweep plan (resumable)
    "export": "gift_cl.orchestration.export",  # a run's model as a shareable directory
    "compare": "gift_cl.analysis.compare",  # choose on validation, report test runs with paired differences
    "summarize": "gift_cl.analysis.summarize",  # mean ± std over seeds of a folder of runs
    "cluster-maps": "gift_cl.analysis.cluster_maps",  # PaCa cluster maps of a run
    "concept-reuse": "gift_cl.analysis.concept_reuse",  # concept reuse across a run's tasks
    "mask-scores": "gift_cl.analysis.mask_scores",  # cluster maps scored against object masks, with nulls
    "reuse-tests": "gift_cl.analysis.reuse_tests",  # concept reuse against a null, task similarity and ablation
    "part-vocabulary": "gift_cl.analysis.part_vocabulary",  # matched concepts vs shared object parts
}


def run_tool(name: str, args: list[str]) -> int:
    """``gift-cl <name> <args>``: the tool's ``main`` with ``args`` as its command line; its exit status."""
    import importlib

    sys.argv = [f"gift-cl {name}", *args]
    status = importlib.import_module(TOOLS[name]).main()
    return status if isinstance(status, int) else 0


def main() -> None:
    """The ``gift-cl`` console script: ``gift-cl strategy=gift_multitask benchmark=vdd ...`` = ``python run.py ...``.
    Ctrl-C ends it with one line and exit status 130 (a run's checkpoint is consistent: resume it).
    ``gift-cl <tool> ...`` runs one of :data:`TOOLS` (``gift-cl export <run dir>``, ``gift-cl sweep PLAN --out
    DIR``, ``gift-cl compare SWEEP_DIR``, ...)."""
    if sys.argv[1:2] and sys.argv[1] in TOOLS:
        sys.exit(run_tool(sys.argv[1], sys.argv[2:]))
    sys.argv[1:] = with_deferred_outputs(sys.argv[1:])
    try:
        _hydra_main()
    except KeyboardInterrupt as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C does not cut the message short
        print(interrupted_message(exc), file=sys.stderr)
        sys.exit(INTERRUPTED)
