"""Avalanche's evaluation plugin as our runs use it: accuracy and loss per epoch and experience (plus
stream accuracy, forgetting and BWT over a stream), logged as CSV files that a resumed run appends to."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from avalanche.logging import CSVLogger


class AppendingCSVLogger(CSVLogger):
    """Avalanche's CSV logger truncates its files when created; a resumed run keeps what the killed one
    logged (epochs replayed after the last checkpoint appear twice, in order)."""

    FILES = ("training_results.csv", "eval_results.csv")

    def __init__(self, log_folder: str):
        old = {}
        for name in self.FILES:
            path = os.path.join(log_folder, name)
            if os.path.isfile(path):
                with open(path) as f:
                    old[name] = f.read().splitlines(keepends=True)[1:]  # without the header
        super().__init__(log_folder)
        for name, f in (("training_results.csv", self.training_file), ("eval_results.csv", self.eval_file)):
            if old.get(name):
                f.writelines(old[name])
                f.flush()


def csv_logger(log_dir: Path, run_name: str):
    return AppendingCSVLogger(str(log_dir))


def tensorboard_logger(log_dir: Path, run_name: str):
    from avalanche.logging import TensorboardLogger

    return TensorboardLogger(str(Path(log_dir) / "tensorboard"))


def wandb_logger(log_dir: Path, run_name: str):
    """Weights & Biases in offline mode (nothing leaves the machine): ``wandb sync <log_dir>/wandb/...`` later."""
    from avalanche.logging import WandBLogger

    class OfflineWandBLogger(WandBLogger):
        """Avalanche 0.6's logger calls ``wandb.util.generate_id`` and ``wandb.viz.CustomChart``, both gone
        from wandb 0.31 (tests/test_loggers.py): we pass the run id and log scalars and figures ourselves."""

        def log_single_metric(self, name, value, x_plot):
            from matplotlib.figure import Figure

            self.step = x_plot
            if isinstance(value, (float, int)) and not isinstance(value, bool):
                self.wandb.log({name: value}, step=self.step)
            elif isinstance(value, Figure):
                self.wandb.log({name: self.wandb.Image(value)}, step=self.step)

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    # one id per run directory, so a resumed run continues its W&B run
    run_id = hashlib.sha1(str(Path(log_dir).resolve()).encode()).hexdigest()[:16]
    return OfflineWandBLogger(project_name="gift_cl", run_name=run_name, dir=str(log_dir), save_code=False,
                              params={"id": run_id, "resume": "allow"})


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
