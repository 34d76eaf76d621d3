"""GIFT as a task-aware method: one frozen ViT, one shared generator trunk (φ, P, blocks), per task a
generator head (ψ_t and, by default, its own PaCa cluster assignments) and a classifier.

Built on the public :class:`gift_cl.GiftModel` (one generator head per task). Trunk policies decide what
happens to the shared trunk after the first task:
- ``frozen_after_first``: it trains on the first task only, so old tasks reproduce bit for bit;
- ``free``: it keeps training (forgetting is measured);
- ``anchored``: it keeps training with a penalty that keeps old tasks' generated ΔW near their values at
  the end of those tasks (no stored data: the generator's input is the fixed backbone weights).
"""
from __future__ import annotations

from typing import Optional, cast

import torch
from torch import nn

from ..gift import GeneratorHead, GiftConfig, GiftGenerator
from ..tuner import GiftModel
from .base import TaskAwareModel, headless

TRUNK_POLICIES = ("frozen_after_first", "free", "anchored")


class GiftMethod(TaskAwareModel):
    def __init__(
        self,
        backbone: nn.Module,
        config: GiftConfig,
        trunk: str = "frozen_after_first",
        anchor_weight: float = 1000.0,
        per_task_clusters: bool = True,
        per_task_recovery: bool = True,
        addons: Optional[dict] = None,
    ):
        if trunk not in TRUNK_POLICIES:
            raise ValueError(f"unknown trunk policy {trunk!r}; expected one of {TRUNK_POLICIES}")
        backbone = headless(backbone)
        super().__init__(backbone)
        self.gift = GiftModel(backbone, config, heads=(), train_head=False)
        self.trunk_policy = trunk
        self.anchor_weight = anchor_weight
        self.per_task_clusters = per_task_clusters
        self.per_task_recovery = per_task_recovery
        self.anchors: dict[int, dict[str, torch.Tensor]] = {}
        self.first_task: Optional[int] = None

    def vit(self, task: int) -> nn.Module:
        return self.gift.model

    def _generators(self) -> list[GiftGenerator]:
        # nn.ModuleDict is typed Module; GiftModel holds one GiftGenerator per target layer
        return [cast(GiftGenerator, gen) for gen in self.gift.generators.values()]

    @staticmethod
    def _head(gen: GiftGenerator, task: int) -> GeneratorHead:
        return cast(GeneratorHead, gen.heads[str(task)])  # nn.ModuleDict is typed Module; add_head holds these

    def add_task_parts(self, task: int) -> None:
        self.gift.add_head(str(task))
        first = next(iter(self._generators())).heads
        if len(first) > 1:  # tie the parts configured as shared to the first task's head
            for gen in self._generators():
                ref = cast(GeneratorHead, next(iter(gen.heads.values())))
                new = self._head(gen, task)
                if not self.per_task_clusters:
                    new.clusters = ref.clusters
                if not self.per_task_recovery:
                    new.recovery = ref.recovery
        if self.first_task is None:
            self.first_task = task

    def features(self, x: torch.Tensor, task: Optional[int]) -> torch.Tensor:
        return self.gift(x, head=str(task))

    def mixed_features(self, x: torch.Tensor, task_labels: torch.Tensor, tasks: list[int]) -> torch.Tensor:
        # one backbone pass: every target layer applies each task's residual to that task's samples
        index = torch.searchsorted(torch.as_tensor(tasks, device=task_labels.device), task_labels)
        return self.gift(x, head=[str(t) for t in tasks], sample_head=index)

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.gift.model(x)  # no residuals handed to the layers: the frozen backbone

    def _head_params(self, task: int) -> list[nn.Parameter]:
        return [p for gen in self._generators() for p in self._head(gen, task).parameters()]

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        own = super().task_parameters(task)
        shared_ids: set[int] = set()
        if task != self.first_task:
            assert self.first_task is not None, "add_task_parts sets first_task with the first task"
            shared_ids = {id(p) for p in self._head_params(self.first_task)}
        return own + [p for p in self._head_params(task) if id(p) not in shared_ids]

    def shared_parameters(self, task: int) -> list[nn.Parameter]:
        if self.trunk_policy == "frozen_after_first" and task != self.first_task:
            return []
        trunk = [p for gen in self._generators() for p in gen.trunk.parameters()]
        # parts shared across tasks through the first head train with the trunk
        tied: list[nn.Parameter] = []
        if task != self.first_task:
            assert self.first_task is not None, "add_task_parts sets first_task with the first task"
            tied = [p for p in self._head_params(self.first_task) if id(p) in {id(q) for q in self._head_params(task)}]
        return trunk + tied

    def end_task(self, task: int, prototype: Optional[torch.Tensor] = None) -> None:
        super().end_task(task, prototype)
        if self.trunk_policy == "anchored":
            with torch.no_grad():
                self.anchors[task] = {k: v.detach().clone() for k, v in self.gift.delta_weights(str(task)).items()}

    def penalty(self) -> torch.Tensor | float:
        """Anchored trunk: keep every old task's generated ΔW near its value at the end of that task.
        Relative squared error, so ``anchor_weight`` does not depend on the scale of ΔW."""
        if self.trunk_policy != "anchored" or not self.anchors or self.anchor_weight == 0:
            return 0.0
        total: torch.Tensor | float = 0.0
        for task, anchor in self.anchors.items():
            deltas = self.gift.delta_weights(str(task))
            num = sum((deltas[k] - a).pow(2).sum() for k, a in anchor.items())
            # sum() is typed Tensor | Literal[0]; an anchor holds one ΔW per target layer (at least one)
            den = cast(torch.Tensor, sum(a.pow(2).sum() for a in anchor.values())).clamp_min(1e-12)
            total = total + num / den
        return self.anchor_weight * total / len(self.anchors)

    def get_extra_state(self):
        return {**super().get_extra_state(), "anchors": self.anchors, "first_task": self.first_task}

    def set_extra_state(self, state) -> None:
        super().set_extra_state(state)
        self.anchors = {int(t): a for t, a in state["anchors"].items()}
        self.first_task = state["first_task"]
