"""Avalanche's evaluation plugin as our runs use it: accuracy and loss per epoch and experience (plus
stream accuracy, forgetting and BWT over a stream), logged as CSV (and TensorBoard / W&B) files that a
resumed run continues exactly.

What a resume needs beyond the model is here: :func:`evaluation_state` is what the run checkpoint holds
of the evaluation (the strategy's clock, which is every logger's step axis; the forgetting and BWT metrics'
first accuracies per experience; every number logged so far; each logger's own position), all tensors and
plain containers, and :func:`restore_evaluation` puts it back before anything is logged. The loggers open
their files lazily, at the first value they log (or when a checkpoint asks for their state), so that a
resume decides what of the files it finds is kept:

- CSV: the files are cut back to their size at the checkpoint (rows logged after it, by the killed
  process, are logged again by the resumed one);
- TensorBoard: one event file, rewritten from the checkpoint's record of logged values and from
  ``steps.csv`` (every update's loss and learning rate, cut back to its size at the checkpoint), then
  continued;
- W&B (offline by default): the run id is stored in the log directory and the run resumed with it; the
  killed process's offline data is usually lost (wandb buffers), so the resumed process's offline run logs
  the whole series again from the checkpoint's record (and its own ``steps.csv``, cut back as TensorBoard's
  is) before it continues.

TensorBoard and W&B also carry the run's configuration (hparams; the W&B run config) and, when the run
ends, its final numbers (``final/*``), read from the run's own ``config_resolved.yaml`` and ``results.json``
(:class:`RunFiles`).
"""
from __future__ import annotations

import json
import numbers
import os
import secrets
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, TextIO, cast

from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metrics.forgetting_bwt import GenericExperienceForgetting
from avalanche.logging import BaseLogger, CSVLogger

from gift_cl.atomic import write_text
from gift_cl.checkpoint import CheckpointError
from gift_cl.config import ConfigError

# Clock counters that a resume restores (train_exp_epochs comes with the training state of an experience).
CLOCK_FIELDS = ("train_iterations", "train_exp_counter", "total_iterations")


# ----------------------------------------------------------------------------- CSV
class ResumableCSVLogger(CSVLogger):
    """Avalanche's CSV logger (same files, same rows) that opens its files at the first row it writes.

    A fresh run starts both files with their header; a resumed run (:meth:`resume`) first cuts each file
    back to its size at the checkpoint, so the rows a killed process wrote after its last checkpoint are
    not kept twice. Avalanche's own logger truncates the files when created, which would lose the rows of
    a run killed again between start-up and its first row."""

    kind = "csv"
    HEADERS = {"training_results.csv": "training_exp,epoch,training_accuracy,val_accuracy,training_loss,val_loss",
               "eval_results.csv": "eval_exp,training_exp,eval_accuracy,eval_loss,forgetting"}

    def __init__(self, log_folder: str):
        BaseLogger.__init__(self)  # not CSVLogger.__init__: it opens (truncates) the files at once
        self.log_folder = log_folder
        self.training_exp_id = None
        self.in_train_phase = None
        self.val_acc, self.val_loss = 0, 0
        self._files: dict = {}
        # bytes of each file to keep when it is opened: {} = none (a fresh start), None = all of it (a
        # checkpoint from before this state existed: the old rows are appended to, as then)
        self._keep: Optional[dict] = {}

    @property
    def training_file(self):
        return self._file("training_results.csv")

    @property
    def eval_file(self):
        return self._file("eval_results.csv")

    def _file(self, name: str):
        if name not in self._files:
            path = os.path.join(self.log_folder, name)
            try:
                os.makedirs(self.log_folder, exist_ok=True)
                keep = None if self._keep is None else self._keep.get(name, 0)
                if keep is not None and os.path.isfile(path) and os.path.getsize(path) >= keep:
                    os.truncate(path, keep)
                if self._keep is not None:
                    self._keep[name] = None  # cut back once: reopened (after close) it is appended to
                f = open(path, "a")
                if f.tell() == 0:
                    print(self.HEADERS[name], file=f, flush=True)
            except OSError as err:
                raise CheckpointError(f"cannot write {path}: {err.strerror or err}") from err
            self._files[name] = f
        return self._files[name]

    def resume(self, state: Optional[dict], history: Optional[dict]) -> None:
        self._keep = None if history is None else dict(state or {})

    def log_state(self) -> dict:
        """The size of each file now: what a resume from the checkpoint being written keeps."""
        return {name: self._file(name).tell() for name in self.HEADERS}

    def close(self) -> None:
        for name in self.HEADERS:  # opened, if not yet: a resumed run that logs nothing more is cut back too
            self._file(name).close()
        self._files = {}


def csv_logger(log_dir: Path, run: "RunFiles"):
    return ResumableCSVLogger(str(log_dir))


# ----------------------------------------------------------------------------- the run behind a log
# the run-level numbers of results.json that TensorBoard and W&B report when a run ends (null ones are left out)
FINAL_METRICS = ("average_accuracy", "forgetting", "bwt", "task_id_accuracy", "average_accuracy_inferred_task")
EXPERIENCE_ACCURACY = "Top1_Acc_Exp/eval_phase/test_stream/"


def _hparam_values(node, prefix: str = "") -> dict:
    """A nested configuration as ``{"optim.lr": 0.01, ...}``: numbers and strings as they are, booleans as
    ``true``/``false`` (TensorBoard would show them as 1.0/0.0), anything else (lists, null) as JSON."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_hparam_values(value, f"{prefix}{key}."))
        return out
    if isinstance(node, bool):
        value = "true" if node else "false"
    elif isinstance(node, (int, float, str)):
        value = node
    else:
        value = json.dumps(node)
    return {prefix[:-1]: value}


@dataclass(frozen=True)
class RunFiles:
    """The run a logger writes for, as its directory records it (docs/guide/runs.md "Run directory"): the configuration
    (``config_resolved.yaml``, saved when the run starts) and the results (``results.json``, ``finished`` at
    the end). TensorBoard's hparams and W&B's run config and summary are read from these files, so they say
    what the run's own record says, resumed runs included. ``name`` is the run's name in W&B; ``task`` the
    task of the independent protocol whose own log directory (``logs/<task>/``) the logger writes."""

    run_dir: Path
    name: str = "gift_cl"
    task: Optional[str] = None

    def config(self) -> Optional[dict]:
        """The saved configuration as plain containers, or None for a run started without one (a test
        driving the run loop directly). Not resolved: the file holds resolved values, and nothing in it is
        called."""
        from omegaconf import OmegaConf

        path = self.run_dir / "config_resolved.yaml"
        if not path.is_file():
            return None
        return cast(dict, OmegaConf.to_container(OmegaConf.load(path), resolve=False))  # a saved config: a mapping

    def hparams(self) -> dict:
        """The configuration flattened for TensorBoard's HParams tab, plus the task of a per-task log."""
        values = _hparam_values(self.config() or {})
        if self.task is not None:
            values["task"] = self.task
        return values

    def summary(self, logged: dict) -> dict:
        """The final numbers as ``final/<name>``, or {} before there are any. A run-level log: the run's
        (``results.json`` once finished: average accuracy, forgetting, BWT, task-id accuracy, each task's
        accuracy). One task's log in the independent protocol: its accuracy as the logger logged it
        (``logged``: the latest value of each metric; the run writes its results after closing the task's
        logs)."""
        if self.task is not None:
            accuracy = [v for k, v in logged.items() if k.startswith(EXPERIENCE_ACCURACY)]
            return {"final/accuracy": accuracy[-1]} if accuracy else {}
        from gift_cl.reporting import read_json

        try:
            results = read_json(self.run_dir / "results.json")
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot read {self.run_dir / 'results.json'}: {err}") from err
        if not results or not results.get("finished"):
            return {}
        out = {f"final/{k}": float(results[k]) for k in FINAL_METRICS if results.get(k) is not None}
        out.update({f"final/accuracy/{t}": float(a) for t, a in results["final_accuracy"].items()})
        return out


# ----------------------------------------------------------------------------- replaying logged values
def _plain(value):
    """``value`` if it is a number or a dict of numbers (what a checkpoint can hold), else None."""
    if isinstance(value, numbers.Real):
        return value if isinstance(value, (int, float)) else float(value)
    if isinstance(value, dict):
        plain = {k: _plain(v) for k, v in value.items() if isinstance(k, (str, int))}
        return plain if plain and None not in plain.values() else None
    return None


def logged_history(evaluator) -> dict:
    """``{metric name: [steps, values]}``: every number the evaluator has published, in order."""
    history = {}
    for name, (xs, values) in evaluator.get_all_metrics().items():
        kept = [(int(x), v) for x, v in zip(xs, map(_plain, values)) if v is not None]
        if kept:
            history[name] = [[x for x, _ in kept], [v for _, v in kept]]
    return history


def replay(logger: BaseLogger, history: dict) -> None:
    """Log ``history`` again through ``logger``, ordered by step (a logged series never steps back)."""
    values = sorted(((x, name, v) for name, (xs, vs) in history.items() for x, v in zip(xs, vs)),
                    key=lambda item: item[0])
    logger.log_metrics([MetricValue(None, name, v, x) for x, name, v in values])


# ----------------------------------------------------------------------------- TensorBoard
STEPS_FILE = "steps.csv"  # beside the event file: step,loss,lr of every update


class StepsFile:
    """A logger's ``steps.csv`` (``step,loss,lr`` of every update): per-update values are too many to travel
    in every checkpoint, so the file holds them and a resume cuts it back to its size at the checkpoint
    (``keep``, from :meth:`size` in the checkpoint's log state; None keeps it whole) and replays its rows."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.keep: Optional[int] = 0
        self.file: Optional[TextIO] = None

    def open(self) -> list[tuple[int, float, float]]:
        """Cut back, opened for appending; returns the rows kept."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.keep is not None and self.path.is_file() and self.path.stat().st_size >= self.keep:
                os.truncate(self.path, self.keep)
            lines = self.path.read_text().splitlines()[1:] if self.path.is_file() else []
            self.file = open(self.path, "a")
            if self.file.tell() == 0:
                print("step,loss,lr", file=self.file, flush=True)
        except OSError as err:
            raise CheckpointError(f"cannot write {self.path}: {err.strerror or err}") from err
        rows = []
        for i, line in enumerate(lines, start=2):
            try:
                step, loss, lr = line.split(",")
                rows.append((int(step), float(loss), float(lr)))
            except ValueError:
                raise CheckpointError(f"{self.path}, line {i}: expected step,loss,lr, found {line!r}") from None
        return rows

    def write(self, step: int, loss: float, lr: float) -> None:
        assert self.file is not None, "open() before write()"
        self.file.write(f"{step},{loss!r},{lr!r}\n")

    def size(self) -> int:
        """The bytes written so far (flushed): what a resume from a checkpoint taken now keeps."""
        if self.file is not None:
            self.file.flush()
            return self.file.tell()
        if self.keep is not None:
            return self.keep
        return self.path.stat().st_size if self.path.is_file() else 0

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def tensorboard_logger(log_dir: Path, run: RunFiles):
    from avalanche.logging import TensorboardLogger
    from torch.utils.tensorboard import SummaryWriter

    class ResumableTensorboardLogger(TensorboardLogger):
        """Avalanche's TensorBoard logger with one event file per run directory, and what Avalanche leaves
        out: the training loss and learning rate of every update (``train/loss``, ``train/lr``, at the
        update's number, the step axis of Avalanche's own scalars) and, when the logs close at the end of
        the run (of the task, in the independent protocol), the run's configuration as hparams for the
        HParams tab, with the final numbers as ``final/*`` scalars (:meth:`RunFiles.summary`).

        The writer opens at the first value logged. A resumed run writes the values logged up to its
        checkpoint again (from the checkpoint), then removes the other event files: what they held
        after the checkpoint the resumed run logs again, and TensorBoard would otherwise show both
        (and order files of the same second by process id). A fresh start removes them as well.
        Per-update values are too many to travel in every checkpoint: they are also written to
        ``steps.csv`` beside the event file, which a resume cuts back to its size at the checkpoint (as
        the CSV logs are cut) and writes again from."""

        kind = "tensorboard"

        def __init__(self, tb_log_dir: Path):
            BaseLogger.__init__(self)  # not TensorboardLogger.__init__: it opens a writer at once
            self.log_dir = Path(tb_log_dir)
            self._writer: Optional[SummaryWriter] = None
            self._history: Optional[dict] = {}  # to write again when opened; None: keep the old files
            self._steps: Optional[TextIO] = None  # steps.csv, open for appending
            self._steps_keep: Optional[int] = 0  # its bytes to keep when opened; None: all of it
            self._lr = 0.0
            self._step = 0  # the last step logged: where the final numbers go
            self._latest: dict = {}  # the latest value of each metric logged
            self._closed = self._summarized = False

        @property
        def writer(self) -> SummaryWriter:
            if self._writer is None:
                self._open()
            return self._opened()[0]

        def _opened(self) -> tuple[SummaryWriter, TextIO]:
            """The writer and steps.csv, once :meth:`_open` has opened them (at the first value logged)."""
            assert self._writer is not None and self._steps is not None, "opened at the first value logged"
            return self._writer, self._steps

        def _open(self) -> None:
            path = self.log_dir / STEPS_FILE
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                stale = list(self.log_dir.glob("events.out.tfevents.*")) if self._history is not None else []
                keep = self._steps_keep
                if keep is not None and path.is_file() and path.stat().st_size >= keep:
                    os.truncate(path, keep)
                rows = path.read_text().splitlines()[1:] if path.is_file() else []
                steps = self._steps = open(path, "a")
                if steps.tell() == 0:
                    print("step,loss,lr", file=steps, flush=True)
                writer = self._writer = SummaryWriter(str(self.log_dir))
            except OSError as err:
                raise CheckpointError(f"cannot write {self.log_dir}: {err.strerror or err}") from err
            weakref.finalize(self, SummaryWriter.close, writer)
            if self._history:
                replay(self, self._history)
            for i, row in enumerate(rows, start=2):  # the updates logged up to the checkpoint
                try:
                    step, loss, lr = row.split(",")
                    self._write_update(int(step), float(loss), float(lr))
                except ValueError:
                    raise CheckpointError(f"{path}, line {i}: expected step,loss,lr, found {row!r}") from None
            writer.flush()  # the values up to the checkpoint are on disk before the old files go
            for stale_file in stale:
                stale_file.unlink(missing_ok=True)

        def _write_update(self, step: int, loss: float, lr: float) -> None:
            writer = self._opened()[0]
            writer.add_scalar("train/loss", loss, global_step=step)
            writer.add_scalar("train/lr", lr, global_step=step)
            self._step = max(self._step, step)

        def log_single_metric(self, name, value, x_plot):
            self._step = max(self._step, int(x_plot))
            if isinstance(value, (int, float)):
                self._latest[name] = value
            super().log_single_metric(name, value, x_plot)

        def before_training_iteration(self, strategy, metric_values, **kwargs):
            self._lr = float(strategy.optimizer.param_groups[-1]["lr"])  # the rate this update uses

        def after_training_iteration(self, strategy, metric_values, **kwargs):
            _ = self.writer  # opened at the first update
            step, loss = strategy.clock.train_iterations + 1, float(strategy.loss.detach())  # the clock counts it after us
            self._write_update(step, loss, self._lr)
            self._opened()[1].write(f"{step},{loss!r},{self._lr!r}\n")

        def _write_summary(self) -> None:
            from torch.utils.tensorboard.summary import hparams

            metrics = run.summary(self._latest)
            if not metrics:
                return
            writer = self._opened()[0]
            file_writer = writer._get_file_writer()
            for summary in hparams(run.hparams(), metrics):  # experiment, session start, session end
                file_writer.add_summary(summary)
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, global_step=self._step)
            self._summarized = True

        def resume(self, state: Optional[dict], history: Optional[dict]) -> None:
            self._history = history
            self._steps_keep = None if history is None else (state or {}).get(STEPS_FILE, 0)

        def log_state(self) -> dict:
            self.writer.flush()  # what the checkpoint has logged is in the files, should the process die
            steps = self._opened()[1]
            steps.flush()
            return {STEPS_FILE: steps.tell()}

        def close(self) -> None:
            _ = self.writer  # opened, if not yet: a resumed run that logs nothing more writes its record
            if self._closed:
                return
            if not self._summarized:
                self._write_summary()
            writer, steps = self._opened()
            writer.close()
            steps.close()
            self._closed = True

    return ResumableTensorboardLogger(Path(log_dir) / "tensorboard")


# ----------------------------------------------------------------------------- W&B
WANDB_ID_FILE = "gift_cl-run-id"
WANDB_MODES = ("offline", "online", "disabled")


def wandb_run_id(wandb_dir: Path) -> str:
    """The W&B run id of a log directory: stored there when first chosen, so every process of the run (a
    resumed one, a moved directory) logs to the same W&B run. A directory written before the id was
    stored keeps the id of its offline runs (``offline-run-<time>-<id>``)."""
    path = wandb_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    earlier = sorted(wandb_dir.glob("offline-run-*-*"))
    run_id = earlier[-1].name.rsplit("-", 1)[-1] if earlier else secrets.token_hex(8)
    write_text(run_id + "\n", path)
    return run_id


def check_wandb_options(project="gift_cl", entity=None, group=None, mode="offline") -> dict:
    """``logger.wandb`` (configs/logger/wandb.yaml) checked: a ``ConfigError`` naming the key otherwise."""
    if mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb.mode={mode!r}: must be one of {', '.join(WANDB_MODES)}")
    if not isinstance(project, str) or not project.strip():
        raise ConfigError(f"logger.wandb.project={project!r}: must be a non-empty name")
    for key, value in (("entity", entity), ("group", group)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"logger.wandb.{key}={value!r}: must be a name or null")
    return {"project": project, "entity": entity, "group": group, "mode": mode}


def wandb_logger(log_dir: Path, run: RunFiles, **options):
    """Weights & Biases with ``logger.wandb.{project,entity,group,mode}``; ``mode: offline`` (the default)
    sends nothing anywhere: ``wandb sync <run>/logs/wandb/offline-run-*`` uploads later."""
    from avalanche.logging import WandBLogger

    options = check_wandb_options(**options)

    class ResumableWandBLogger(WandBLogger):
        """Avalanche 0.6's logger calls ``wandb.util.generate_id`` and ``wandb.viz.CustomChart``, both gone
        from wandb 0.31 (tests/test_loggers.py): we pass the run id and log scalars and figures ourselves.

        The run starts at the first value logged, resumed (``resume="allow"``) under the id stored in the
        log directory, with the run's saved configuration as its W&B config; a resumed process logs the
        checkpoint's record of earlier values first, so its offline run holds the whole series of
        Avalanche's values. Every update's loss and learning rate (``train/loss``, ``train/lr``) are logged
        at the update's number, and kept in ``wandb/steps.csv`` (:class:`StepsFile`) for a resume to log
        again. When the
        logs close at the end of the run (of the task, in the independent protocol) the final numbers go
        to the run's summary as ``final/*`` (:meth:`RunFiles.summary`). Avalanche's extra
        ``TrainingExperience`` series is not logged (the experience is in every metric's name, and it could
        not be replayed)."""

        kind = "wandb"

        def before_run(self):  # Avalanche starts the W&B run in __init__; we start it at the first value
            self._run = None
            self._history: Optional[dict] = {}
            self._latest: dict = {}
            self._steps = StepsFile(Path(self.dir) / "wandb" / STEPS_FILE)
            self._lr = 0.0

        def _start(self) -> None:
            wandb_dir = Path(self.dir) / "wandb"
            try:
                wandb_dir.mkdir(parents=True, exist_ok=True)
                self.init_kwargs.update(id=wandb_run_id(wandb_dir), resume="allow", config=run.config(),
                                        entity=options["entity"], group=options["group"], mode=options["mode"])
            except OSError as err:
                raise CheckpointError(f"cannot write {wandb_dir}: {err.strerror or err}") from err
            self._run = self.wandb.init(**self.init_kwargs)
            history, self._history = dict(self._history or {}), {}  # replayed once
            rows = self._steps.open()  # the updates logged up to the checkpoint, replayed with the rest
            if rows:
                steps = [step for step, _, _ in rows]
                history["train/loss"] = [steps, [loss for _, loss, _ in rows]]
                history["train/lr"] = [steps, [lr for _, _, lr in rows]]
            if history:
                replay(self, history)

        def log_single_metric(self, name, value, x_plot):
            from matplotlib.figure import Figure

            if self._run is None:
                self._start()
            self.step = x_plot
            if isinstance(value, (float, int)) and not isinstance(value, bool):
                self._latest[name] = value
                self.wandb.log({name: value}, step=self.step)
            elif isinstance(value, Figure):
                self.wandb.log({name: self.wandb.Image(value)}, step=self.step)

        def after_training_exp(self, strategy, metric_values, **kwargs):
            pass  # the evaluator has logged these values already (Avalanche's logger logs them twice)

        def before_training_iteration(self, strategy, metric_values, **kwargs):
            self._lr = float(strategy.optimizer.param_groups[-1]["lr"])  # the rate this update uses

        def after_training_iteration(self, strategy, metric_values, **kwargs):
            if self._run is None:
                self._start()
            self.step = strategy.clock.train_iterations + 1  # as in TensorBoard: the clock counts it after us
            loss = float(strategy.loss.detach())
            self.wandb.log({"train/loss": loss, "train/lr": self._lr}, step=self.step)
            self._steps.write(self.step, loss, self._lr)

        def resume(self, state: Optional[dict], history: Optional[dict]) -> None:
            self._history = history
            self._steps.keep = None if history is None else (state or {}).get(STEPS_FILE, 0)

        def log_state(self) -> dict:
            return {STEPS_FILE: self._steps.size()}

        def close(self) -> None:
            if self._run is None and self._history:  # resumed, nothing logged since: the record still counts
                self._start()
            if self._run is not None:
                summary = run.summary(self._latest)
                if summary:
                    self._run.summary.update(summary)
                self._run.finish()
                self._run = None
            self._steps.close()

    os.environ.setdefault("WANDB_SILENT", "true")
    return ResumableWandBLogger(project_name=options["project"], run_name=run.name, dir=str(log_dir),
                                save_code=False)


# The names the ``logger`` option takes (configs/logger/*.yaml), each a function (log_dir, RunFiles, **options)
# -> logger; ``OPTIONS`` checks a logger's options (``logger.<name>.*``) before it is made.
LOGGERS = {"csv": csv_logger, "tensorboard": tensorboard_logger, "wandb": wandb_logger}
OPTIONS: dict[str, Callable[..., dict]] = {"csv": lambda: {}, "tensorboard": lambda: {}, "wandb": check_wandb_options}


def logger_options(loggers) -> dict[str, dict]:
    """``{name: options}`` from the ``logger`` config, a mapping (``logger: {csv: {}, wandb: {project:
    ...}}``) or a list of names (the form of configurations saved before loggers had options), checked:
    a ``ConfigError`` naming the unknown logger or the bad option."""
    if isinstance(loggers, Mapping):
        from omegaconf import OmegaConf

        # a DictConfig here (a Mapping): to_container gives a dict
        items = cast(dict, OmegaConf.to_container(loggers, resolve=True)) if OmegaConf.is_config(loggers) \
            else dict(loggers)
    else:
        items = {name: {} for name in loggers}
    out = {}
    for name, options in items.items():
        if name not in LOGGERS:
            raise ConfigError(f"logger={name!r}: must be one of {', '.join(sorted(LOGGERS))}")
        try:
            out[name] = OPTIONS[name](**(options or {}))
        except TypeError as err:  # an option the logger does not take
            raise ConfigError(f"logger.{name}: {err}") from None
    return out


def make_evaluator(log_dir: Path, stream_metrics: bool, loggers=("csv",), run_name: str = "gift_cl",
                   run_dir: Optional[Path] = None, task: Optional[str] = None):
    """Accuracy and loss per epoch and experience; ``stream_metrics`` adds stream accuracy, forgetting, BWT.
    ``loggers`` names Avalanche loggers from :data:`LOGGERS`, or maps each name to its options (the ``logger``
    config; the run's own JSON/CSV/plots are written anyway); none on the ranks other than 0 of a
    distributed run. ``run_dir`` / ``task``: the run the logs belong to (:class:`RunFiles`); by default the
    run loop's layout, ``<run>/logs`` or, in the independent protocol (no stream metrics), ``<run>/logs/<task>``."""
    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics, loss_metrics
    from avalanche.training.plugins import EvaluationPlugin

    log_dir = Path(log_dir)
    if run_dir is None:
        run_dir, task = (log_dir.parent, None) if stream_metrics else (log_dir.parent.parent, log_dir.name)
    run = RunFiles(Path(run_dir), run_name, task)
    extra = [forgetting_metrics(experience=True, stream=True), bwt_metrics(experience=True, stream=True)]
    return EvaluationPlugin(
        accuracy_metrics(epoch=True, experience=True, stream=stream_metrics),
        loss_metrics(epoch=True, experience=True),
        *(extra if stream_metrics else []),
        loggers=[LOGGERS[name](log_dir, run, **options) for name, options in logger_options(loggers).items()],
    )


# ----------------------------------------------------------------------------- checkpointed state
def _metric_state(metric) -> Optional[dict]:
    """The part of a metric that outlives one evaluation: forgetting and BWT (experience and stream) keep
    each experience's accuracy right after it was trained (``initial``); without it a resumed run reports
    no forgetting for the experiences trained before the checkpoint. Accuracy and loss reset at every
    epoch, experience or evaluation, all of which end before a checkpoint is written."""
    if isinstance(metric, GenericExperienceForgetting):
        f = metric.forgetting
        return {"initial": {int(k): float(v) for k, v in f.initial.items()},
                "last": {int(k): float(v) for k, v in f.last.items()},
                "train_exp_id": metric.train_exp_id}
    return None


def _load_metric_state(metric, state: Optional[dict]) -> None:
    if state is not None:
        metric.forgetting.initial = dict(state["initial"])
        metric.forgetting.last = dict(state["last"])
        metric.train_exp_id = state["train_exp_id"]


def _loggers(strategy) -> list:
    return [lg for lg in strategy.evaluator.loggers if hasattr(lg, "resume")]


def evaluation_state(strategy) -> dict:
    """What the run checkpoint holds of the evaluation (tensors and plain containers only)."""
    evaluator = strategy.evaluator
    return {
        "clock": {name: int(getattr(strategy.clock, name)) for name in CLOCK_FIELDS},
        "metrics": [{"metric": type(m).__name__, "state": _metric_state(m)} for m in evaluator.metrics],
        "history": logged_history(evaluator),
        "loggers": {lg.kind: lg.log_state() for lg in _loggers(strategy)},
    }


def restore_evaluation(strategy, state: Optional[dict], path) -> None:
    """Put back what :func:`evaluation_state` saved, before anything is logged. ``state`` None: a checkpoint
    from before it was saved, whose loggers append to what they find (the forgetting of earlier
    experiences is then not known, as it was not then)."""
    if state is None:
        for lg in _loggers(strategy):
            lg.resume(None, None)
        return
    metrics = strategy.evaluator.metrics
    if [s["metric"] for s in state["metrics"]] != [type(m).__name__ for m in metrics]:
        raise CheckpointError(f"{path}: holds the state of the metrics {[s['metric'] for s in state['metrics']]}, "
                              f"this run computes {[type(m).__name__ for m in metrics]}")
    for name, value in state["clock"].items():
        setattr(strategy.clock, name, int(value))
    for metric, saved in zip(metrics, state["metrics"]):
        _load_metric_state(metric, saved["state"])
    history = state["history"]
    for name, (xs, values) in history.items():
        strategy.evaluator.all_metric_results[name] = (list(xs), list(values))
    for lg in _loggers(strategy):
        lg.resume(state["loggers"].get(lg.kind, {}), history)


def close_loggers(strategy) -> None:
    """Flush and close the loggers of a strategy whose logging is over (its files are complete on disk)."""
    for lg in _loggers(strategy):
        lg.close()
