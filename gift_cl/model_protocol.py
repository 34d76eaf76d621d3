"""What saving, loading and describing a model needs of it, as a structural type.

:class:`~gift_cl.methods.TaskAwareModel` satisfies :class:`ShareableModel`; :mod:`gift_cl.pretrained` and
:mod:`gift_cl.model_meta` are typed against the protocol, so they sit below the methods (whose
``save_pretrained`` / ``from_pretrained`` call them) and import no method, not even for types.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, Protocol

import torch
from torch import nn


class ShareableModel(Protocol):
    """A task-aware model seen by the code that writes and reads it: one classifier per task label (as ``str``),
    the backbone's feature width, which state keys are frozen pretrained weights, and a task's own parameters."""

    classifiers: nn.ModuleDict
    feature_dim: int
    state_dict: Callable[..., dict[str, Any]]
    load_state_dict: Callable[..., Any]
    named_parameters: Callable[..., Iterator[tuple[str, nn.Parameter]]]

    def modules(self) -> Iterator[nn.Module]: ...

    def frozen_state_keys(self) -> set[str]: ...

    def trainable_state_dict(self) -> dict[str, torch.Tensor]: ...

    def task_parameters(self, task: int) -> list[nn.Parameter]: ...

    def add_task(self, task: int, num_classes: int) -> None: ...

