"""How a forward pass knows which task it serves, in one place.

Every part whose forward depends on the task (a LoRA layer with one adapter per task, a model whose hooks add
a task's adapters or prompts, a model plug-in) is a :class:`TaskSelective`: it reads ``self.active``, the
served task's key (``str(task)``), or ``None`` for the pretrained behaviour. :func:`serving` is the one way to
set it: for the enclosed forward pass every such part below a module serves the task, and afterwards each is
back to what it was (so scopes nest).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from torch import nn


class TaskSelective:
    """Mixin of a module whose forward applies the parts of the task named by ``active`` (``None``: none)."""

    active: Optional[str] = None


@contextlib.contextmanager
def serving(module: nn.Module, task: Optional[int]) -> Iterator[None]:
    """Every :class:`TaskSelective` part of ``module`` (itself included) serves ``task`` inside the block."""
    parts = [m for m in module.modules() if isinstance(m, TaskSelective)]
    before = [m.active for m in parts]
    key = None if task is None else str(task)
    for m in parts:
        m.active = key
    try:
        yield
    finally:
        for m, active in zip(parts, before):
            m.active = active
