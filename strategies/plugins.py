"""Plugins shared by our strategies: the timm LR schedule and progress bars."""
from __future__ import annotations

from avalanche.core import SupervisedPlugin
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
            self.scheduler.step(strategy.clock.train_exp_epochs)

    def state_dict(self) -> dict:
        return {"scheduler": self.scheduler.state_dict() if self.scheduler else None, "updates": self.updates}


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
        loss = float(strategy.loss)
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
