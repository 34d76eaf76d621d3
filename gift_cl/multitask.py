"""Task-incremental models: one frozen (or shared) backbone, per-task parts, task-id inference.

Every model here is an Avalanche ``MultiTaskModule``: heads for a new task are created in
``adaptation`` when its experience arrives; ``forward(x, task_labels)`` serves mixed-task batches
by grouping samples by task (so GIFT generates each task's ΔW once per step, never per sample).

The lifecycle the continual strategy drives, per task ``t``:
``adaptation`` (create parts) → ``begin_task(t)`` (choose what trains) → training with
``penalty()`` added to the loss → ``end_task(t, prototype)`` (freeze, store anchors and the task's
mean frozen [CLS] feature for task-id inference).
"""
from __future__ import annotations

import abc
import copy
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.models import MultiTaskModule
from torch import nn

from .gift import GiftConfig
from .injection import backbone_parameter_count, count_parameters, find_linear_targets, set_submodule
from .lora import LoraAdapter
from .tuner import GiftModel

# Logit for the classes a sample's task does not have. Avalanche 0.6 pads with 0, which lets
# phantom classes win argmax and enter the loss (avalanche-0.6-notes §2.2).
PAD_LOGIT = -1e9

TRUNK_POLICIES = ("frozen_after_first", "free", "anchored")


def classes_per_task(dataset) -> dict[int, int]:
    """Number of classes of each task present in an Avalanche dataset (labels are 0..C-1 per task)."""
    targets = torch.as_tensor(list(dataset.targets))
    tasks = torch.as_tensor(list(dataset.targets_task_labels))
    return {int(t): int(targets[tasks == t].max()) + 1 for t in tasks.unique()}


class TaskIncrementalModel(MultiTaskModule, abc.ABC):
    """Per-task classifier heads over ``features(x, task)``, −∞-style padding, task-id inference."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.feature_dim = backbone.num_features
        self.backbone_params = backbone_parameter_count(backbone)
        self.classifiers = nn.ModuleDict()
        self.prototypes: dict[int, torch.Tensor] = {}

    # --------------------------------------------------------------- what subclasses provide
    @abc.abstractmethod
    def features(self, x: torch.Tensor, task: int) -> torch.Tensor:
        """The pooled [CLS] feature of ``x`` as task ``task`` sees it."""

    @abc.abstractmethod
    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the pretrained backbone, untouched by any task (for task-id inference)."""

    @abc.abstractmethod
    def frozen_state_keys(self) -> set[str]:
        """State-dict keys of the pretrained backbone that never train (left out of checkpoints)."""

    def add_task_parts(self, task: int) -> None:
        """Create the task's own parts besides its classifier (generator head, adapter, ...)."""

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """Parameters that belong to ``task`` only (trained during its experience, then frozen)."""
        return list(self.classifiers[str(task)].parameters())

    def shared_parameters(self, task: int) -> list[nn.Parameter]:
        """Shared parameters that train during ``task`` (e.g. a GIFT trunk under a trunk policy)."""
        return []

    def penalty(self) -> torch.Tensor | float:
        return 0.0

    # --------------------------------------------------------------- Avalanche integration
    @property
    def tasks(self) -> list[int]:
        return sorted(int(t) for t in self.classifiers)

    def adaptation(self, experience) -> None:
        super().adaptation(experience)
        for task, num_classes in classes_per_task(experience.dataset).items():
            if str(task) not in self.classifiers:
                self.add_task(task, num_classes)

    def add_task(self, task: int, num_classes: int) -> None:
        device = next(self.parameters()).device
        self.classifiers[str(task)] = nn.Linear(self.feature_dim, num_classes).to(device)
        self.add_task_parts(task)
        self.requires_grad_(False)  # nothing trains until begin_task says so

    def begin_task(self, tasks: Sequence[int]) -> None:
        self.requires_grad_(False)
        for t in tasks:
            for p in self.task_parameters(t) + self.shared_parameters(t):
                p.requires_grad_(True)

    def end_task(self, task: int, prototype: Optional[torch.Tensor] = None) -> None:
        if prototype is not None:
            self.prototypes[task] = prototype.detach().clone()
        self.requires_grad_(False)

    def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
        return self.classifiers[str(task_label)](self.features(x, int(task_label)))

    # True when features(x, task) does not depend on the task: every head then reads one forward pass
    shared_features = False

    def forward_all_tasks(self, x: torch.Tensor) -> dict:
        """Every known head's logits (LwF asks for them each step). Avalanche runs one backbone forward
        per head; with task-independent features one forward serves all heads."""
        if not self.shared_features:
            return super().forward_all_tasks(x)
        feats = self.features(x, None)
        return {t: self.classifiers[str(t)](feats) for t in sorted(self.known_train_tasks_labels)}

    def forward(self, x: torch.Tensor, task_labels) -> torch.Tensor:
        if task_labels is None:  # LwF asks every known head at once
            return self.forward_all_tasks(x)
        if isinstance(task_labels, int):
            return self.forward_single_task(x, task_labels)
        task_labels = torch.as_tensor(task_labels, device=x.device)
        unique = task_labels.unique()
        if len(unique) == 1:
            return self.forward_single_task(x, int(unique))
        width = max(self.classifiers[str(int(t))].out_features for t in unique)
        out = x.new_full((x.shape[0], width), PAD_LOGIT)
        for t in unique:
            idx = (task_labels == t).nonzero(as_tuple=True)[0]
            logits = self.forward_single_task(x[idx], int(t))
            out[idx, : logits.shape[1]] = logits
        return out

    # --------------------------------------------------------------- task-id inference (ArtiHippo)
    @torch.no_grad()
    def infer_task(self, x: torch.Tensor) -> torch.Tensor:
        """Nearest task by cosine similarity of the frozen [CLS] feature to each task's mean."""
        if not self.prototypes:
            raise RuntimeError("no task prototypes stored yet: task-id inference needs end_task(prototype=...)")
        tasks = sorted(self.prototypes)
        protos = F.normalize(torch.stack([self.prototypes[t] for t in tasks]).to(x.device), dim=-1)
        sims = F.normalize(self.frozen_features(x), dim=-1) @ protos.T
        return torch.as_tensor(tasks, device=x.device)[sims.argmax(-1)]

    # --------------------------------------------------------------- bookkeeping and checkpoints
    def get_extra_state(self):
        return {"prototypes": {t: p.cpu() for t, p in self.prototypes.items()}}

    def set_extra_state(self, state) -> None:
        self.prototypes = {int(t): p for t, p in state["prototypes"].items()}

    def trainable_parameter_count(self) -> dict:
        per_task = {t: count_parameters(self.task_parameters(t)) for t in self.tasks}
        heads = {t: count_parameters(self.classifiers[str(t)].parameters()) for t in self.tasks}
        shared = {id(p): p for t in self.tasks for p in self.shared_parameters(t)}
        return {
            "per_task": per_task,
            "per_task_excl_classifier": {t: per_task[t] - heads[t] for t in self.tasks},
            "shared": count_parameters(shared.values()),
            "total": count_parameters({id(p): p for t in self.tasks for p in self.task_parameters(t)}.values())
            + count_parameters(shared.values()),
            "backbone": self.backbone_params,
        }


def _headless(backbone: nn.Module) -> nn.Module:
    backbone.reset_classifier(0)  # timm: forward returns the pooled [CLS] feature
    return backbone


class GiftMultiTask(TaskIncrementalModel):
    """One frozen ViT, one shared GIFT trunk (φ, P, blocks), per task a generator head
    (ψ_t and, by default, its own PaCa cluster assignments) and a classifier."""

    def __init__(
        self,
        backbone: nn.Module,
        config: GiftConfig,
        trunk: str = "frozen_after_first",
        anchor_weight: float = 1000.0,
        per_task_clusters: bool = True,
        per_task_recovery: bool = True,
    ):
        if trunk not in TRUNK_POLICIES:
            raise ValueError(f"unknown trunk policy {trunk!r}; expected one of {TRUNK_POLICIES}")
        backbone = _headless(backbone)
        super().__init__(backbone)
        self.gift = GiftModel(backbone, config, heads=(), train_head=False)
        self.trunk_policy = trunk
        self.anchor_weight = anchor_weight
        self.per_task_clusters = per_task_clusters
        self.per_task_recovery = per_task_recovery
        self.anchors: dict[int, dict[str, torch.Tensor]] = {}
        self.first_task: Optional[int] = None
        self._frozen_keys = {"gift." + k for k in self.gift.state_dict() if not k.startswith("generators.")}

    def add_task_parts(self, task: int) -> None:
        self.gift.add_head(str(task))
        first = next(iter(self.gift.generators.values())).heads
        if len(first) > 1:  # tie the parts configured as shared to the first task's head
            for gen in self.gift.generators.values():
                ref, new = next(iter(gen.heads.values())), gen.heads[str(task)]
                if not self.per_task_clusters:
                    new.clusters = ref.clusters
                if not self.per_task_recovery:
                    new.recovery = ref.recovery
        if self.first_task is None:
            self.first_task = task

    def features(self, x: torch.Tensor, task: int) -> torch.Tensor:
        return self.gift(x, head=str(task))

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.gift.model(x)  # no residuals handed to the layers: the frozen backbone

    def _head_params(self, task: int) -> list[nn.Parameter]:
        return [p for gen in self.gift.generators.values() for p in gen.heads[str(task)].parameters()]

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        own = super().task_parameters(task)
        shared_ids = {id(p) for p in self._head_params(self.first_task)} if task != self.first_task else set()
        return own + [p for p in self._head_params(task) if id(p) not in shared_ids]

    def shared_parameters(self, task: int) -> list[nn.Parameter]:
        if self.trunk_policy == "frozen_after_first" and task != self.first_task:
            return []
        trunk = [p for gen in self.gift.generators.values() for p in gen.trunk.parameters()]
        # parts shared across tasks through the first head train with the trunk
        tied = [] if task == self.first_task else [p for p in self._head_params(self.first_task)
                                                    if id(p) in {id(q) for q in self._head_params(task)}]
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
        total = 0.0
        for task, anchor in self.anchors.items():
            deltas = self.gift.delta_weights(str(task))
            num = sum((deltas[k] - a).pow(2).sum() for k, a in anchor.items())
            den = sum(a.pow(2).sum() for a in anchor.values()).clamp_min(1e-12)
            total = total + num / den
        return self.anchor_weight * total / len(self.anchors)

    def frozen_state_keys(self) -> set[str]:
        return self._frozen_keys

    def get_extra_state(self):
        return {**super().get_extra_state(), "anchors": self.anchors, "first_task": self.first_task}

    def set_extra_state(self, state) -> None:
        super().set_extra_state(state)
        self.anchors = {int(t): a for t, a in state["anchors"].items()}
        self.first_task = state["first_task"]


class LinearMultiTask(TaskIncrementalModel):
    """Per-task linear probes on the frozen backbone."""

    shared_features = True

    def __init__(self, backbone: nn.Module):
        backbone = _headless(backbone).requires_grad_(False)
        super().__init__(backbone)
        self.backbone = backbone
        self._frozen_keys = {"backbone." + k for k in backbone.state_dict()}

    def features(self, x, task):
        return self.backbone(x)

    def frozen_features(self, x):
        return self.backbone(x)

    def frozen_state_keys(self):
        return self._frozen_keys


class MultiLoraLinear(nn.Module):
    """A frozen linear layer with one LoRA adapter per task; ``active`` picks the adapter."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.adapters = nn.ModuleDict()
        self.active: Optional[str] = None

    def add_adapter(self, task: str) -> None:
        adapter = LoraAdapter(self.base.in_features, self.base.out_features, self.rank, self.alpha)
        self.adapters[task] = adapter.to(self.base.weight.device)

    def forward(self, x):
        y = self.base(x)
        return y if self.active is None else y + self.adapters[self.active](x)


class LoraMultiTask(TaskIncrementalModel):
    """Per-task LoRA on ``attn.proj`` (or any target) with per-task classifiers, frozen backbone."""

    def __init__(self, backbone: nn.Module, rank: int = 8, alpha: float = 1.0, target_modules=("attn.proj",)):
        backbone = _headless(backbone).requires_grad_(False)
        super().__init__(backbone)
        self.targets = [n for n, _ in find_linear_targets(backbone, target_modules)]
        for n in self.targets:
            set_submodule(backbone, n, MultiLoraLinear(backbone.get_submodule(n), rank, alpha))
        self.backbone = backbone
        self._frozen_keys = {k for k in self.state_dict() if k.startswith("backbone.") and ".adapters." not in k}

    def _layers(self) -> list[MultiLoraLinear]:
        return [self.backbone.get_submodule(n) for n in self.targets]

    def add_task_parts(self, task):
        for layer in self._layers():
            layer.add_adapter(str(task))

    def task_parameters(self, task):
        return super().task_parameters(task) + [p for l in self._layers() for p in l.adapters[str(task)].parameters()]

    def _run(self, x, active: Optional[str]):
        for layer in self._layers():
            layer.active = active
        try:
            return self.backbone(x)
        finally:
            for layer in self._layers():
                layer.active = None

    def features(self, x, task):
        return self._run(x, str(task))

    def frozen_features(self, x):
        return self._run(x, None)

    def frozen_state_keys(self):
        return self._frozen_keys


class FinetuneMultiTask(TaskIncrementalModel):
    """Full fine-tuning per task: each task gets its own copy of the pretrained backbone."""

    def __init__(self, backbone: nn.Module):
        backbone = _headless(backbone).requires_grad_(False)
        super().__init__(backbone)
        self.pretrained = backbone
        self.backbones = nn.ModuleDict()
        self._frozen_keys = {"pretrained." + k for k in backbone.state_dict()}

    def add_task_parts(self, task):
        self.backbones[str(task)] = copy.deepcopy(self.pretrained)

    def task_parameters(self, task):
        return super().task_parameters(task) + list(self.backbones[str(task)].parameters())

    def features(self, x, task):
        return self.backbones[str(task)](x)

    def frozen_features(self, x):
        return self.pretrained(x)

    def frozen_state_keys(self):
        return self._frozen_keys


class SharedMultiHead(TaskIncrementalModel):
    """One shared, fully trainable backbone with per-task heads: the model Avalanche's Naive, EWC and
    LwF strategies train. A frozen copy of the pretrained backbone serves task-id inference."""

    shared_features = True

    def __init__(self, backbone: nn.Module):
        backbone = _headless(backbone)
        super().__init__(backbone)
        self.backbone = backbone
        self.reference = copy.deepcopy(backbone).requires_grad_(False)
        self._frozen_keys = {"reference." + k for k in self.reference.state_dict()}

    def shared_parameters(self, task):
        return list(self.backbone.parameters())

    def features(self, x, task):
        return self.backbone(x)

    def frozen_features(self, x):
        return self.reference(x)

    def frozen_state_keys(self):
        return self._frozen_keys

