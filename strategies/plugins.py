"""Plugins shared by our strategies: the timm LR schedule and progress bars."""
from __future__ import annotations

from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import EWCPlugin, LwFPlugin
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

    def before_training_exp(self, strategy, **kwargs):
        self.scheduler = build_scheduler(strategy.optimizer, self.cfg, steps_per_epoch=len(strategy.dataloader))
        self.updates = 0

    def after_training_iteration(self, strategy, **kwargs):
        self.updates += 1
        if self.cfg.sched_on_updates:
            self.scheduler.step_update(self.updates)

    def after_training_epoch(self, strategy, **kwargs):
        if not self.cfg.sched_on_updates:
            # the Clock plugin runs last, so train_exp_epochs still counts the epoch just finished
            self.scheduler.step(strategy.clock.train_exp_epochs + 1)

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.updates = state["updates"]


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


class EWC(EWCPlugin):
    """Avalanche's EWC whose importances and anchors survive a checkpoint."""

    def state_dict(self) -> dict:
        return {"saved_params": dict(self.saved_params), "importances": dict(self.importances)}

    def load_state_dict(self, state: dict) -> None:
        self.saved_params.update(state["saved_params"])
        self.importances.update(state["importances"])


class LwF(LwFPlugin):
    """Avalanche's LwF whose previous model survives a checkpoint."""

    def state_dict(self) -> dict:
        lwf = self.lwf
        return {"prev_model": lwf.prev_model, "expcount": lwf.expcount, "prev_classes": dict(lwf.prev_classes_by_task)}

    def load_state_dict(self, state: dict) -> None:
        self.lwf.prev_model = state["prev_model"]
        self.lwf.expcount = state["expcount"]
        self.lwf.prev_classes_by_task.update(state["prev_classes"])
