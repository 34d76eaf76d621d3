"""The one family of task-aware models every method belongs to.

A method turns a frozen (or shared) timm backbone into an Avalanche ``MultiTaskModule`` with per-task
parts. Every protocol uses the same class: a single-task run (VTAB-1k / FGVC) is a one-task model, a
continual run adds tasks as experiences arrive, joint training serves mixed-task batches.

The lifecycle the strategy drives, per task ``t``:
``adaptation`` / ``add_task`` (create parts) → ``begin_task([t])`` (choose what trains) → training with
``penalty()`` added to the loss → ``end_task(t, prototype)`` (freeze; store the task's mean frozen [CLS]
feature for task-id inference).

Adding a method: subclass :class:`TaskAwareModel` in a file of its own, implement ``features`` and
``frozen_features``, and say which parameters train (``add_task_parts``, ``task_parameters``,
``shared_parameters``). What is pretrained (never checkpointed) follows one rule
(:meth:`TaskAwareModel.frozen_state_keys`). See ``bitfit.py`` for a short worked example.

Model add-ons (GIST, Coeff-Tuning; ``addon.py``) attach to the ViT(s) a method runs: a method that
accepts ``addons={name: ModelAddon}`` says which ViT a task runs through (``vit(task)``); the base class
takes the add-ons once the method's constructor has returned (:meth:`TaskAwareModel.after_init`).
A method's own files beside ``results.json`` come from :meth:`TaskAwareModel.write_artifacts`.
"""
from __future__ import annotations

import abc
from typing import Callable, Mapping, Optional, Sequence, cast

import torch
import torch.nn.functional as F
from avalanche.models import MultiTaskModule
from torch import nn

from ..former_names import read_former_addon_keys
from ..injection import backbone_parameter_count, count_parameters
from ..padding import PAD_LOGIT
from ..pretrained import load_method, save_pretrained
from ..protocols import INFER_TASK
from ..selective import TaskSelective, serving
from .addon import ModelAddon
from .arguments import RecordsArguments


def classes_per_task(dataset) -> dict[int, int]:
    """Number of classes of each task present in an Avalanche dataset (labels are 0..C-1 per task)."""
    targets = torch.as_tensor(list(dataset.targets))
    tasks = torch.as_tensor(list(dataset.targets_task_labels))
    return {int(t): int(targets[tasks == t].max()) + 1 for t in tasks.unique()}


def new_classifier(feature_dim: int, num_classes: int) -> nn.Linear:
    """A task's classifier, initialised as timm initialises a ViT's head (truncated normal, std 0.02, zero
    bias): what the official GIFT code fine-tunes, whatever the protocol."""
    head = nn.Linear(feature_dim, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head


def headless(backbone: nn.Module) -> nn.Module:
    """The timm backbone without its classifier: ``forward`` returns the pooled [CLS] feature."""
    # nn.Module.__getattr__ is typed Tensor | Module; timm's models have a reset_classifier(num_classes) method
    cast("Callable[[int], None]", backbone.reset_classifier)(0)
    return backbone


class TaskAwareModel(RecordsArguments, MultiTaskModule, abc.ABC):
    """Per-task classifier heads over ``features(x, task)``, −∞-style padding, task-id inference.

    Its constructor arguments are recorded (:class:`~gift_cl.methods.arguments.RecordsArguments`): what
    :meth:`save_pretrained` writes so that :meth:`from_pretrained` can rebuild the model."""

    # True when features(x, task) does not depend on the task: every head then reads one forward pass
    shared_features = False

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.feature_dim: int = int(cast(int, backbone.num_features))  # timm: an int (typed Tensor | Module)
        self.backbone_params = backbone_parameter_count(backbone)
        self.classifiers = nn.ModuleDict()
        self.prototypes: dict[int, torch.Tensor] = {}
        # per task, the mean frozen [CLS] feature of each of its classes (C_t, d): class-incremental task inference
        self.class_means: dict[int, torch.Tensor] = {}
        self.model_addons = nn.ModuleDict()  # name -> ModelAddon (GIST, Coeff-Tuning, ...)
        self._pretrained_keys: set[str] = set()  # set when the constructor returns (after_init)
        self._register_load_state_dict_pre_hook(read_former_addon_keys)

    # --------------------------------------------------------------- what a method provides
    @abc.abstractmethod
    def features(self, x: torch.Tensor, task: Optional[int]) -> torch.Tensor:
        """The pooled [CLS] feature of ``x`` as task ``task`` sees it."""

    @abc.abstractmethod
    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """Features of the pretrained backbone, untouched by any task (for task-id inference)."""

    def frozen_state_keys(self) -> set[str]:
        """State-dict keys of the pretrained weights, which never train and are left out of checkpoints. One rule
        for every method (:meth:`after_init`): what the model holds when its constructor returns, except the
        parameters that require grad (a method's shared trainable parts) and the add-ons."""
        return self._pretrained_keys

    def add_task_parts(self, task: int) -> None:
        """Create the task's own parts besides its classifier (generator head, adapter, ...)."""

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        """Parameters that belong to ``task`` only (trained during its experience, then frozen)."""
        own = list(self.classifiers[str(task)].parameters())
        return own + [p for addon in self._addons() for p in addon.task_parameters(task)]

    def shared_parameters(self, task: int) -> list[nn.Parameter]:
        """Shared parameters that train during ``task`` (e.g. a GIFT trunk under a trunk policy)."""
        return []

    def penalty(self) -> torch.Tensor | float:
        """A regulariser added to the task loss (0 unless the method needs one)."""
        return 0.0

    @abc.abstractmethod
    def vit(self, task: int) -> nn.Module:
        """The timm ViT that task ``task``'s forward pass runs through (where add-ons attach)."""

    def write_artifacts(self, run_dir, task_names: list[str], final: bool) -> None:
        """Write the method's own outputs beside ``results.json`` (after every experience; ``final`` at the end
        of the run). None by default; ArtiHippo writes its architectures."""

    # --------------------------------------------------------------- model add-ons (addon.py)
    def after_init(self, arguments: dict) -> None:
        """The method's constructor has returned: record the pretrained keys (:meth:`frozen_state_keys`) and take
        the add-ons it was given (its ``addons`` argument)."""
        self._pretrained_keys = {
            k for k, t in self.state_dict(keep_vars=True).items()
            if k != "_extra_state" and not k.startswith("model_addons.")
            and not (isinstance(t, nn.Parameter) and t.requires_grad)}
        self.use_addons(arguments.get("addons"))

    def use_addons(self, addons: Optional[Mapping[str, nn.Module]]) -> None:
        """Take ``addons`` ({name: ModelAddon}; a ``None`` value is no add-on). Idempotent."""
        for name, addon in (addons or {}).items():
            if addon is None:
                continue
            if not hasattr(addon, "attach"):
                raise TypeError(f"add-on {name!r} is a {type(addon).__name__}, not a ModelAddon")
            self.model_addons[name] = addon

    def auxiliary_loss(self, targets: torch.Tensor) -> torch.Tensor | float:
        """The add-ons' loss terms for the last forward pass (e.g. GIST's Gist-token losses)."""
        return sum((p.auxiliary_loss(targets) for p in self._addons()), 0.0)

    def serving(self, task: Optional[int]):
        """The one way a forward pass selects its task: inside ``with model.serving(task):`` every per-task part
        (:class:`~gift_cl.selective.TaskSelective`: LoRA layers, adapter/prompt hooks, add-ons) applies
        ``task``'s parameters (``None``: none, the pretrained behaviour)."""
        return serving(self, task)

    def _addons(self) -> list[ModelAddon]:
        """The add-ons, in order (``model_addons`` is an nn.ModuleDict, typed Module; use_addons fills it)."""
        return [cast(ModelAddon, addon) for addon in self.model_addons.values()]

    def head_width(self, task: int) -> int:
        """Task ``task``'s number of classes: its classifier's ``out_features``."""
        return cast(int, self.classifiers[str(task)].out_features)  # nn.ModuleDict items are typed Module

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
        self.classifiers[str(task)] = new_classifier(self.feature_dim, num_classes).to(device)
        self.add_task_parts(task)
        if self.model_addons:
            vit = self.vit(task)
            for addon in self._addons():
                addon.attach(vit)  # once per ViT; an add-on marks the ViTs it hooked
                addon.add_task(task)
            self.model_addons.to(device)
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
        return self._forward_task(x, int(task_label), None)

    def _forward_task(self, x: torch.Tensor, task: int, index: Optional[torch.Tensor]) -> torch.Tensor:
        if not self.model_addons:
            return self.classifiers[str(task)](self.features(x, task))
        with self.serving(task):
            feats = self.features(x, task)
        head = self.classifiers[str(task)]
        logits = head(feats)
        for addon in self._addons():
            addon.after_head(task, head, logits, index)
        return logits

    def forward_all_tasks(self, x: torch.Tensor) -> dict:
        """Every known head's logits (LwF asks for them each step). Avalanche runs one backbone forward
        per head; with task-independent features one forward serves all heads."""
        if not self.shared_features or self.model_addons:  # add-ons make features task-dependent
            return super().forward_all_tasks(x)
        feats = self.features(x, None)
        return {t: self.classifiers[str(t)](feats) for t in sorted(self.known_train_tasks_labels)}

    def mixed_features(self, x: torch.Tensor, task_labels: torch.Tensor, tasks: list[int]) -> Optional[torch.Tensor]:
        """Every sample's feature under its own task in ONE backbone pass, or None (then each task present
        runs its own pass). Methods whose per-task parts can be applied per sample override this."""
        return None

    def forward_mixed(self, x: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
        """A batch whose samples belong to several tasks: padded logits, each sample through its task's head."""
        tasks = [int(t) for t in task_labels.unique()]
        feats = None if self.model_addons else self.mixed_features(x, task_labels, tasks)
        width = max(self.head_width(t) for t in tasks)
        out = x.new_full((x.shape[0], width), PAD_LOGIT)
        for t in tasks:
            idx = (task_labels == t).nonzero(as_tuple=True)[0]
            if feats is None:
                logits = self._forward_task(x[idx], t, idx)
            else:
                logits = self.classifiers[str(t)](feats[idx])
            out[idx, : logits.shape[1]] = logits.to(out.dtype)
        return out

    def forward(self, x: torch.Tensor, task_labels) -> torch.Tensor | dict:
        """Logits of ``x`` under ``task_labels`` (an int, or one task label per sample); ``None``: a dict of every
        known head's logits (:meth:`forward_all_tasks`)."""
        for addon in self._addons():
            addon.begin_forward()
        if task_labels is None:  # LwF asks every known head at once
            return self.forward_all_tasks(x)
        if isinstance(task_labels, int):
            return self.forward_single_task(x, task_labels)
        task_labels = torch.as_tensor(task_labels, device=x.device)
        unique = task_labels.unique()
        if len(unique) == 1:
            return self.forward_single_task(x, int(unique))
        if self.model_addons:  # one pass per task: add-on parts are per task
            return TaskAwareModel.forward_mixed(self, x, task_labels)
        return self.forward_mixed(x, task_labels)

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

    # --------------------------------------------------------------- class-incremental prediction
    def class_offsets(self) -> dict[int, int]:
        """Each known task's first global class id: the classes of the tasks before it (stream order), so task
        ``t``'s label ``y`` is the global class ``offset[t] + y`` (one label space that grows)."""
        offsets, seen = {}, 0
        for t in self.tasks:
            offsets[t] = seen
            seen += self.head_width(t)
        return offsets

    @torch.no_grad()
    def observe_training_data(self, x: torch.Tensor, y: torch.Tensor, task_labels: torch.Tensor) -> None:
        """After a task trained, its un-augmented training images pass through here once, in batches (eval mode).
        Nothing by default; methods whose classifier is built from features (SimpleCIL's prototypes, RanPAC's
        ridge regression) accumulate them here."""

    def record_class_means(self, task: int, means: torch.Tensor) -> None:
        """Store task ``task``'s per-class mean frozen [CLS] feature (C_t, d) for ``infer_task="nearest_class"``."""
        self.class_means[task] = means.detach().clone()

    @torch.no_grad()
    def class_incremental_logits(self, x: torch.Tensor, infer_task: str = "auto") -> torch.Tensor:
        """Logits over every class seen so far (global ids, :meth:`class_offsets`), no task id given.

        With per-task heads, the task of each image is found first (``infer_task``), then its head answers:
        ``max_logit``: every task's forward pass, its head's logits side by side (with task-independent features
        this is one growing linear classifier); ``nearest_class``: the task of the nearest class mean of the frozen
        [CLS] feature (cosine); ``nearest_task``: the nearest task mean (ArtiHippo's, :meth:`infer_task`);
        ``auto``: ``max_logit`` when the features do not depend on the task (one pass), else ``nearest_class``.
        The other tasks' classes get :data:`PAD_LOGIT`. Methods with one head over all classes override this."""
        infer_task = self.task_inference_rule(infer_task)
        tasks, offsets = self.tasks, self.class_offsets()
        widths = [self.head_width(t) for t in tasks]
        total = sum(widths)
        if infer_task == "max_logit":
            heads = self.forward_all_tasks_known(x)
            return torch.cat([heads[t].float() for t in tasks], dim=1)
        if infer_task == "nearest_class":
            chosen = self.infer_task_by_class(x)
        elif infer_task == "nearest_task":
            chosen = self.infer_task(x)
        else:
            raise ValueError(f"infer_task={infer_task!r}: expected one of {INFER_TASK}")
        out = x.new_full((x.shape[0], total), PAD_LOGIT, dtype=torch.float32)
        for t in chosen.unique().tolist():
            idx = (chosen == t).nonzero(as_tuple=True)[0]
            logits = self._forward_task(x[idx], int(t), None).float()
            out[idx, offsets[t]: offsets[t] + logits.shape[1]] = logits
        return out

    def task_inference_rule(self, infer_task: str = "auto") -> str:
        """What :meth:`class_incremental_logits` does with ``infer_task``: ``auto`` resolved, or ``head`` for a
        method with one head over all classes (no task is chosen)."""
        if infer_task == "auto":
            return "max_logit" if self.shared_features and not self.model_addons else "nearest_class"
        return infer_task

    def forward_all_tasks_known(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """Every known task's logits for ``x`` (one backbone pass when the features do not depend on the task)."""
        if self.shared_features and not self.model_addons:
            feats = self.features(x, None)
            return {t: self.classifiers[str(t)](feats) for t in self.tasks}
        return {t: self._forward_task(x, t, None) for t in self.tasks}

    @torch.no_grad()
    def infer_task_by_class(self, x: torch.Tensor) -> torch.Tensor:
        """The task of the nearest class mean of the frozen [CLS] feature (cosine), for each image."""
        if not self.class_means:
            raise RuntimeError("no class means stored yet: nearest_class task inference needs the strategy's pass "
                               "over each task's training data (record_class_means)")
        tasks = sorted(self.class_means)
        means = torch.cat([self.class_means[t] for t in tasks]).to(x.device)
        owner = torch.cat([torch.full((len(self.class_means[t]),), t, dtype=torch.long) for t in tasks]).to(x.device)
        sims = F.normalize(self.frozen_features(x).float(), dim=-1) @ F.normalize(means.float(), dim=-1).T
        return owner[sims.argmax(-1)]

    # --------------------------------------------------------------- bookkeeping and checkpoints
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything but the frozen pretrained weights: what a checkpoint holds."""
        frozen = self.frozen_state_keys()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}

    def get_extra_state(self):
        return {"prototypes": {t: p.cpu() for t, p in self.prototypes.items()},
                "class_means": {t: m.cpu() for t, m in self.class_means.items()}}

    def set_extra_state(self, state) -> None:
        self.prototypes = {int(t): p for t, p in state["prototypes"].items()}
        self.class_means = {int(t): m for t, m in state.get("class_means", {}).items()}

    # --------------------------------------------------------------- sharing (gift_cl/pretrained.py)
    def save_pretrained(self, directory, **metadata):
        """Write the model as a directory from_pretrained (and the Hugging Face Hub) reads: see
        :func:`gift_cl.pretrained.save_pretrained`."""
        return save_pretrained(self, directory, **metadata)

    @classmethod
    def from_pretrained(cls, source, backbone: Optional[nn.Module] = None, **kwargs) -> "TaskAwareModel":
        """The model saved in ``source`` (a directory or a Hub id): see :func:`gift_cl.pretrained.from_pretrained`."""
        return cast(TaskAwareModel, load_method(source, cls, backbone=backbone, **kwargs))  # load_method checks the class

    def trainable_parameter_count(self) -> dict:
        per_task = {t: count_parameters(self.task_parameters(t)) for t in self.tasks}
        trained = {t: {id(p) for p in self.task_parameters(t)} for t in self.tasks}
        heads = {t: count_parameters(p for p in self.classifiers[str(t)].parameters() if id(p) in trained[t])
                 for t in self.tasks}  # a classifier that does not train (SimpleCIL) is not counted
        shared = {id(p): p for t in self.tasks for p in self.shared_parameters(t)}
        own = {id(p): p for t in self.tasks for p in self.task_parameters(t)}
        return {
            "per_task": per_task,
            "per_task_excl_classifier": {t: per_task[t] - heads[t] for t in self.tasks},
            "shared": count_parameters(shared.values()),
            "total": count_parameters(own.values()) + count_parameters(shared.values()),
            "backbone": self.backbone_params,
        }


class FrozenBackboneModel(TaskAwareModel):
    """A method on a frozen pretrained backbone stored as ``self.backbone``; subclasses insert their per-task
    parts (created per task, or frozen hooks: nothing of the constructor's trains)."""

    def __init__(self, backbone: nn.Module):
        backbone = headless(backbone).requires_grad_(False)
        super().__init__(backbone)
        self.backbone = backbone

    def vit(self, task: int) -> nn.Module:
        return self.backbone


class HookedBackboneModel(TaskSelective, FrozenBackboneModel):
    """A frozen backbone whose hooks (adapters, prompts) read the model's ``active``: the task whose parts
    apply during the current forward pass (:meth:`serving`), ``None`` for the pretrained backbone."""

    def features(self, x: torch.Tensor, task: Optional[int]) -> torch.Tensor:
        with self.serving(task):
            return self.backbone(x)

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)
