"""The run checkpoint (``checkpoints/last.pt``): what a run needs to resume, saved atomically and read back
without running code."""
from __future__ import annotations

from pathlib import Path

import torch

from .atomic import CheckpointError, save_torch

__all__ = ["RUN_CHECKPOINT_FORMAT", "RUN_CHECKPOINT_VERSION", "CheckpointError", "load_run_checkpoint",
           "save_run_checkpoint"]


# ---------------------------------------------------------------------- the run checkpoint (last.pt)
# Tensors and plain containers only, loaded with torch.load(weights_only=True) (a crafted pickle cannot
# run code), tagged with a format name and version so a foreign or truncated file gets one clear message.
RUN_CHECKPOINT_FORMAT = "gift_cl.run_checkpoint"
RUN_CHECKPOINT_VERSION = 1


def save_run_checkpoint(state: dict, path: Path) -> None:
    save_torch({"format": RUN_CHECKPOINT_FORMAT, "version": RUN_CHECKPOINT_VERSION, **state}, path)


def load_run_checkpoint(path: Path, device: str = "cpu") -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as err:  # noqa: BLE001 (truncated zip, foreign pickle, objects that weights_only refuses)
        reason = f"{type(err).__name__}: {(str(err).splitlines() or ['empty file'])[0][:200]}"
        raise CheckpointError(
            f"{path}: not a readable gift_cl run checkpoint ({reason}). Expected a file written by this project "
            f"(format {RUN_CHECKPOINT_FORMAT!r}); it may be truncated, corrupt, or contain objects other than "
            f"tensors and plain containers.") from None
    if not isinstance(state, dict) or state.get("format") != RUN_CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: not a gift_cl run checkpoint (format {found!r}, "
                              f"expected {RUN_CHECKPOINT_FORMAT!r})")
    if state.get("version") != RUN_CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: run checkpoint version {state.get('version')!r}; this gift_cl reads "
                              f"version {RUN_CHECKPOINT_VERSION}")
    return state
