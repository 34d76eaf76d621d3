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
- TensorBoard: one event file, rewritten from the checkpoint's record of logged values, then continued;
- W&B (offline): the run id is stored in the log directory and the run resumed with it; the killed
  process's offline data is usually lost (wandb buffers), so the resumed process's offline run logs the
  whole series again from the checkpoint's record before it continues.
"""
from __future__ import annotations

import numbers
import os
import secrets
import weakref
from pathlib import Path
from typing import Optional

from avalanche.evaluation.metric_results import MetricValue
from avalanche.evaluation.metrics.forgetting_bwt import GenericExperienceForgetting
from avalanche.logging import BaseLogger, CSVLogger

from gift_cl.checkpoint import CheckpointError, write_text

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


def csv_logger(log_dir: Path, run_name: str):
    return ResumableCSVLogger(str(log_dir))


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
def tensorboard_logger(log_dir: Path, run_name: str):
    from avalanche.logging import TensorboardLogger
    from torch.utils.tensorboard import SummaryWriter

    class ResumableTensorboardLogger(TensorboardLogger):
        """Avalanche's TensorBoard logger with one event file per run directory.

        The writer opens at the first value logged. A resumed run writes the values logged up to its
        checkpoint again (from the checkpoint), then removes the other event files: what they held
        after the checkpoint the resumed run logs again, and TensorBoard would otherwise show both
        (and order files of the same second by process id). A fresh start removes them as well."""

        kind = "tensorboard"

        def __init__(self, tb_log_dir: Path):
            BaseLogger.__init__(self)  # not TensorboardLogger.__init__: it opens a writer at once
            self.log_dir = Path(tb_log_dir)
            self._writer = None
            self._history: Optional[dict] = {}  # to write again when opened; None: keep the old files

        @property
        def writer(self):
            if self._writer is None:
                self._open()
            return self._writer

        def _open(self) -> None:
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                stale = list(self.log_dir.glob("events.out.tfevents.*")) if self._history is not None else []
                self._writer = SummaryWriter(str(self.log_dir))
            except OSError as err:
                raise CheckpointError(f"cannot write {self.log_dir}: {err.strerror or err}") from err
            weakref.finalize(self, SummaryWriter.close, self._writer)
            if self._history:
                replay(self, self._history)
            self._writer.flush()  # the values up to the checkpoint are on disk before the old files go
            for path in stale:
                path.unlink(missing_ok=True)

        def resume(self, state: Optional[dict], history: Optional[dict]) -> None:
            self._history = history

        def log_state(self) -> dict:
            self.writer.flush()  # what the checkpoint has logged is in the file, should the process die
            return {}

        def close(self) -> None:
            self.writer.close()  # opened, if not yet: a resumed run that logs nothing more writes its record

    return ResumableTensorboardLogger(Path(log_dir) / "tensorboard")


# ----------------------------------------------------------------------------- W&B
WANDB_ID_FILE = "gift_cl-run-id"


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


def wandb_logger(log_dir: Path, run_name: str):
    """Weights & Biases in offline mode (nothing leaves the machine): ``wandb sync <log_dir>/wandb/...`` later."""
    from avalanche.logging import WandBLogger

    class OfflineWandBLogger(WandBLogger):
        """Avalanche 0.6's logger calls ``wandb.util.generate_id`` and ``wandb.viz.CustomChart``, both gone
        from wandb 0.31 (tests/test_loggers.py): we pass the run id and log scalars and figures ourselves.

        The run starts at the first value logged, resumed (``resume="allow"``) under the id stored in the
        log directory; a resumed process logs the checkpoint's record of earlier values first, so its
        offline run holds the whole series. Avalanche's extra ``TrainingExperience`` series is not logged
        (the experience is in every metric's name, and it could not be replayed)."""

        kind = "wandb"

        def before_run(self):  # Avalanche starts the W&B run in __init__; we start it at the first value
            self._run = None
            self._history: Optional[dict] = {}

        def _start(self) -> None:
            wandb_dir = Path(self.dir) / "wandb"
            try:
                wandb_dir.mkdir(parents=True, exist_ok=True)
                self.init_kwargs.update(id=wandb_run_id(wandb_dir), resume="allow")
            except OSError as err:
                raise CheckpointError(f"cannot write {wandb_dir}: {err.strerror or err}") from err
            self._run = self.wandb.init(**self.init_kwargs)
            if self._history:
                replay(self, self._history)

        def log_single_metric(self, name, value, x_plot):
            from matplotlib.figure import Figure

            if self._run is None:
                self._start()
            self.step = x_plot
            if isinstance(value, (float, int)) and not isinstance(value, bool):
                self.wandb.log({name: value}, step=self.step)
            elif isinstance(value, Figure):
                self.wandb.log({name: self.wandb.Image(value)}, step=self.step)

        def after_training_exp(self, strategy, metric_values, **kwargs):
            pass  # the evaluator has logged these values already (Avalanche's logger logs them twice)

        def resume(self, state: Optional[dict], history: Optional[dict]) -> None:
            self._history = history

        def log_state(self) -> dict:
            return {}

        def close(self) -> None:
            if self._run is None and self._history:  # resumed, nothing logged since: the record still counts
                self._start()
            if self._run is not None:
                self._run.finish()
                self._run = None

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    return OfflineWandBLogger(project_name="gift_cl", run_name=run_name, dir=str(log_dir), save_code=False)


# The names the ``logger`` option takes (configs/logger/*.yaml), each a function (log_dir, run_name) -> logger.
LOGGERS = {"csv": csv_logger, "tensorboard": tensorboard_logger, "wandb": wandb_logger}


def make_evaluator(log_dir: Path, stream_metrics: bool, loggers=("csv",), run_name: str = "gift_cl"):
    """Accuracy and loss per epoch and experience; ``stream_metrics`` adds stream accuracy, forgetting, BWT.
    ``loggers`` names Avalanche loggers from :data:`LOGGERS` (the run's own JSON/CSV/plots are written anyway);
    none on the ranks other than 0 of a distributed run."""
    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics, loss_metrics
    from avalanche.training.plugins import EvaluationPlugin

    extra = [forgetting_metrics(experience=True, stream=True), bwt_metrics(experience=True, stream=True)]
    return EvaluationPlugin(
        accuracy_metrics(epoch=True, experience=True, stream=stream_metrics),
        loss_metrics(epoch=True, experience=True),
        *(extra if stream_metrics else []),
        loggers=[LOGGERS[name](Path(log_dir), run_name) for name in loggers],
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
