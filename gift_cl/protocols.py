"""The three protocols (``strategy.protocol``) as objects: what differs between them lives here, once.

- :class:`Independent` (``independent``): each task trains a fresh model (same seed) and is evaluated on
  itself: the VTAB-1k / FGVC protocol; a single-task run is its one-task case.
- :class:`Sequential` (``sequential``): one model learns the tasks one after the other; after each
  experience every task seen so far is evaluated, filling the accuracy matrix ``R[i][j]``.
- :class:`Joint` (``joint``): one model, one experience holding every task, batches mixed across tasks.
- :class:`ClassIncremental` (``class_incremental``): trained as the sequential protocol; after each experience
  the model is also evaluated without task identity over every class seen so far (one growing label space:
  task ``t``'s label ``y`` is the global class ``offset_t + y``), as the pretrained-ViT continual-learning
  literature reports it (``gift_cl.classincremental``).

:data:`PROTOCOLS` is the registry (name -> protocol); :func:`get_protocol` looks a name up. The module
imports neither torch nor Avalanche at import time, so configuration checks and the analysis tools read the
registry cheaply.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional, Sequence


class Protocol(ABC):
    """What a protocol decides. Subclasses set the class attributes and override what differs."""

    name: str = ""
    #: a fresh model per task (nothing is shared between tasks; nothing to checkpoint between them)
    fresh_model_per_task: bool = False
    #: an accuracy matrix with one row per trained experience (``accuracy_matrix.csv``, the summary's matrix)
    has_matrix: bool = True
    #: also evaluated without task identity over every class seen so far, after each experience
    class_incremental: bool = False

    def experiences(self, train_stream) -> list:
        """The training experiences, in order."""
        return list(train_stream)

    @abstractmethod
    def evaluated_after(self, i: int, test: Sequence, n_experiences: int, last_only: bool = False) -> list:
        """The test experiences evaluated after training experience ``i`` (``last_only``: the sequential
        protocol's ``evaluate=last_experience``)."""

    def final_accuracies(self, matrix: list[list[float]]) -> list[float]:
        """Each task's accuracy at the end of the run, from the accuracy matrix."""
        return list(matrix[-1]) if matrix else []

    def matrix_row_labels(self, names: list[str]) -> list[str]:
        """The label of each row of the accuracy matrix (the experience after which it was measured)."""
        return list(names)

    def defines_forgetting(self, matrix: list[list[float]]) -> bool:
        """Whether forgetting and BWT are defined for this matrix."""
        return False

    def clock_experiences(self, position: int) -> int:
        """Avalanche's count of finished experiences for a run at ``position`` (EWC and LwF read it)."""
        return position

    def experience_times(self, seconds: list[float], n_tasks: int) -> list[Optional[float]]:
        """``results.csv``'s ``train_time_s`` per task: the seconds of the experience that trained the task (its
        training and the evaluation after it); ``None`` for a task not trained yet."""
        return [seconds[i] if i < len(seconds) else None for i in range(n_tasks)]

    def parameter_counts(self, names: list[str], progress: dict, counts: Optional[dict]) -> dict:
        """``results.json``'s ``params``: from the model's counts (one model serves every task)."""
        assert counts is not None, f"the {self.name} protocol counts the parameters of its one model"
        return {
            "per_task": {names[t]: n for t, n in counts["per_task"].items()},
            "per_task_excl_classifier": {names[t]: n for t, n in counts["per_task_excl_classifier"].items()},
            "shared": counts["shared"],
            "total": counts["total"],
            "backbone": counts["backbone"],
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Independent(Protocol):
    name = "independent"
    fresh_model_per_task = True
    has_matrix = False

    def evaluated_after(self, i: int, test: Sequence, n_experiences: int, last_only: bool = False) -> list:
        return [test[i]]

    def final_accuracies(self, matrix: list[list[float]]) -> list[float]:
        return [row[0] for row in matrix]  # each task's own model, evaluated once

    def clock_experiences(self, position: int) -> int:
        return 0  # every task's model starts with a fresh clock

    def parameter_counts(self, names: list[str], progress: dict, counts: Optional[dict]) -> dict:
        # one model per task: everything it trains is the task's own; the counts were recorded per task
        per = progress["params"]
        return {
            "per_task": {names[i]: p["per_task"] for i, p in enumerate(per)},
            "per_task_excl_classifier": {names[i]: p["per_task_excl_classifier"] for i, p in enumerate(per)},
            "shared": 0,
            "total": sum(p["per_task"] for p in per),
            "backbone": per[0]["backbone"] if per else None,
        }


class Sequential(Protocol):
    name = "sequential"

    def evaluated_after(self, i: int, test: Sequence, n_experiences: int, last_only: bool = False) -> list:
        if last_only and i < n_experiences - 1:  # evaluate=last_experience: rows before the last stay empty
            return []
        return list(test[: i + 1])

    def defines_forgetting(self, matrix: list[list[float]]) -> bool:
        # forgetting and BWT need every row (evaluate=every_experience)
        return bool(matrix) and all(len(row) == i + 1 for i, row in enumerate(matrix))


class ClassIncremental(Sequential):
    name = "class_incremental"
    class_incremental = True


class Joint(Protocol):
    name = "joint"

    def experiences(self, train_stream) -> list:
        return [joint_experience(train_stream)]

    def evaluated_after(self, i: int, test: Sequence, n_experiences: int, last_only: bool = False) -> list:
        return list(test)

    def matrix_row_labels(self, names: list[str]) -> list[str]:
        return ["joint"]

    def experience_times(self, seconds: list[float], n_tasks: int) -> list[Optional[float]]:
        # the one experience trained every task at once: every row holds the same total, not a per-task share
        return [seconds[0] if seconds else None] * n_tasks


def joint_experience(train_stream) -> Any:
    """All tasks' training data as one Avalanche experience; task labels stay per sample."""
    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
    from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream

    data = train_stream[0].dataset
    for exp in list(train_stream)[1:]:
        data = data.concat(exp.dataset)
    exp = DatasetExperience(dataset=data, current_experience=0)
    exp.task_labels = sorted(int(t) for t in data.targets_task_labels.uniques)
    exp.classes_in_this_experience = sorted(set(int(y) for y in data.targets))
    exp = EagerCLStream("train_stream", [exp])[0]  # the stream sets the experience's origin_stream
    exp.name = "joint"
    return exp


# how a model with per-task heads finds an image's task in the class-incremental protocol (strategy.infer_task;
# gift_cl.methods.base.TaskAwareModel.class_incremental_logits)
INFER_TASK = ("auto", "max_logit", "nearest_class", "nearest_task")

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (Independent(), Sequential(), Joint(), ClassIncremental())}


def get_protocol(name: str) -> Protocol:
    """The protocol registered as ``name``; a ``ValueError`` naming the registered ones otherwise."""
    try:
        return PROTOCOLS[str(name)]
    except KeyError:
        raise ValueError(f"protocol {name!r}: expected one of {sorted(PROTOCOLS)}") from None
