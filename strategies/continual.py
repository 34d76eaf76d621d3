"""The continual / multi-task strategy: a stream of tasks on a :class:`TaskIncrementalModel`.

It adds to Avalanche's ``SupervisedTemplate`` what the stream needs and 0.6 gets wrong or lacks:
- a fresh optimizer per experience over exactly the parameters that train for it (the template's
  ``make_optimizer`` would register the frozen backbone and guess groups; avalanche-0.6-notes §2.4);
- the model's regulariser (the anchored trunk's penalty) added to the loss;
- ``end_task`` after the plugins' ``after_training_exp`` (EWC needs live gradients there), storing the
  task's mean frozen [CLS] feature for task-id inference;
- exact resume: checkpoints every N epochs and after each experience (our own state dicts; the
  dill-pickled ``save_checkpoint`` is broken on this torch), restored at the epoch they were taken.
"""
from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from torch.utils.data import DataLoader

from gift_cl.optim import build_optimizer

from .finetune import FineTuning


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


class EpochCheckpointPlugin(SupervisedPlugin):
    """Calls ``save(position)`` every ``every`` epochs inside an experience (not after its last epoch:
    the runner checkpoints once the experience is trained *and* evaluated)."""

    def __init__(self, every: int, save):
        super().__init__()
        self.every, self.save = every, save

    def after_training_epoch(self, strategy, **kwargs):
        done = strategy.clock.train_exp_epochs + 1  # the Clock plugin runs after us
        if self.every and done % self.every == 0 and done < strategy.train_epochs:
            self.save(strategy, epochs_done=done)


class ContinualStrategy(FineTuning):
    """The single-task recipe (optimizer groups, timm schedule, progress bars) over a task stream."""

    _resume: Optional[dict] = None  # training state to continue from at the next train() call

    @property
    def current_tasks(self) -> list[int]:
        return sorted(int(t) for t in self.experience.task_labels)

    def make_optimizer(self, **kwargs):
        # The template calls this once before model adaptation (heads not there yet) and again after.
        if not all(str(t) in self.model.classifiers for t in self.current_tasks):
            return
        self.model.begin_task(self.current_tasks)
        self.optimizer = build_optimizer(self.model, self.optim_cfg)
        self.optimized_param_id = {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def criterion(self):
        return self._criterion(self.mb_output, self.mb_y) + self.model.penalty()

    # ------------------------------------------------------------------ resume inside an experience
    def resume_from(self, state: dict) -> None:
        """Continue the next ``train`` call at ``state['epochs_done']`` with its optimizer, schedule and RNG."""
        self._resume = state

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        start = 0
        if self._resume is not None:
            state, self._resume = self._resume, None
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler_plugin.load_state_dict(state["scheduler"])
            start = self.clock.train_exp_epochs = state["epochs_done"]
            set_rng_state(state["rng"])
        for _ in range(start, self.train_epochs):
            self._before_training_epoch(**kwargs)
            self.training_epoch(**kwargs)
            self._after_training_epoch(**kwargs)

    def training_state(self, epochs_done: int) -> dict:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler_plugin.state_dict(),
            "epochs_done": epochs_done,
            "rng": rng_state(),
        }

    # ------------------------------------------------------------------ task boundary
    def _after_training_exp(self, **kwargs):
        super()._after_training_exp(**kwargs)  # plugins first: EWC computes importances with live grads
        for task, proto in self.task_prototypes().items():
            self.model.end_task(task, proto)

    @torch.no_grad()
    def task_prototypes(self) -> dict[int, torch.Tensor]:
        """Mean frozen [CLS] feature of each task in the experience, on un-augmented training images."""
        self.model.eval()
        loader = DataLoader(self.experience.dataset.eval(), batch_size=self.eval_mb_size, shuffle=False)
        sums: dict[int, torch.Tensor] = {}
        counts: dict[int, int] = {}
        for x, _, t in loader:
            feats = self.model.frozen_features(x.to(self.device))
            for task in t.unique().tolist():
                sel = feats[t.to(self.device) == task]
                sums[task] = sums.get(task, 0) + sel.sum(0)
                counts[task] = counts.get(task, 0) + len(sel)
        self.model.train()
        return {task: sums[task] / counts[task] for task in sums}
