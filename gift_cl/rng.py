"""Seeding and RNG state that survives a checkpoint loaded with ``torch.load(weights_only=True)``:
every generator's state is stored as tensors and plain containers, never as pickled objects."""
from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch (CPU and CUDA) seeded through Avalanche's RNG manager."""
    from avalanche.training.determinism.rng_manager import RNGManager

    RNGManager.set_random_seeds(seed)


def rng_state() -> dict:
    np_state = np.random.get_state(legacy=True)  # numpy's default; its stubs' no-argument overload says dict
    assert isinstance(np_state, tuple)  # legacy=True: the MT19937 tuple (a dict only for other bit generators)
    kind, keys, pos, has_gauss, cached = np_state
    version, internal, gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "internal": list(internal), "gauss": gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` saved, whatever device the checkpoint was loaded onto
    (``map_location``): generator states are CPU byte tensors. CUDA states are restored for the devices
    both machines have; a checkpoint written without CUDA leaves the CUDA generators as seeded."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
