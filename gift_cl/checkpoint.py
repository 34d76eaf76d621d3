"""Atomic file writing: a killed run never leaves a half-written result or checkpoint behind."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False, default=float)
        f.write("\n")


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict | None = None) -> None:
    from safetensors.torch import save_file

    # safetensors refuses views that share storage; contiguous copies are what a checkpoint wants anyway
    tensors = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Only what training changed: a checkpoint of a few hundred KB, not the backbone."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
