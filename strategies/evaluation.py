"""Avalanche's evaluation plugin as our runs use it: accuracy and loss per epoch and experience (plus
stream accuracy, forgetting and BWT over a stream), logged as CSV files that a resumed run appends to."""
from __future__ import annotations

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


def make_evaluator(log_dir: Path, stream_metrics: bool, log: bool = True):
    """Accuracy and loss per epoch and experience; ``stream_metrics`` adds stream accuracy, forgetting, BWT;
    ``log=False`` (ranks other than 0 of a distributed run) writes no files."""
    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics, loss_metrics
    from avalanche.training.plugins import EvaluationPlugin

    extra = [forgetting_metrics(experience=True, stream=True), bwt_metrics(experience=True, stream=True)]
    return EvaluationPlugin(
        accuracy_metrics(epoch=True, experience=True, stream=stream_metrics),
        loss_metrics(epoch=True, experience=True),
        *(extra if stream_metrics else []),
        loggers=[AppendingCSVLogger(str(log_dir))] if log else [],
    )
