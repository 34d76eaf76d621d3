"""Methods whose classifier is one head over every class seen, built from features instead of trained.

:class:`GlobalReadout` is a mixin for a :class:`~gift_cl.methods.base.TaskAwareModel`: after each task has
trained (or at once, for a training-free method), the task's un-augmented training images pass through
``readout_features`` into the head (a :class:`~gift_cl.classincremental.heads.PrototypeClassifier` or
:class:`~gift_cl.classincremental.heads.RandomProjectionRidge`) with their global class ids; from then on the
task is answered by the head: over every class seen without a task id
(:meth:`~GlobalReadout.class_incremental_logits`), over the task's own classes with one (the task-incremental
numbers). A task whose data the head has not seen yet (the one training now) is answered by its trained
classifier, which is what the first-session methods (APER) train the adapted backbone with.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .base import FrozenBackboneModel


class GlobalReadout(abc.ABC):
    """Mixin (first in the bases) for a task-aware model with one head over all classes seen. The head is
    ``self.readout`` once the first task has arrived."""

    @abc.abstractmethod
    def build_readout(self) -> nn.Module:
        """The head, built when the first task arrives (so that a checkpoint holds it as trained state)."""

    @abc.abstractmethod
    def readout_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the head reads (SimpleCIL: the frozen [CLS]; APER: frozen and adapted, side by side)."""

    def add_task(self, task: int, num_classes: int) -> None:
        super().add_task(task, num_classes)  # type: ignore[misc]
        if "readout" not in self._modules:  # type: ignore[attr-defined]
            device = next(self.parameters()).device  # type: ignore[attr-defined]
            self.readout = self.build_readout().to(device)
            self.readout_tasks: list[int] = []

    @torch.no_grad()
    def observe_training_data(self, x: torch.Tensor, y: torch.Tensor, task_labels: torch.Tensor) -> None:
        offsets = self.class_offsets()  # type: ignore[attr-defined]
        start = torch.as_tensor([offsets[int(t)] for t in task_labels.tolist()], device=y.device)
        self.readout.update(self.readout_features(x), start + y)  # type: ignore[operator]

    def end_task(self, task: int, prototype: Optional[torch.Tensor] = None) -> None:
        super().end_task(task, prototype)  # type: ignore[misc]
        if task not in self.readout_tasks:
            self.readout_tasks.append(task)
        if getattr(self.readout, "stage_open", False):  # RanPAC: solve once per stage
            ridge = self.readout.fit()  # type: ignore[operator]
            self.ridges = [*getattr(self, "ridges", []), float(ridge)]  # the λ of each stage, in readout.json

    def _readout_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.readout_features(x))

    @torch.no_grad()
    def class_incremental_logits(self, x: torch.Tensor, infer_task: str = "auto") -> torch.Tensor:
        """The head's logits over every class seen (``infer_task`` does not apply: no task is chosen)."""
        return self._readout_logits(x).float()

    def task_inference_rule(self, infer_task: str = "auto") -> str:
        return "head"  # one head over all classes: no task is chosen

    def _forward_task(self, x: torch.Tensor, task: int, index: Optional[torch.Tensor]) -> torch.Tensor:
        if task not in self.readout_tasks:  # still training: its classifier
            return super()._forward_task(x, task, index)  # type: ignore[misc]
        offset = self.class_offsets()[task]  # type: ignore[attr-defined]
        width = self.classifiers[str(task)].out_features  # type: ignore[attr-defined]
        return self._readout_logits(x)[:, offset: offset + width]

    def mixed_features(self, x, task_labels, tasks):
        return None  # each task through _forward_task (the head, or the classifier of a task still training)

    def forward_all_tasks_known(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        return {t: self._forward_task(x, t, None) for t in self.tasks}  # type: ignore[attr-defined]

    def write_artifacts(self, run_dir, task_names: list[str], final: bool) -> None:
        """``readout.json``: the ridge λ chosen at each stage, for a head solved per stage (RanPAC)."""
        ridges = getattr(self, "ridges", [])
        if ridges:
            from ..atomic import write_json

            write_json({"ridge_per_stage": dict(zip(task_names, ridges))}, Path(run_dir) / "readout.json")

    def get_extra_state(self):
        return {**super().get_extra_state(), "readout_tasks": list(getattr(self, "readout_tasks", [])),
                "ridges": list(getattr(self, "ridges", []))}

    def set_extra_state(self, state) -> None:
        super().set_extra_state(state)  # type: ignore[misc]
        self.readout_tasks = [int(t) for t in state.get("readout_tasks", [])]
        self.ridges = [float(r) for r in state.get("ridges", [])]


class FrozenBackboneReadout(GlobalReadout, FrozenBackboneModel):
    """A training-free readout on the frozen backbone's [CLS] feature (SimpleCIL, RanPAC): subclasses say which
    head (:meth:`build_readout`)."""

    shared_features = True

    def readout_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def features(self, x: torch.Tensor, task: Optional[int]) -> torch.Tensor:
        return self.backbone(x)

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return []  # nothing trains: the head is built from the features
