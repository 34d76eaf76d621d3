"""Data-parallel runs under ``torchrun``: ``torchrun --nproc_per_node=N run.py ... distributed=true``.

Each rank is a full ``run.py`` process: it builds the same model from the same seed, trains on its shard of
every global batch (``gift_cl.strategies.data_parallel``: the gradients of the trainable parameters are all-reduced,
weighted by each rank's sample count, before every optimizer step), and rank 0 alone picks the run
directory, evaluates, writes results, checkpoints and logs; the other ranks receive what rank 0 decided.

The process group comes from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``): ``gloo`` on CPU, ``nccl`` on CUDA.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from gift_cl.config import ConfigError

log = logging.getLogger("gift_cl")

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# rank 0 evaluates while the others wait at the next collective: leave room for a long evaluation
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CONTEXT: Optional[DistContext] = None


def context() -> Optional[DistContext]:
    """The distributed context of this process, or None outside a distributed run."""
    return _CONTEXT


def init_from_env(device: str) -> DistContext:
    """Join the process group torchrun set up (idempotent); ``device`` is the configured one (auto/cpu/cuda)."""
    global _CONTEXT
    if _CONTEXT is not None:
        return _CONTEXT
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ConfigError(f"distributed=true: {', '.join(missing)} not set; start the run with torchrun, e.g. "
                          f"torchrun --nproc_per_node=2 run.py ... distributed=true")
    rank, world, local = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"])
    use_cuda = str(device) != "cpu" and torch.cuda.is_available()
    if str(device).startswith("cuda:"):
        raise ConfigError(f"device={device!r} with distributed=true: use device=cuda or auto; every rank takes "
                          f"cuda:LOCAL_RANK")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    _CONTEXT = DistContext(rank=rank, world_size=world, local_rank=local, backend=backend)
    if rank != 0:  # one rank's log is enough
        logging.getLogger("gift_cl").setLevel(logging.WARNING)
    log.info("distributed: %d ranks, backend %s", world, backend)
    return _CONTEXT


def shutdown() -> None:
    global _CONTEXT
    if dist.is_initialized():
        dist.destroy_process_group()
    _CONTEXT = None


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (identity outside a distributed run)."""
    if _CONTEXT is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 and hand its result, or the exception it raised, to every rank: an error rank 0
    finds (a bad run directory, a locked one) stops all ranks with the same message instead of a hang."""
    if _CONTEXT is None:
        return fn()
    outcome: tuple = (None, None)
    if _CONTEXT.is_main:
        try:
            outcome = (fn(), None)
        except Exception as err:  # noqa: BLE001  (re-raised on every rank below)
            outcome = (None, err)
    value, error = broadcast_object(outcome)
    if error is not None:
        raise error
    return value
