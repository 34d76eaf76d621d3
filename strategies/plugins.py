"""Plugins of our strategy: the timm LR schedule, progress bars, checkpoints inside an experience, and
Avalanche's EWC and LwF with state that survives a checkpoint.

A plugin whose state must survive a checkpoint provides ``state_dict()`` / ``load_state_dict(state)``
returning and taking tensors and plain containers only (checkpoints load with ``weights_only=True``); the
run loop saves and restores every plugin that does, by its position in the plugin list.
"""
from __future__ import annotations

import copy
from typing import Callable, Optional

from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EWCPlugin, LwFPlugin
from avalanche.training.utils import ParamData
from tqdm.auto import tqdm

from gift_cl.optim import OptimConfig, build_scheduler


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
    """One tqdm bar per training epoch (loss, lr) and one per evaluated experience."""

    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled
        self.bar = None
        self.running = None

    def before_training_epoch(self, strategy, **kwargs):
        name = getattr(strategy.experience, "name", None) or f"task {strategy.experience.current_experience}"
        self.bar = tqdm(
            total=len(strategy.dataloader),
            desc=f"train {name} ep {strategy.clock.train_exp_epochs + 1}/{strategy.train_epochs}",
            disable=not self.enabled,
            leave=False,
            dynamic_ncols=True,
        )
        self.running = None

    def after_training_iteration(self, strategy, **kwargs):
        loss = strategy.loss.item()
        self.running = loss if self.running is None else 0.9 * self.running + 0.1 * loss
        self.bar.set_postfix(loss=f"{self.running:.3f}", lr=f"{strategy.optimizer.param_groups[-1]['lr']:.2e}")
        self.bar.update(1)

    def after_training_epoch(self, strategy, **kwargs):
        self.bar.close()

    def before_eval_exp(self, strategy, **kwargs):
        self.bar = tqdm(total=len(strategy.dataloader), desc=f"eval task {strategy.experience.current_experience}",
                        disable=not self.enabled, leave=False, dynamic_ncols=True)

    def after_eval_iteration(self, strategy, **kwargs):
        self.bar.update(1)

    def after_eval_exp(self, strategy, **kwargs):
        self.bar.close()


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
