"""The one Avalanche strategy every method and protocol trains with.

It adds to Avalanche's ``SupervisedTemplate`` what the project needs and 0.6 gets wrong or lacks:
- a fresh optimizer per experience over exactly the parameters that train for it, in the official two
  groups (the template's ``make_optimizer`` would register the frozen backbone and guess groups;
  avalanche-0.6-notes §2.4), and the timm cosine schedule;
- the model's regulariser (e.g. the anchored GIFT trunk's penalty) and its add-ons' auxiliary losses
  (GIST) added to the loss;
- a stop on a non-finite loss, naming the task, epoch, step and learning rate;
- ``end_task`` after the plugins' ``after_training_exp`` (EWC needs live gradients there), storing the
  task's mean frozen [CLS] feature for task-id inference;
- exact resume inside an experience: ``training_state`` / ``resume_from`` carry the optimizer, the epoch
  and the RNG (our own state dicts: the dill-pickled ``save_checkpoint`` is broken on this torch).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.utils.data import DataLoader

from gift_cl.optim import OptimConfig, build_optimizer
from gift_cl.rng import rng_state, set_rng_state

from .data_parallel import DataParallel, optimizer_params
from .plugins import ProgressBarPlugin, TimmSchedulerPlugin
from .precision import Precision, compile_backbones


class DivergenceError(FloatingPointError):
    """The training loss became NaN or infinite: the run stops before anything is saved."""


class TaskAwareStrategy(SupervisedTemplate):
    """AdamW with the official two groups, a timm cosine schedule, progress bars, over a task stream."""

    def __init__(
        self,
        *,
        model: nn.Module,
        optim: OptimConfig,
        device: str = "cpu",
        eval_mb_size: int = 256,
        evaluator=None,
        plugins: Optional[Sequence[SupervisedPlugin]] = None,
        progress: bool = True,
        precision: str = "fp32",
        compile: bool = False,
        distributed: Optional[DataParallel] = None,
    ):
        # GPU / scale (strategies/precision.py, strategies/data_parallel.py); defaults change nothing
        self.amp = Precision(precision, torch.device(device).type)
        self.compile, self.distributed = compile, distributed
        self.optim_cfg = optim
        self.scheduler_plugin = TimmSchedulerPlugin(optim)
        self._resume: Optional[dict] = None  # training state to continue from at the next train() call
        kwargs = {} if evaluator is None else {"evaluator": evaluator}
        super().__init__(
            model=model,
            optimizer=build_optimizer(model, optim),
            criterion=nn.CrossEntropyLoss(),
            train_mb_size=optim.batch_size,
            train_epochs=optim.epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=[self.scheduler_plugin, ProgressBarPlugin(progress), *(plugins or [])],
            **kwargs,
        )

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
        self.amp.reset()
        if self.distributed is not None:
            self.distributed.broadcast_parameters(optimizer_params(self.optimizer))
        if self.compile:
            compile_backbones(self.model)

    def criterion(self):
        # penalty: the method's regulariser; auxiliary_loss: model add-ons' terms (GIST), 0 without any
        aux = self.model.auxiliary_loss(self.mb_y) if self.is_training else 0.0
        return self._criterion(self.mb_output, self.mb_y) + self.model.penalty() + aux

    def backward(self):
        # after every plugin's before_backward, so their loss terms (EWC, LwF) are checked too
        if not torch.isfinite(self.loss).all():
            raise DivergenceError(
                f"non-finite training loss ({self.loss.item()}) on task(s) {self.current_tasks}, "
                f"epoch {self.clock.train_exp_epochs + 1}/{self.train_epochs}, "
                f"step {self.clock.train_epoch_iterations + 1}/{len(self.dataloader)}, "
                f"lr {self.optimizer.param_groups[0]['lr']:.3g}. The run stopped; nothing of this experience "
                f"was saved. Lower optim.lr or check the data.")
        self.amp.backward(self.loss, retain_graph=self.retain_graph)

    # ------------------------------------------------------------------ precision and data parallelism
    def forward(self):
        with self.amp.autocast():
            out = super().forward()
        return self.amp.output(out)

    def optimizer_step(self):
        if self.distributed is not None:
            self.distributed.sync_gradients(optimizer_params(self.optimizer), len(self.mb_y))
        self.amp.step(self.optimizer)

    def make_train_dataloader(self, **kwargs):
        if self.distributed is None:
            return super().make_train_dataloader(**kwargs)
        self.dataloader = self.distributed.train_loader(self, **kwargs)

    # ------------------------------------------------------------------ resume inside an experience
    def resume_from(self, state: dict) -> None:
        """Continue the next ``train`` call at ``state['epochs_done']`` with its optimizer and RNG
        (plugins restore their own state through ``load_state_dict``)."""
        self._resume = state

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        start = 0
        if self._resume is not None:
            state, self._resume = self._resume, None
            self.optimizer.load_state_dict(state["optimizer"])
            start = self.clock.train_exp_epochs = state["epochs_done"]
            set_rng_state(state["rng"])
            self.amp.load_state_dict(state.get("scaler"))
        if not any(p.requires_grad for p in self.model.parameters()):
            return  # nothing trains for this experience (SimpleCIL, RanPAC; APER after its first task)
        for _ in range(start, self.train_epochs):
            self._before_training_epoch(**kwargs)
            self.training_epoch(**kwargs)
            self._after_training_epoch(**kwargs)

    def training_state(self, epochs_done: int) -> dict:
        state = {"optimizer": self.optimizer.state_dict(), "epochs_done": epochs_done, "rng": rng_state()}
        if self.amp.scaler is not None:
            state["scaler"] = self.amp.state_dict()
        return state

    # ------------------------------------------------------------------ task boundary
    def _after_training_exp(self, **kwargs):
        super()._after_training_exp(**kwargs)  # plugins first: EWC computes importances with live grads
        task_means, class_means = self.observe_experience()
        for task, means in class_means.items():
            self.model.record_class_means(task, means)
        for task, proto in task_means.items():
            self.model.end_task(task, proto)

    @torch.no_grad()
    def observe_experience(self) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """One pass over the experience's un-augmented training images (eval mode): each task's mean frozen [CLS]
        feature (task-id inference), each of its classes' mean (class-incremental task inference), and the
        model's own ``observe_training_data`` (SimpleCIL's prototypes, RanPAC's Gram matrix)."""
        self.model.eval()
        loader = DataLoader(self.experience.dataset.eval(), batch_size=self.eval_mb_size, shuffle=False)
        sums: dict[int, torch.Tensor] = {}
        counts: dict[int, int] = {}
        class_sums: dict[int, torch.Tensor] = {}
        class_counts: dict[int, torch.Tensor] = {}
        for x, y, t in loader:
            x, y, t = x.to(self.device), y.to(self.device), t.to(self.device)
            feats = self.model.frozen_features(x)
            for task in t.unique().tolist():
                sel = t == task
                width = self.model.classifiers[str(task)].out_features
                sums[task] = sums.get(task, 0) + feats[sel].sum(0)
                counts[task] = counts.get(task, 0) + int(sel.sum())
                onehot = torch.nn.functional.one_hot(y[sel], width).to(torch.float64)
                class_sums[task] = class_sums.get(task, 0) + onehot.T @ feats[sel].to(torch.float64)
                class_counts[task] = class_counts.get(task, 0) + onehot.sum(0)
            self.model.observe_training_data(x, y, t)
        self.model.train()
        class_means = {task: (class_sums[task] / class_counts[task].clamp_min(1)[:, None]).to(sums[task].dtype)
                       for task in class_sums}
        return {task: sums[task] / counts[task] for task in sums}, class_means

