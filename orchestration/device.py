"""Where and how a run computes: the device (``device=auto|cpu|cuda|cuda:N``), TF32, the data loaders'
worker settings, and the distributed context when the run was started by ``torchrun``.

Everything here is a no-op for the default on a CPU machine (``device=auto`` -> ``cpu``, ``precision=fp32``,
``num_workers=null`` -> 0, no pinned memory): the default run computes exactly what it computed before.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from gift_cl.config import ConfigError

log = logging.getLogger("gift_cl")

PRECISIONS = ("fp32", "bf16", "fp16")
MAX_AUTO_WORKERS = 8


def check_device(device: str) -> None:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N``; CUDA asked for on a machine without it is refused."""
    device = str(device)
    index = device[len("cuda:"):] if device.startswith("cuda:") else None
    if device not in ("auto", "cpu", "cuda") and not (index is not None and index.isdigit()):
        raise ConfigError(f"device={device!r}: must be auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'}); use device=auto "
                              f"(CUDA when present, else CPU) or device=cpu")
        if index is not None and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")


def resolve_device(device: str, local_rank: Optional[int] = None) -> str:
    """The concrete device: ``auto`` is ``cuda`` when CUDA is present, else ``cpu``; under ``torchrun``
    every rank takes ``cuda:LOCAL_RANK``."""
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank if local_rank is not None else torch.cuda.current_device()}"
    return device


def configure_backends(device: str, tf32: bool) -> None:
    """TF32 matmuls and convolutions on CUDA (Ampere and newer), as the official training script sets them
    (``allow_tf32=True``); CPU matmuls are left alone."""
    if not device.startswith("cuda"):
        return
    torch.backends.cuda.matmul.allow_tf32 = bool(tf32)
    torch.backends.cudnn.allow_tf32 = bool(tf32)
    torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels


def loader_kwargs(device: str, num_workers: Optional[int], world_size: int = 1) -> dict:
    """What the run passes to Avalanche's ``train``/``eval`` data loaders.

    CPU: ``num_workers`` (null = 0) and nothing else — today's loaders. CUDA: ``num_workers`` null picks
    ``min(8, CPU cores per rank)``; memory is pinned and workers persist across the epochs of an experience."""
    if not device.startswith("cuda"):
        return {"num_workers": int(num_workers or 0)}
    if num_workers is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        num_workers = max(0, min(MAX_AUTO_WORKERS, cores // max(world_size, 1) - 1))
    kwargs = {"num_workers": int(num_workers), "pin_memory": True}
    if num_workers > 0:
        kwargs["persistent_workers"] = True
    return kwargs


@dataclass
class Runtime:
    """The resolved execution settings of one run (one rank, under ``torchrun``)."""

    device: str = "cpu"
    precision: str = "fp32"
    compile: bool = False
    loader: dict = field(default_factory=lambda: {"num_workers": 0})
    distributed: Optional[Any] = None  # gift_cl.orchestration.distributed.DistContext when distributed=true

    @property
    def is_main(self) -> bool:
        return self.distributed is None or self.distributed.is_main


def runtime(cfg) -> Runtime:
    """Resolve the configuration's ``device``, ``precision``, ``tf32``, ``compile``, ``num_workers`` and
    ``distributed`` for this process (the process group must already be up when ``distributed=true``)."""
    from .distributed import context

    dist = context() if cfg.get("distributed", False) else None
    if cfg.get("distributed", False) and dist is None:
        raise ConfigError("distributed=true: the process group is not initialised; start the run with "
                          "torchrun (torchrun --nproc_per_node=N run.py ... distributed=true)")
    device = resolve_device(cfg.device, dist.local_rank if dist is not None and str(cfg.device) != "cpu" else None)
    configure_backends(device, cfg.get("tf32", True))
    return Runtime(
        device=device,
        precision=cfg.get("precision", "fp32"),
        compile=bool(cfg.get("compile", False)),
        loader=loader_kwargs(device, cfg.num_workers, dist.world_size if dist is not None else 1),
        distributed=dist,
    )
