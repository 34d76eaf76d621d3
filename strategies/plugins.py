"""Plugins of our strategy: the timm LR schedule, progress bars, checkpoints inside an experience, data
augmentation that does not depend on the data-loader workers, and Avalanche's EWC, LwF and Replay with
state that survives a checkpoint.

A plugin whose state must survive a checkpoint provides ``state_dict()`` / ``load_state_dict(state)``
returning and taking tensors and plain containers only (checkpoints load with ``weights_only=True``); the
run loop saves and restores every plugin that does, by its position in the plugin list.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import random
import time
from typing import Callable, Optional

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EWCPlugin, LwFPlugin, ReplayPlugin
from avalanche.training.storage_policy import ExperienceBalancedBuffer, ReservoirSamplingBuffer
from avalanche.training.utils import ParamData
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from gift_cl.optim import OptimConfig, build_scheduler

log = logging.getLogger("gift_cl")


class TimmSchedulerPlugin(SupervisedPlugin):
    """Drives a timm ``CosineLRScheduler`` with the official cadence: ``step(epoch + 1)`` after each
    epoch, or ``step_update(n)`` after each update when ``sched_on_updates``. A fresh schedule per
    experience, built once the dataloader (and so the number of steps) is known."""

    def __init__(self, cfg: OptimConfig):
        super().__init__()
        self.cfg = cfg
        self.scheduler = None
        self.updates = 0
        self._pending: Optional[dict] = None  # state restored before the schedule of its experience exists

    def before_training_exp(self, strategy, **kwargs):
        self.scheduler = build_scheduler(strategy.optimizer, self.cfg, steps_per_epoch=len(strategy.dataloader))
        self.updates = 0
        if self._pending is not None:
            self.scheduler.load_state_dict(self._pending["scheduler"])
            self.updates = self._pending["updates"]
            self._pending = None

    def after_training_iteration(self, strategy, **kwargs):
        self.updates += 1
        if self.cfg.sched_on_updates:
            self.scheduler.step_update(self.updates)

    def after_training_epoch(self, strategy, **kwargs):
        if not self.cfg.sched_on_updates:
            # the Clock plugin runs last, so train_exp_epochs still counts the epoch just finished
            self.scheduler.step(strategy.clock.train_exp_epochs + 1)

    def after_training_exp(self, strategy, **kwargs):
        self.scheduler = None  # between experiences there is no schedule to checkpoint

    def state_dict(self) -> Optional[dict]:
        if self.scheduler is None:
            return None
        return {"scheduler": self.scheduler.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Optional[dict]) -> None:
        self._pending = state


class ProgressBarPlugin(SupervisedPlugin):
    """What a run shows while it trains: one INFO line on the ``gift_cl`` logger per training epoch (task,
    epoch, mean loss, learning rate, seconds) and per evaluated experience (task, accuracy, images, seconds),
    and, when ``enabled``, a tqdm bar for each (running loss and learning rate).

    The bars redraw themselves with carriage returns: on a terminal that is a live display, in a file or a
    pipe it is kilobytes of half-drawn lines. The run therefore turns them on only where they can be seen
    (``progress=auto``: stderr is a terminal; ``progress=true|false`` forces it), and the log lines, which
    also go to ``gift_cl.log``, say the same in a form a redirected log can be read in. A line is written
    after its bar is closed, so the two never interleave. Only rank 0 of a data-parallel run logs (its loss
    is the mean over its share of each batch)."""

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.bar = None
        self.running = None  # the bar's smoothed loss
        self._names: dict[int, str] = {}  # task label -> name, from the (one-task) experiences trained
        self._start = 0.0
        self._loss_sum = self._count = 0  # the epoch's sample-weighted loss (a tensor once training ran)
        self._lr: tuple = ()  # the learning rates of the epoch's first and last update
        self.desc = ""

    @staticmethod
    def _main(strategy) -> bool:
        distributed = getattr(strategy, "distributed", None)
        return distributed is None or distributed.rank == 0

    def _bar(self, total: int, desc: str):
        if not self.enabled:
            return None
        return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def _task(self, experience) -> str:
        name = getattr(experience, "name", None)
        labels = list(getattr(experience, "task_labels", []) or [])
        if name is None and len(labels) == 1:
            name = self._names.get(int(labels[0]))
        return name or f"task {experience.current_experience}"

    def before_training_epoch(self, strategy, **kwargs):
        exp = strategy.experience
        labels = list(getattr(exp, "task_labels", []) or [])
        if getattr(exp, "name", None) and len(labels) == 1:
            self._names[int(labels[0])] = exp.name  # evaluation names its experiences by these
        self.desc = f"{self._task(exp)} epoch {strategy.clock.train_exp_epochs + 1}/{strategy.train_epochs}"
        self.bar = self._bar(len(strategy.dataloader), f"train {self.desc}")
        self.running, self._loss_sum, self._count, self._lr = None, 0, 0, ()
        self._start = time.perf_counter()

    def before_training_iteration(self, strategy, **kwargs):
        lr = strategy.optimizer.param_groups[-1]["lr"]  # the rate this update uses (a schedule may step after it)
        self._lr = (self._lr[0] if self._lr else lr, lr)

    def after_training_iteration(self, strategy, **kwargs):
        n = len(strategy.mb_y)
        loss = strategy.loss.detach()
        self._loss_sum, self._count = self._loss_sum + loss.float() * n, self._count + n  # no sync per step
        if self.bar is not None:
            value = loss.item()
            self.running = value if self.running is None else 0.9 * self.running + 0.1 * value
            self.bar.set_postfix(loss=f"{self.running:.3f}", lr=f"{self._lr[-1]:.2e}")
            self.bar.update(1)

    def after_training_epoch(self, strategy, **kwargs):
        if self.bar is not None:
            self.bar.close()
        if self._main(strategy) and self._count:
            loss = float(self._loss_sum) / self._count
            first, last = self._lr
            lr = f"{last:.3g}" if first == last else f"{first:.3g} -> {last:.3g}"  # per-update schedules
            log.info("train %s: loss %.4f, lr %s, %.1f s", self.desc, loss, lr, time.perf_counter() - self._start)

    def before_eval_exp(self, strategy, **kwargs):
        self.desc = self._task(strategy.experience)
        self.bar = self._bar(len(strategy.dataloader), f"eval {self.desc}")
        self._correct = self._count = 0
        self._start = time.perf_counter()

    def after_eval_iteration(self, strategy, **kwargs):
        self._correct = self._correct + (strategy.mb_output.argmax(-1) == strategy.mb_y).sum()
        self._count += len(strategy.mb_y)
        if self.bar is not None:
            self.bar.update(1)

    def after_eval_exp(self, strategy, **kwargs):
        if self.bar is not None:
            self.bar.close()
        if self._main(strategy) and self._count:
            log.info("eval %s: accuracy %.2f %% of %d images, %.1f s", self.desc,
                     100 * float(self._correct) / self._count, self._count, time.perf_counter() - self._start)


class PredictionRecorder(SupervisedPlugin):
    """Keeps the predicted and true label of every image of the last evaluation of each experience:
    ``predictions[task_label] = (pred, target)`` as int64 numpy arrays in dataset order (evaluation
    loaders do not shuffle), for per-image statistics (paired bootstrap in ``analysis/compare.py``)."""

    def __init__(self):
        super().__init__()
        self.predictions: dict[int, tuple] = {}
        self._pred: list = []
        self._target: list = []

    def before_eval_exp(self, strategy, **kwargs):
        self._pred, self._target = [], []

    def after_eval_iteration(self, strategy, **kwargs):
        self._pred.append(strategy.mb_output.argmax(-1).cpu())
        self._target.append(strategy.mb_y.cpu())

    def after_eval_exp(self, strategy, **kwargs):
        self.predictions[int(strategy.experience.task_label)] = (
            torch.cat(self._pred).numpy().astype("int64"), torch.cat(self._target).numpy().astype("int64"))


class EpochCheckpointPlugin(SupervisedPlugin):
    """Calls ``save(strategy, epochs_done)`` every ``every`` epochs inside an experience (not after its
    last epoch: the run loop checkpoints once the experience is trained *and* evaluated)."""

    def __init__(self, every: int, save: Callable):
        super().__init__()
        self.every, self.save = every, save

    def after_training_epoch(self, strategy, **kwargs):
        done = strategy.clock.train_exp_epochs + 1  # the Clock plugin runs after us
        if self.every and done % self.every == 0 and done < strategy.train_epochs:
            self.save(strategy, epochs_done=done)


class AugmentationSeeds(SupervisedPlugin):
    """Makes every random augmentation a function of (run seed, task, experience, epoch, sample index),
    so ``num_workers`` (0 in the main process, or any number of worker processes, persistent or not)
    cannot change what a model is trained on.

    Without it a transform draws from whichever process loads the sample: the main process's generators
    (shared with dropout and shuffling) with ``num_workers=0``, a worker's (seeded per worker, samples
    dealt out by position) otherwise. :meth:`wrap` puts a training split behind a :class:`SeededDataset`;
    this plugin tells those datasets the experience and epoch before each epoch's loader starts, through
    a shared-memory tensor that (persistent) worker processes read too.

    It also keeps the main process's random stream (shuffling, dropout) independent of persistent workers
    (CUDA's default): a new loader iterator draws one seed from it each epoch, a persistent one only in its
    first epoch; in the later ones the plugin draws that seed instead."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed) % 2**63
        self.position = torch.zeros(2, dtype=torch.int64).share_memory_()  # [experiences trained, epoch]

    def wrap(self, dataset, task: int) -> "SeededDataset":
        if isinstance(dataset, SeededDataset):  # wrapped by an earlier run: seeded by this one's epochs only
            dataset = dataset.dataset
        return SeededDataset(dataset, (self.seed, int(task)), self.position)

    def before_training_epoch(self, strategy, **kwargs):
        self.position[0] = strategy.clock.train_exp_counter
        self.position[1] = strategy.clock.train_exp_epochs
        loader = getattr(strategy.dataloader, "_persistent_loader", None)  # where Avalanche's loaders keep it
        if isinstance(loader, DataLoader) and loader._iterator is not None:  # reused: no seed drawn this epoch
            torch.empty((), dtype=torch.int64).random_(generator=loader.generator)


@contextlib.contextmanager
def seeded_generators(seed: int):
    """torch (CPU), Python and NumPy generators seeded with ``seed`` inside the block and given back their
    state after it: the caller's random streams are as if the block had not run."""
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        torch.set_rng_state(states[0])
        random.setstate(states[1])
        np.random.set_state(states[2])


class SeededDataset(Dataset):
    """A dataset whose item ``i`` is loaded (transform included) with generators seeded from ``key``, the
    experience and epoch in ``position`` and ``i``: the same sample gets the same augmentation in whatever
    process, and in whatever order, it is loaded. Everything else reads through to the wrapped dataset."""

    def __init__(self, dataset, key: tuple, position: torch.Tensor):
        self.dataset, self.key, self.position = dataset, tuple(key), position

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name):
        if name.startswith("__") or name in ("dataset", "key", "position"):  # unpickling: not set yet
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, idx):
        entropy = [*self.key, *self.position.tolist(), int(idx)]
        seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) % 2**63
        with seeded_generators(seed):
            return self.dataset[idx]


def _tensors(params: dict) -> dict:
    return {exp: {name: p.data for name, p in group.items()} for exp, group in params.items()}


def _param_data(tensors: dict) -> dict:
    return {int(exp): {name: ParamData(name, init_tensor=t, device=t.device) for name, t in group.items()}
            for exp, group in tensors.items()}


class EWC(EWCPlugin):
    """Avalanche's EWC whose importances and anchors survive a checkpoint."""

    def state_dict(self) -> dict:
        return {"saved_params": _tensors(self.saved_params), "importances": _tensors(self.importances)}

    def load_state_dict(self, state: dict) -> None:
        self.saved_params.update(_param_data(state["saved_params"]))
        self.importances.update(_param_data(state["importances"]))


class LwF(LwFPlugin):
    """Avalanche's LwF whose previous model survives a checkpoint (as its trainable state dict; the
    module itself is rebuilt from the live model when training resumes)."""

    _pending: Optional[dict] = None

    def state_dict(self) -> dict:
        lwf = self.lwf
        prev = None
        if lwf.prev_model is not None:
            frozen = lwf.prev_model.frozen_state_keys()
            prev = {k: v for k, v in lwf.prev_model.state_dict().items() if k not in frozen}
        return {"prev_model": prev, "expcount": lwf.expcount,
                "prev_classes": {int(t): sorted(int(c) for c in cs) for t, cs in lwf.prev_classes_by_task.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state["prev_model"]
        self.lwf.expcount = state["expcount"]
        self.lwf.prev_classes_by_task.update({int(t): set(cs) for t, cs in state["prev_classes"].items()})

    def before_training_exp(self, strategy, **kwargs):
        if self._pending is not None:
            prev = copy.deepcopy(strategy.model)
            prev.load_state_dict(self._pending, strict=False)
            self.lwf.prev_model, self._pending = prev, None
        super().before_training_exp(strategy, **kwargs)


class _IndexedReservoir(ReservoirSamplingBuffer):
    """One experience's share of the replay buffer (Avalanche's reservoir sampling, same random draws),
    remembering which samples of the experience's dataset it holds."""

    def __init__(self, max_size: int, experience: int):
        super().__init__(max_size)
        self.experience = experience
        self.indices = torch.zeros(0, dtype=torch.long)

    def update_from_dataset(self, new_data):
        # a group only ever receives its own experience, once: Avalanche's cat with an empty buffer reduces to this
        if len(self.buffer):
            raise RuntimeError("an experience's replay group is filled once")
        weights, order = torch.rand(len(new_data)).sort(descending=True)
        self.indices, self._buffer_weights = order[: self.max_size], weights[: self.max_size]
        self.buffer = new_data.subset(self.indices)

    def resize(self, strategy, new_size: int):
        super().resize(strategy, new_size)
        self.indices = self.indices[: self.max_size]

    def rebuild(self, dataset) -> None:
        self.buffer = dataset.subset(self.indices)


class _IndexedBalancedBuffer(ExperienceBalancedBuffer):
    """Avalanche's experience-balanced buffer over :class:`_IndexedReservoir` groups."""

    def post_adapt(self, agent, exp):
        self._num_exps += 1
        lens = self.get_group_lengths(self._num_exps)
        group = _IndexedReservoir(lens[-1], int(exp.current_experience))
        group.update_from_dataset(exp.dataset)
        self.buffer_groups[self._num_exps - 1] = group
        for size, g in zip(lens, self.buffer_groups.values()):
            g.resize(agent, size)


class Replay(ReplayPlugin):
    """Avalanche's experience replay (experience-balanced reservoir buffer of ``mem_size`` samples) whose
    buffer survives a checkpoint: each group is saved as its experience id, the dataset indices it holds
    and its reservoir weights, and rebuilt from the training stream when training resumes."""

    _pending: Optional[dict] = None

    def __init__(self, mem_size: int = 200, batch_size: Optional[int] = None, batch_size_mem: Optional[int] = None,
                 task_balanced_dataloader: bool = False):
        if mem_size < 1:
            raise ValueError(f"replay mem_size must be >= 1, got {mem_size}")
        super().__init__(mem_size=mem_size, batch_size=batch_size, batch_size_mem=batch_size_mem,
                         task_balanced_dataloader=task_balanced_dataloader,
                         storage_policy=_IndexedBalancedBuffer(max_size=mem_size, adaptive_size=True))

    def state_dict(self) -> dict:
        policy = self.storage_policy
        if self._pending is not None:  # restored but not yet rebuilt: pass it on unchanged
            return self._pending
        return {"num_exps": policy._num_exps,
                "groups": [{"key": int(k), "experience": g.experience, "max_size": g.max_size,
                            "indices": g.indices.clone(), "weights": g._buffer_weights.clone()}
                           for k, g in policy.buffer_groups.items()]}

    def load_state_dict(self, state: dict) -> None:
        self._pending = state

    def _rebuild(self, strategy) -> None:
        state, self._pending = self._pending, None
        assert state is not None  # called only while a restored state is pending
        stream = strategy.experience.origin_stream
        policy = self.storage_policy
        policy._num_exps = state["num_exps"]
        policy.buffer_groups = {}
        for g in state["groups"]:
            group = _IndexedReservoir(g["max_size"], g["experience"])
            group.indices, group._buffer_weights = g["indices"].long(), g["weights"]
            group.rebuild(stream[g["experience"]].dataset)
            policy.buffer_groups[g["key"]] = group

    def before_training_exp(self, strategy, *args, **kwargs):
        if self._pending is not None:
            self._rebuild(strategy)
        super().before_training_exp(strategy, *args, **kwargs)
