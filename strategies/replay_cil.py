"""Replay-based class-incremental references from Avalanche as plugins of our one strategy: ER-ACE (Caccia et
al., ICLR 2022; Avalanche's ``ER_ACE``) and DER++ (Buzzega et al., NeurIPS 2020; Avalanche's ``DER`` with
``beta > 0``).

Avalanche 0.6 ships both as whole strategies with their own ``training_epoch``, which cannot be combined with
``TaskAwareStrategy``; these plugins reproduce what those loops do per step with Avalanche's parts:

* the buffer is Avalanche's class-balanced reservoir (``ClassBalancedBuffer``, ``adaptive_size=True``: ``mem_size``
  split equally over the classes seen, the remainder to the first ones; per class the samples with the largest
  uniform weights, ``ReservoirSamplingBuffer``), keyed by the GLOBAL class ``offset[t] + y``
  (``TaskAwareModel.class_offsets``). Each slot holds a reference to its image (experience, index in that
  experience's training set: loaded through the same dataset, training transform included, as Avalanche's buffer
  subset is), its global label and, for DER++, the logits over the classes seen when it was inserted;
* a buffer batch of ``batch_size_mem`` is drawn as Avalanche's ``cycle(DataLoader(buffer, shuffle=True,
  drop_last=True))`` draws it: consecutive slices of a random permutation of the buffer, a new permutation when
  fewer than ``batch_size_mem`` are left, a new one per experience;
* the logits over every class seen are ``torch.cat`` of ``model.forward_all_tasks_known(x)`` in task order: the
  growing single head Avalanche's strategies assume.

Per step (``before_backward``; the strategy's loss already holds the per-task head's cross-entropy on the current
batch, plus the method's penalty and add-on terms, which stay):

* ER-ACE (``ER_ACE.training_epoch``): once the replay loader exists, the loss is ``ACECriterion()(out_in, y_in,
  out_buffer, y_buffer)`` (Avalanche's own class): ``(CE(buffer logits over every class seen, buffer labels) +
  CE(current logits restricted to the classes present in the batch)) / 2``. The plugin adds that minus the
  strategy's cross-entropy, so the total is ER_ACE's. Buffer update as ER_ACE: BEFORE each experience, with that
  experience's data (its classes are in the buffer from its first step); replay from the second experience on,
  when the buffer holds at least ``batch_size_mem`` samples.
* DER++ (``DER.training_epoch``): ``CE(current) + alpha * MSE(buffer logits on the stored columns, stored logits) +
  beta * CE(buffer logits over every class seen, buffer labels)``. Avalanche's DER trains one head over every
  class, so its current cross-entropy is over every class seen (``current_ce="seen"``, the default: the plugin
  adds that minus the strategy's per-task cross-entropy); ``current_ce="task"`` keeps the per-task head's (the
  current classes only). Buffer update as DER: AFTER each experience, the stored logits computed then (eval mode,
  un-augmented images, batches of ``train_mb_size``, as ``compute_dataset_logits``); replay whenever the buffer
  holds at least ``batch_size_mem`` (default: the training batch size, as DER) samples.

Deviations from Avalanche, and why:

* the draws (reservoir weights, buffer permutations) come from the plugin's own ``torch.Generator`` seeded with
  ``seed`` (the run's), not the global RNG: the state saves with the plugin, so a run resumed between experiences
  or in the middle of one reproduces the uninterrupted run exactly, and the current data's shuffling is the same
  as without the plugin;
* the buffer batch runs its own forward pass (DER's joint pass over ``[buffer; current]`` gives the same logits
  in a ViT: no batch statistics);
* DER's stored logits are over the classes seen at insertion (Avalanche's DER assumes a fixed-width head); the MSE
  compares those columns and averages over the stored entries (Avalanche's ``F.mse_loss`` when every sample of
  the batch has the same width);
* with per-task heads only the parameters the method trains for the current task move (for ``naive`` the shared
  backbone and the current head; for ``linear`` the current head): replay cannot change a frozen old head, as a
  single trainable head in Avalanche would.

Cost: the buffer batch's logits need every known head. For shared-feature models (``naive``, ``linear``) that is
one backbone pass; for models whose features depend on the task (GIFT, LoRA, adapters, add-ons) it is ONE PASS
PER TASK SEEN, per step (and DER's ``current_ce="seen"`` adds one pass per old task on the current batch): these
references are meant for shared-feature models.
"""
from __future__ import annotations

import abc
import contextlib
from collections import defaultdict
from typing import Any, Optional

import torch
import torch.nn.functional as F
from avalanche.core import SupervisedPlugin
from avalanche.training.regularization import ACECriterion
from avalanche.training.storage_policy import ClassBalancedBuffer, ReservoirSamplingBuffer

NO_LOGITS = float("nan")  # a column a stored sample has no logit for (a class not seen when it was inserted)


def _pad(rows: torch.Tensor, width: int) -> torch.Tensor:
    if rows.shape[1] >= width:
        return rows
    return torch.cat([rows, rows.new_full((rows.shape[0], width - rows.shape[1]), NO_LOGITS)], dim=1)


class _ClassReservoir(ReservoirSamplingBuffer):
    """One class's share of the buffer: Avalanche's reservoir sampling (``update_from_dataset``: the new samples'
    uniform weights joined to the kept ones, sorted descending, the first ``max_size`` kept; ``resize`` keeps the
    first ``new_size``), over references instead of a dataset: ``refs`` (n, 2) = (experience, index in its
    training set), and for DER++ ``logits`` (n, width), ``NO_LOGITS`` where a sample has no column."""

    def __init__(self, max_size: int):
        super().__init__(max_size)
        self._buffer_weights: torch.Tensor = torch.zeros(0)
        self.refs = torch.zeros(0, 2, dtype=torch.long)
        self.logits: Optional[torch.Tensor] = None

    def add(self, refs: torch.Tensor, weights: torch.Tensor, logits: Optional[torch.Tensor] = None) -> None:
        cat_weights = torch.cat([weights, self._buffer_weights])
        cat_refs = torch.cat([refs, self.refs])
        sorted_weights, order = cat_weights.sort(descending=True)
        keep = order[: self.max_size]
        self.refs, self._buffer_weights = cat_refs[keep], sorted_weights[: self.max_size]
        if logits is not None:
            old = self.logits if self.logits is not None else logits.new_zeros(0, logits.shape[1])
            width = max(logits.shape[1], old.shape[1])
            self.logits = torch.cat([_pad(logits, width), _pad(old, width)])[keep]

    def resize(self, strategy: Any, new_size: int) -> None:
        self.max_size = new_size
        self.refs, self._buffer_weights = self.refs[:new_size], self._buffer_weights[:new_size]
        if self.logits is not None:
            self.logits = self.logits[:new_size]


class _ClassBalancedReferences(ClassBalancedBuffer):
    """Avalanche's ``ClassBalancedBuffer`` (adaptive size: ``get_group_lengths`` over the classes seen) over
    :class:`_ClassReservoir` groups keyed by global class, drawing its weights from ``generator``."""

    def __init__(self, max_size: int):
        super().__init__(max_size=max_size, adaptive_size=True)
        self.buffer_groups: dict[int, _ClassReservoir] = {}

    def add_experience(self, experience: int, global_targets: list[int], generator: torch.Generator,
                       logits: Optional[torch.Tensor] = None) -> None:
        """``ClassBalancedBuffer.update_from_dataset`` with the experience's samples as references."""
        per_class: dict[int, list[int]] = defaultdict(list)
        for idx, c in enumerate(global_targets):
            per_class[int(c)].append(idx)
        self.seen_classes.update(per_class)
        # Avalanche zips its set of seen classes with the lengths: for class ids 0..N-1 (all below the set's
        # table size) a Python set iterates them in ascending order, so the remainder goes to the lowest ids
        class_to_len = dict(zip(sorted(self.seen_classes), self.get_group_lengths(len(self.seen_classes))))
        for c, idxs in per_class.items():  # the order classes first appear in, as Avalanche's dict
            index = torch.as_tensor(idxs, dtype=torch.long)
            refs = torch.stack([torch.full_like(index, experience), index], dim=1)
            group = self.buffer_groups.get(c)
            if group is None:
                group = self.buffer_groups[c] = _ClassReservoir(class_to_len[c])
            group.add(refs, torch.rand(len(idxs), generator=generator),
                      None if logits is None else logits[index])
            group.resize(None, class_to_len[c])
        for c, group in self.buffer_groups.items():
            group.resize(None, class_to_len[c])

    def __len__(self) -> int:
        return sum(len(g.refs) for g in self.buffer_groups.values())

    def flat(self) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Every slot in Avalanche's buffer order (the groups concatenated): refs (N, 2), global labels (N,),
        stored logits (N, width) or None."""
        groups = list(self.buffer_groups.items())
        refs = torch.cat([g.refs for _, g in groups]) if groups else torch.zeros(0, 2, dtype=torch.long)
        labels = torch.cat([torch.full((len(g.refs),), c, dtype=torch.long) for c, g in groups]) if groups \
            else torch.zeros(0, dtype=torch.long)
        logits = None
        if groups and all(g.logits is not None for _, g in groups):
            width = max(g.logits.shape[1] for _, g in groups if g.logits is not None)
            logits = torch.cat([_pad(g.logits, width) for _, g in groups if g.logits is not None])
        return refs, labels, logits

    def state(self) -> dict:
        return {"seen_classes": sorted(int(c) for c in self.seen_classes),
                "groups": [{"cls": int(c), "max_size": int(g.max_size), "refs": g.refs.clone(),
                            "weights": g._buffer_weights.clone(),
                            "logits": None if g.logits is None else g.logits.clone()}
                           for c, g in self.buffer_groups.items()]}

    def load(self, state: dict) -> None:
        self.seen_classes = set(int(c) for c in state["seen_classes"])
        self.buffer_groups = {}
        for g in state["groups"]:
            group = _ClassReservoir(int(g["max_size"]))
            group.refs, group._buffer_weights, group.logits = g["refs"].long(), g["weights"], g["logits"]
            self.buffer_groups[int(g["cls"])] = group


def _global_targets(dataset, offsets: dict[int, int]) -> list[int]:
    """Each sample's global class ``offset[t] + y``."""
    return [offsets[int(t)] + int(y) for y, t in zip(dataset.targets, dataset.targets_task_labels)]


def _autocast(strategy):
    amp = getattr(strategy, "amp", None)
    return amp.autocast() if amp is not None else contextlib.nullcontext()


def seen_logits(model, x: torch.Tensor) -> torch.Tensor:
    """Logits over every class seen (global ids), with gradients: every known head side by side, in task order."""
    heads = model.forward_all_tasks_known(x)
    return torch.cat([heads[t].float() for t in model.tasks], dim=1)


class _ClassIncrementalReplay(SupervisedPlugin):
    """What ER-ACE and DER++ share: the class-balanced reference buffer, the seeded buffer batches, the state."""

    def __init__(self, mem_size: int, batch_size_mem: Optional[int], seed: int):
        super().__init__()
        if mem_size < 1:
            raise ValueError(f"mem_size must be >= 1, got {mem_size}")
        if batch_size_mem is not None and batch_size_mem < 1:
            raise ValueError(f"batch_size_mem must be >= 1, got {batch_size_mem}")
        self.mem_size, self.batch_size_mem = int(mem_size), batch_size_mem
        self.storage_policy = _ClassBalancedReferences(self.mem_size)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.perm: Optional[torch.Tensor] = None  # the current pass over the buffer and the position in it
        self.pos = 0
        self.updated_through = -1  # the last experience whose samples went into the buffer
        self.in_experience: Optional[int] = None  # set while an experience trains (mid-experience checkpoints)
        self.active = False  # whether this experience's steps replay
        self._stream: Any = None
        self._flat: Optional[tuple] = None

    # ------------------------------------------------------------------ the buffer
    def _update(self, strategy, experience: int, logits: Optional[torch.Tensor] = None) -> None:
        dataset = strategy.experience.dataset
        self.storage_policy.add_experience(experience, _global_targets(dataset, strategy.model.class_offsets()),
                                           self.generator, logits)
        self.updated_through, self._flat = experience, None

    def _batch_size_mem(self, strategy) -> int:
        return int(self.batch_size_mem if self.batch_size_mem is not None else strategy.train_mb_size)

    def draw(self, strategy) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The next buffer batch: images (on the strategy's device), global labels, stored logits (DER++)."""
        if self._flat is None:
            self._flat = self.storage_policy.flat()
        refs, labels, logits = self._flat
        size = self._batch_size_mem(strategy)
        if self.perm is None or self.pos + size > len(self.perm):  # drop_last: a new permutation
            self.perm, self.pos = torch.randperm(len(refs), generator=self.generator), 0
        idx = self.perm[self.pos: self.pos + size]
        self.pos += size
        images = [self._stream[int(e)].dataset[int(i)][0] for e, i in refs[idx].tolist()]
        x = torch.stack(images).to(strategy.device)
        device = strategy.device
        return x, labels[idx].to(device), None if logits is None else logits[idx].to(device)

    # ------------------------------------------------------------------ the experience
    def before_training_exp(self, strategy, **kwargs):
        tasks = sorted(int(t) for t in strategy.experience.task_labels)
        if len(tasks) != 1:
            raise ValueError(f"{type(self).__name__} is a class-incremental reference: one task per experience, "
                             f"this one holds tasks {tasks} (use protocol=class_incremental or sequential)")
        experience = int(strategy.experience.current_experience)
        self._stream = strategy.experience.origin_stream
        if self.in_experience != experience:  # a fresh experience; a resumed one keeps its pass over the buffer
            self.perm, self.pos = None, 0
        self.in_experience = experience
        self._prepare(strategy, experience)

    def after_training_exp(self, strategy, **kwargs):
        self.in_experience, self.active = None, False

    @abc.abstractmethod
    def _prepare(self, strategy, experience: int) -> None:
        """At the start of an experience: whether to replay from now on (ER-ACE also fills its buffer here, DER++ after
        the experience)."""

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"buffer": self.storage_policy.state(), "generator": self.generator.get_state(),
                "perm": None if self.perm is None else self.perm.clone(), "pos": self.pos,
                "updated_through": self.updated_through, "in_experience": self.in_experience}

    def load_state_dict(self, state: dict) -> None:
        self.storage_policy.load(state["buffer"])
        self.generator.set_state(state["generator"].cpu())
        self.perm = None if state["perm"] is None else state["perm"].long().cpu()
        self.pos = int(state["pos"])
        self.updated_through = int(state["updated_through"])
        self.in_experience = None if state["in_experience"] is None else int(state["in_experience"])
        self._flat = None


class ERACE(_ClassIncrementalReplay):
    """ER-ACE (Avalanche's ``ER_ACE``; defaults as there: ``mem_size=200``, ``batch_size_mem=10``): replay with
    the asymmetric cross-entropy, ``ACECriterion``. See the module docstring for what matches Avalanche."""

    def __init__(self, mem_size: int = 200, batch_size_mem: int = 10, seed: int = 0):
        super().__init__(mem_size, batch_size_mem, seed)
        self.ace_criterion = ACECriterion()

    def _prepare(self, strategy, experience: int) -> None:
        # ER_ACE._before_training_exp: the buffer takes the experience's data before it trains
        if self.updated_through < experience:
            self._update(strategy, experience)
        self.active = len(self.storage_policy) >= self._batch_size_mem(strategy) and experience > 0

    def replay_loss(self, strategy, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """ER_ACE's loss for the current batch (``strategy.mb_output``, ``strategy.mb_y``: the task's head, local
        labels; ACE uses only the columns of the classes in the batch, so local equals global) and a buffer batch."""
        with _autocast(strategy):
            out_buffer = seen_logits(strategy.model, x)
        return self.ace_criterion(strategy.mb_output, strategy.mb_y, out_buffer, y)

    def before_backward(self, strategy, **kwargs):
        if not self.active:
            return
        x, y, _ = self.draw(strategy)
        base = strategy._criterion(strategy.mb_output, strategy.mb_y)  # the strategy's own CE, replaced
        strategy.loss = strategy.loss + (self.replay_loss(strategy, x, y) - base)


class DERPP(_ClassIncrementalReplay):
    """DER++ (Avalanche's ``DER``; defaults as there: ``mem_size=200``, ``batch_size_mem`` = the training batch
    size, ``alpha=0.1``, ``beta=0.5``; ``beta=0`` is DER). ``current_ce``: ``seen`` (Avalanche's: the current
    batch's cross-entropy over every class seen, one head) or ``task`` (the per-task head's). See the module
    docstring for what matches Avalanche."""

    def __init__(self, mem_size: int = 200, batch_size_mem: Optional[int] = None, alpha: float = 0.1,
                 beta: float = 0.5, current_ce: str = "seen", seed: int = 0):
        super().__init__(mem_size, batch_size_mem, seed)
        if current_ce not in ("seen", "task"):
            raise ValueError(f"current_ce={current_ce!r}: expected 'seen' or 'task'")
        self.alpha, self.beta, self.current_ce = float(alpha), float(beta), current_ce
        self._hook: Any = None
        self._capture = False
        self._features: Optional[torch.Tensor] = None

    def _prepare(self, strategy, experience: int) -> None:
        # DER._before_training_exp: replay what earlier experiences left (the buffer is updated after training)
        self.active = len(self.storage_policy) >= self._batch_size_mem(strategy)
        model = strategy.model
        if self._hook is not None:
            self._hook.remove()
        self._hook = None
        if self.current_ce == "seen" and model.shared_features and not model.model_addons:
            task = int(strategy.experience.task_labels[0])
            self._hook = model.classifiers[str(task)].register_forward_pre_hook(self._grab)

    def _grab(self, module, args):
        if self._capture:  # the features the current head reads in the strategy's forward pass
            self._features = args[0]

    def before_forward(self, strategy, **kwargs):
        self._capture, self._features = True, None

    def after_forward(self, strategy, **kwargs):
        self._capture = False

    def current_seen_logits(self, strategy) -> torch.Tensor:
        """The current batch's logits over every class seen: the strategy's output for its task, the other heads on
        the same features (one backbone pass) or, where features depend on the task, their own passes."""
        model, task = strategy.model, int(strategy.mb_task_id[0])
        parts = []
        with _autocast(strategy):
            for t in model.tasks:
                if t == task:
                    parts.append(strategy.mb_output.float())
                elif self._features is not None:
                    parts.append(model.classifiers[str(t)](self._features).float())
                else:
                    parts.append(model._forward_task(strategy.mb_x, t, None).float())
        return torch.cat(parts, dim=1)

    def replay_loss(self, strategy, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``alpha * MSE + beta * CE`` of DER on a buffer batch: ``logits`` are the stored ones (``NO_LOGITS`` where
        a sample has no column)."""
        with _autocast(strategy):
            out = seen_logits(strategy.model, x)
        stored = ~torch.isnan(logits)
        mse = F.mse_loss(out[:, : logits.shape[1]][stored], logits[stored])
        return self.alpha * mse + self.beta * F.cross_entropy(out, y)

    def current_loss(self, strategy) -> Optional[torch.Tensor]:
        """What replaces the strategy's cross-entropy on the current batch (None: it stays)."""
        model = strategy.model
        if self.current_ce == "task" or len(model.tasks) == 1:  # one task: its head is every class seen
            return None
        task = int(strategy.mb_task_id[0])
        target = strategy.mb_y + model.class_offsets()[task]
        return F.cross_entropy(self.current_seen_logits(strategy), target)

    def before_backward(self, strategy, **kwargs):
        added = None
        current = self.current_loss(strategy)
        if current is not None:
            added = current - strategy._criterion(strategy.mb_output, strategy.mb_y)
        if self.active:
            x, y, logits = self.draw(strategy)
            assert logits is not None
            term = self.replay_loss(strategy, x, y, logits)
            added = term if added is None else added + term
        self._features = None
        if added is not None:
            strategy.loss = strategy.loss + added

    def after_training_exp(self, strategy, **kwargs):
        # DER._after_training_exp: the experience's samples with the logits the trained model gives them
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        experience = int(strategy.experience.current_experience)
        if self.updated_through < experience:
            self._update(strategy, experience, self.dataset_logits(strategy))
        super().after_training_exp(strategy, **kwargs)

    @torch.no_grad()
    def dataset_logits(self, strategy) -> torch.Tensor:
        """Avalanche's ``compute_dataset_logits``: the experience's un-augmented training images (``.eval()``) in
        order, batches of ``train_mb_size``, eval mode; here over every class seen (no DataLoader: nothing is drawn
        from the global RNG)."""
        model = strategy.model
        was_training = model.training
        model.eval()
        dataset = strategy.experience.dataset.eval()
        size, rows = int(strategy.train_mb_size), []
        for start in range(0, len(dataset), size):
            x = torch.stack([dataset[i][0] for i in range(start, min(start + size, len(dataset)))])
            with _autocast(strategy):
                rows.append(seen_logits(model, x.to(strategy.device)).detach().cpu())
        model.train(was_training)
        return torch.cat(rows)
