"""How a forward pass knows which task it serves, in one place.

Every part whose forward depends on the task (a LoRA layer with one adapter per task, a model whose hooks add
a task's adapters or prompts, a model add-on) is a :class:`TaskSelective`: it reads ``self.active``, the
served task's key (``str(task)``), or ``None`` for the pretrained behaviour. :func:`serving` is the one way to
set it: for the enclosed forward pass every such part below a module serves the task, and afterwards each is
back to what it was (so scopes nest).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

from torch import nn


class TaskSelective:
    """Mixin of a module whose forward applies the parts of the task named by ``active`` (``None``: none)."""

    active: Optional[str] = None


@contextlib.contextmanager
def serving(module: nn.Module, task: Optional[int]) -> Iterator[None]:
    """Every :class:`TaskSelective` part of ``module`` (itself included) serves ``task`` inside the block."""
    parts = [m for m in module.modules() if isinstance(m, TaskSelective)]
    with attribute_scope(parts, "active", None if task is None else str(task)):
        yield


@contextlib.contextmanager
def attribute_scope(objects: Sequence[object], name: str, value: object) -> Iterator[None]:
    """Every object's attribute ``name`` is ``value`` inside the block; afterwards each is back to what it
    was (so scopes nest, and an exception in the block restores them too)."""
    before = [getattr(obj, name) for obj in objects]
    for obj in objects:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, old in zip(objects, before):
            setattr(obj, name, old)
