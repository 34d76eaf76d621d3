"""list[TaskData] -> an Avalanche task-incremental stream: one experience per task.

Built with Avalanche 0.6's new benchmark API. Two of its quirks are worked around here
(../shared/notes/avalanche-0.6-notes.md §4): ``with_classes_timeline`` stores
``classes_in_this_experience`` as a *set*, which ``MultiHeadClassifier(masking=True)`` cannot index,
so experiences are rebuilt with sorted lists.
"""
from __future__ import annotations

from typing import Sequence

from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience, benchmark_from_datasets
from avalanche.benchmarks.scenarios.generic_scenario import CLScenario, EagerCLStream
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import DataAttribute
from avalanche.benchmarks.utils.classification_dataset import TaskAwareClassificationDataset
from avalanche.benchmarks.utils.data_attribute import TaskLabels
from avalanche.benchmarks.utils.flat_data import ConstantSequence

from .base import DataError, TaskData, require_unique


def as_task_dataset(dataset, task_label: int) -> TaskAwareClassificationDataset:
    """The task-aware dataset class (not a plain ``AvalancheDataset``): LwF reads its ``task_set``."""
    targets = list(dataset.targets)
    return TaskAwareClassificationDataset(
        [dataset],
        data_attributes=[
            DataAttribute(targets, "targets"),
            TaskLabels(ConstantSequence(task_label, len(targets))),
        ],
    )


def _listify(stream) -> EagerCLStream:
    exps = []
    for exp in stream:
        new = DatasetExperience(dataset=exp.dataset, current_experience=exp.current_experience)
        for attr in ("task_label", "task_labels"):
            if hasattr(exp, attr):
                setattr(new, attr, getattr(exp, attr))
        new.classes_in_this_experience = sorted(exp.classes_in_this_experience)
        exps.append(new)
    return EagerCLStream(stream.name, exps)


def build_stream(tasks: Sequence[TaskData]) -> CLScenario:
    """``train_stream``/``test_stream`` with experience i = task i; samples are ``(x, y, task)``.

    Every benchmark reaches the run through here, so this is where the stream-wide rules are
    enforced: at least one task, and task names unique (they key results, predictions and weights).
    """
    if not tasks:
        raise DataError("the benchmark returned no tasks; expected a list of TaskData, one per task")
    require_unique([t.name for t in tasks], "task names")
    bm = benchmark_from_datasets(
        train=[as_task_dataset(t.train, i) for i, t in enumerate(tasks)],
        test=[as_task_dataset(t.test, i) for i, t in enumerate(tasks)],
    )
    bm = with_classes_timeline(with_task_labels(bm))
    return CLScenario([_listify(bm.train_stream), _listify(bm.test_stream)])
