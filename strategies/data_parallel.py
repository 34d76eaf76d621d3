"""Data-parallel training inside :class:`strategies.TaskAwareStrategy` (``torch.distributed`` process group
set up by the run loop, ``gift_cl.orchestration.distributed``).

Why an explicit gradient all-reduce and not ``DistributedDataParallel``: the task-aware models grow heads
and generator heads per task, and what trains changes every experience (``begin_task``); DDP registers its
parameters once and would have to be re-wrapped per experience, and wrapping would put a ``module.`` in
front of every state-dict key that checkpoints, plugins (EWC, LwF) and Avalanche's ``model.adaptation``
read. The trainable parameters of the PEFT methods are small (GIFT: tens of thousands), so one coalesced
all-reduce after ``backward`` costs little; DDP's overlap of communication with backward would only matter
for full fine-tuning. The result is the same: every rank steps with the gradient of the global batch.

- :class:`GlobalBatchShards`: per task, one permutation of the task's samples drawn from a generator seeded
  by (seed, experience, task, epoch) — never from the global RNG, so ranks cannot drift apart — cut into the
  task's global sub-batches exactly as the single-process loader cuts them; rank ``r`` takes the ``r``-th
  of ``world_size`` near-equal slices of every sub-batch. The global batches are the same for every world
  size (the last one of a task is padded by wrapping around when it holds fewer samples than ranks).
- :class:`ShardedTaskBalancedLoader`: Avalanche's task-balanced loader (per-task share of
  ``optim.batch_size``, small tasks cycled) over those shards; it has as many iterations as the
  single-process loader, so the LR schedule is unchanged.
- :class:`DataParallel.sync_gradients`: gradients times the local sample count, summed over ranks, divided
  by the global count — the gradient of the mean loss over the global batch, also when slices are uneven.
  A parameter that has no gradient on any rank keeps none (AdamW skips it, as in a single process).
- :meth:`DataParallel.broadcast_parameters`: rank 0's trainable parameters at the start of each experience
  (heads are created lazily, after training consumed RNG; this makes every rank start from the same state).

``optim.batch_size`` is the global batch; each rank's batch is its share (global / world size).
"""
from __future__ import annotations

import hashlib
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from avalanche.benchmarks.utils.data_loader import TaskBalancedDataLoader


def _seed(*parts) -> int:
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class GlobalBatchShards:
    """A batch sampler over one task's samples: this rank's slice of each global sub-batch."""

    def __init__(self, n: int, batch_size: int, rank: int, world_size: int, seed: tuple,
                 epoch: Callable[[], int], shuffle: bool = True):
        if n > 0 and batch_size < world_size:
            raise ValueError(f"a task's share of the global batch ({batch_size} samples) is smaller than the "
                             f"number of ranks ({world_size}): raise optim.batch_size or use fewer ranks")
        self.n, self.batch_size, self.rank, self.world_size = n, batch_size, rank, world_size
        self.seed, self.epoch, self.shuffle = seed, epoch, shuffle
        self._draws: dict[int, int] = {}  # epoch -> how many passes were drawn (small tasks are cycled)

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def global_batches(self) -> list[list[int]]:
        epoch = int(self.epoch())
        draw = self._draws.get(epoch, 0)
        self._draws = {epoch: draw + 1}
        if self.shuffle:
            g = torch.Generator().manual_seed(_seed(*self.seed, epoch, draw))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        batches = [order[i: i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        if batches and len(batches[-1]) < self.world_size:  # every rank gets at least one sample
            batches[-1] = batches[-1] + [order[i % self.n] for i in range(self.world_size - len(batches[-1]))]
        return batches

    def __iter__(self):
        for batch in self.global_batches():
            yield np.array_split(np.asarray(batch, dtype=np.int64), self.world_size)[self.rank].tolist()


class ShardedTaskBalancedLoader(TaskBalancedDataLoader):
    """Avalanche's ``TaskBalancedDataLoader`` whose per-task samplers are :class:`GlobalBatchShards`."""

    def __init__(self, data, batch_size: int, rank: int, world_size: int, seed: tuple,
                 epoch: Callable[[], int], shuffle: bool = True, **kwargs):
        self._shards = dict(rank=rank, world_size=world_size, seed=seed, epoch=epoch, shuffle=shuffle)
        self._samplers: Optional[list] = None
        kwargs.pop("drop_last", None)
        super().__init__(data, batch_size=batch_size, oversample_small_groups=True, distributed_sampling=False,
                         shuffle=False, **kwargs)

    def _create_samplers(self, datasets, batch_sizes, distributed_sampling, loader_kwargs):
        if self._samplers is None:  # kept across epochs: they read the epoch when iterated
            self._samplers = [
                GlobalBatchShards(len(d), b, seed=(*self._shards["seed"], i), **{
                    k: v for k, v in self._shards.items() if k != "seed"})
                for i, (d, b) in enumerate(zip(datasets, batch_sizes))]
        return self._samplers


class DataParallel:
    """What a rank of a data-parallel run does inside the strategy (process group already initialised)."""

    def __init__(self, rank: int, world_size: int, seed: int):
        self.rank, self.world_size, self.seed = rank, world_size, seed

    @classmethod
    def from_process_group(cls, seed: int) -> "DataParallel":
        return cls(dist.get_rank(), dist.get_world_size(), seed)

    def train_loader(self, strategy, **kwargs) -> ShardedTaskBalancedLoader:
        exp = strategy.experience
        return ShardedTaskBalancedLoader(
            strategy.adapted_dataset, batch_size=strategy.train_mb_size, rank=self.rank,
            world_size=self.world_size, seed=(self.seed, int(exp.current_experience)),
            epoch=lambda: strategy.clock.train_exp_epochs, shuffle=kwargs.pop("shuffle", True),
            **strategy._obtain_common_dataloader_parameters(**{**kwargs, "num_workers": kwargs.get("num_workers", 0)}))

    @torch.no_grad()
    def broadcast_parameters(self, params: Sequence[torch.Tensor]) -> None:
        for p in params:
            dist.broadcast(p.data, src=0)

    @torch.no_grad()
    def sync_gradients(self, params: Sequence[torch.Tensor], n_local: int) -> None:
        """Gradient of the global batch's mean loss on every rank (one coalesced all-reduce)."""
        params = list(params)
        if not params:
            return
        ref = params[0]
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() * n_local
                 for p in params]
        has_grad = torch.tensor([float(p.grad is not None) for p in params] + [float(n_local)],
                                device=ref.device)
        flat = torch.cat(parts + [has_grad])
        dist.all_reduce(flat)
        n_global = flat[-1]
        offset = 0
        for i, p in enumerate(params):
            k = p.numel()
            if flat[-1 - len(params) + i] > 0:
                grad = (flat[offset: offset + k] / n_global).view_as(p).to(p.dtype)
                if p.grad is None:
                    p.grad = grad
                else:
                    p.grad.copy_(grad)
            offset += k


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]
