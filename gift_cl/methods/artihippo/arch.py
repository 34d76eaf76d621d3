"""ArtiHippo's vocabulary: the operations, the source ids and what an architecture is."""
from __future__ import annotations

from typing import Optional

OPS = ("reuse", "adapt", "new", "skip")
PRETRAINED = -1  # the source id of the pretrained projection
NEW_INITS = ("random", "pretrained")
ADAPTS = ("lora", "gift")
SEARCH = "search"  # module key prefix of the supernet's parts

# An architecture: one (op, source) pair per block; source is an int for reuse/adapt, None for new/skip.
Arch = list[tuple[str, Optional[int]]]


def source_key(source: int) -> str:
    """The module key of an expert's source: ``pre`` for the pretrained projection, else the task id."""
    return "pre" if source == PRETRAINED else str(source)
