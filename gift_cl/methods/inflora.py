"""InfLoRA (Liang & Li, "InfLoRA: Interference-Free Low-Rank Adaptation for Continual Learning", CVPR 2024;
official code github.com/liangyanshuo/InfLoRA: ``methods/inflora.py``, ``models/vit_inflora.py``
(``Attention_LoRA``), ``models/sinet_inflora.py``, ``configs/*_inflora.json``).

Per task ``t`` and per block, one low-rank branch on the keys and values of the attention's ``qkv`` projection
(not the queries): ``k += B_k^t A^t x``, ``v += B_v^t A^t x``, no scaling. The down-projection ``A^t`` (rank ``r``,
the same for keys and values) is **designed, never trained**: before task ``t`` trains, its training images pass
once through the model (every earlier branch applied, ``B^t = 0``) and each block's input covariance
``C = mean_tokens x xᵀ`` is taken; ``C`` is projected out of the old tasks' gradient subspace kept by DualGPM
(``C - M Mᵀ C``, or ``Q Qᵀ C`` when the memory stores the complement ``Q``), and ``A^t`` is the top-``r`` left
singular vectors of the result, divided by √3. Only ``B_k^t``, ``B_v^t`` (zero-initialised) and task ``t``'s
classifier train, so every update of the block's weights lies in a subspace orthogonal to the old tasks' inputs.
After the task, its un-augmented training images pass once more (the trained branch applied) and each block's
DualGPM memory is updated from the new covariance with the threshold ``lamb + (lame - lamb) · t / total_sessions``
(``update_DualGPM``). The branches of every task are summed into the frozen ``qkv``'s output at every forward
pass, so the features do not depend on a task id (``shared_features``) and the class-incremental prediction is
one growing linear classifier (``max_logit`` over the per-task heads, the official ``interface``).

Everything a resumed run needs is in the state dict: the branches' ``A`` (buffers) and ``B`` (parameters), and
in the extra state the memory bases, their kinds, and the tasks already designed / memorised.

Differences from the official code:

* the classifiers are this project's per-task heads (timm's initialisation: truncated normal std 0.02, zero bias;
  the official ``classifier_pool`` uses ``nn.Linear``'s default); as in the official code each head is trained
  with cross-entropy over its own task's classes only, and at test all heads' logits are concatenated;
* the optimiser is this project's (AdamW with a timm cosine schedule and warm-up; ``configs/method/inflora.yaml``
  sets the official learning rate 5e-4; the official weight decay 0 is ``optim.weight_decay=0``); the official
  code uses Adam and its own per-epoch cosine (``utils/schedulers.CosineSchedule``);
* the covariances (for ``A`` and for the memory) are taken on the **un-augmented** training images
  (``experience.dataset.eval()``); the official code passes its training loader (training transforms);
* the design and the memory update are computed in float64 (the official code: float32 torch / numpy);
  ``A`` is then stored in the backbone's dtype;
* after the **first** task, when the memory would keep at least half of the dimensions, the official code labels
  the raw basis ``retain`` (the type meaning "the complement is stored") and then fails its own assertion; here
  the basis is kept as ``remove`` and the usual conversion to the complement applies (identical wherever the
  official code runs);
* the official code also fits k-means keys on each task's features (``clustering``); InfLoRA's prediction never
  reads them, so they are left out.

``total_sessions`` must be the stream's number of tasks (the threshold schedule reads it; the official
``total_sessions``); one new task per experience is the method's setting (several new tasks in one experience each
get ``A`` from their own images against the same memory).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..injection import find_linear_targets, set_submodule
from ..rng import rng_state, set_rng_state
from ..selective import attribute_scope
from .base import FrozenBackboneModel

REMOVE, RETAIN = "remove", "retain"  # the memory holds the protected basis / its orthogonal complement
DESIGN_BATCH = 128  # images per batch of the covariance passes (the official batch_size)


# ----------------------------------------------------------------------------- the official math (float64)
def threshold(lamb: float, lame: float, position: int, total_sessions: int) -> float:
    """The DualGPM energy threshold after the task at ``position`` (0-based): ``update_DualGPM``'s schedule."""
    return (lame - lamb) * position / total_sessions + lamb


def design_down_projection(cov: torch.Tensor, memory: Optional[torch.Tensor], kind: str, rank: int) -> torch.Tensor:
    """``A`` (rank x d) from the task's input covariance ``cov`` (d x d): ``cov`` projected out of the old tasks'
    subspace (``memory``: None before the first task), its top-``rank`` left singular vectors, divided by √3."""
    cov = cov.to(torch.float64)
    if memory is not None:
        memory = memory.to(torch.float64)
        projected = memory @ (memory.T @ cov)
        cov = cov - projected if kind == REMOVE else projected
    u = torch.linalg.svd(cov, full_matrices=False)[0]
    return u[:, :rank].T / math.sqrt(3)


def dual_gpm_update(memory: Optional[torch.Tensor], kind: str, activation: torch.Tensor,
                    thresh: float) -> tuple[torch.Tensor, str]:
    """One layer's DualGPM memory after a task whose input covariance is ``activation`` (``update_DualGPM``):
    the new basis and its kind (``remove``: the protected subspace; ``retain``: its complement)."""
    act = activation.to(torch.float64)
    d = act.shape[0]
    if memory is None:  # after the first task
        u, s, _ = torch.linalg.svd(act, full_matrices=False)
        ratio = s ** 2 / (s ** 2).sum()
        r = int((torch.cumsum(ratio, 0) < thresh).sum())
        memory, kind = u[:, :max(r, 1)], REMOVE
    else:
        memory = memory.to(torch.float64)
        s1 = torch.linalg.svdvals(act)
        total = float((s1 ** 2).sum())
        projected = memory @ (memory.T @ act)
        if kind == REMOVE:
            u, s, _ = torch.linalg.svd(act - projected, full_matrices=False)
            ratio = (s ** 2 / total).tolist()
            accumulated = (total - float((s ** 2).sum())) / total
            r = 0
            for value in ratio:
                if accumulated >= thresh:
                    break
                accumulated += value
                r += 1
            if r:
                memory = torch.cat([memory, u[:, :r]], 1)[:, :d]
        else:
            u, s, _ = torch.linalg.svd(projected, full_matrices=False)
            ratio = (s ** 2 / total).tolist()
            accumulated = float((s ** 2).sum()) / total
            r = 0
            for value in ratio:
                if accumulated < 1 - thresh:
                    break
                accumulated -= value
                r += 1
            if r:
                kept = memory - u[:, :r] @ (u[:, :r].T @ memory)
                memory = torch.linalg.svd(kept)[0][:, :memory.shape[1] - r]
    if kind == REMOVE and memory.shape[1] > d / 2:  # store the smaller side: the complement
        memory, kind = torch.linalg.svd(memory)[0][:, memory.shape[1]:], RETAIN
    return memory, kind


def protected_basis(memory: torch.Tensor, kind: str) -> torch.Tensor:
    """An orthonormal basis of the old tasks' protected subspace (the complement of a ``retain`` memory)."""
    memory = memory.to(torch.float64)
    if kind == REMOVE:
        return memory
    return torch.linalg.svd(memory)[0][:, memory.shape[1]:]


# ----------------------------------------------------------------------------- the layer
class InfLoraBranch(nn.Module):
    """One task's branch: ``A`` designed (a buffer), ``B_k``, ``B_v`` trained (zero at the start)."""

    lora_A: torch.Tensor

    def __init__(self, in_features: int, out_features: int, rank: int, device=None, dtype=None):
        super().__init__()
        self.register_buffer("lora_A", torch.zeros(rank, in_features, device=device, dtype=dtype))
        self.lora_B_k = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))
        self.lora_B_v = nn.Parameter(torch.zeros(out_features, rank, device=device, dtype=dtype))


class InfLoraQKV(nn.Module):
    """A frozen ``qkv`` projection plus every task's branch on its key and value thirds:
    ``k += (Σ_t B_k^t A^t) x``, ``v += (Σ_t B_v^t A^t) x`` (the official ``Attention_LoRA``). ``enabled=False``:
    the frozen layer alone. While ``collecting``, the covariance of its inputs is accumulated (float64)."""

    base: nn.Linear

    def __init__(self, base: nn.Linear, rank: int):
        super().__init__()
        if base.out_features % 3:
            raise ValueError(f"InfLoRA: {base.out_features} outputs is not a qkv projection (three equal parts)")
        self.base = base.requires_grad_(False)
        self.rank, self.dim = rank, base.out_features // 3
        self.branches = nn.ModuleDict()
        self.enabled = True
        self.collecting = False
        self.cov_sum: Optional[torch.Tensor] = None
        self.cov_count = 0

    def add_branch(self, name: str) -> None:
        w = self.base.weight
        self.branches[name] = InfLoraBranch(self.base.in_features, self.dim, self.rank, w.device, w.dtype)

    def delta_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``Σ_t B_k^t A^t`` and ``Σ_t B_v^t A^t`` in task order."""
        wk: Optional[torch.Tensor] = None
        wv: Optional[torch.Tensor] = None
        for branch in self.branches_in_order():
            bk, bv = branch.lora_B_k @ branch.lora_A, branch.lora_B_v @ branch.lora_A
            wk, wv = (bk, bv) if wk is None or wv is None else (wk + bk, wv + bv)
        assert wk is not None and wv is not None
        return wk, wv

    def branches_in_order(self) -> list[InfLoraBranch]:
        return [cast(InfLoraBranch, b) for b in self.branches.values()]

    def branch(self, task: int) -> InfLoraBranch:
        return cast(InfLoraBranch, self.branches[str(task)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.collecting:
            flat = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
            cov = flat.T @ flat
            self.cov_sum = cov if self.cov_sum is None else self.cov_sum + cov
            self.cov_count += flat.shape[0]
        y = self.base(x)
        if not self.enabled or not len(self.branches):
            return y
        wk, wv = self.delta_weights()
        kv = F.linear(x, torch.cat([wk, wv], 0))
        return torch.cat([y[..., :self.dim], y[..., self.dim:] + kv.to(y.dtype)], -1)


# ----------------------------------------------------------------------------- the method
class InfLoRA(FrozenBackboneModel):
    shared_features = True  # every branch applies to every image: one feature, one growing classifier

    def __init__(self, backbone: nn.Module, rank: int = 10, lamb: float = 0.95, lame: float = 1.0,
                 total_sessions: int = 10, addons: Optional[dict] = None):
        super().__init__(backbone)
        self.rank, self.lamb, self.lame, self.total_sessions = rank, lamb, lame, total_sessions
        self.targets = [n for n, _ in find_linear_targets(self.backbone, ("attn.qkv",))]
        for n in self.targets:
            set_submodule(self.backbone, n, InfLoraQKV(cast(nn.Linear, self.backbone.get_submodule(n)), rank))
        # per layer: the DualGPM basis (float64, CPU; None before the first task ends) and its kind
        self.memory: list[Optional[torch.Tensor]] = [None] * len(self.targets)
        self.memory_kind: list[str] = [REMOVE] * len(self.targets)
        self.designed: list[int] = []    # tasks whose A is set, in stream order (their position is their index)
        self.memorised: list[int] = []   # tasks already folded into the memory
        self._observed: dict[int, list[torch.Tensor]] = {}  # per task being closed: each layer's covariance sum
        self._observed_count: dict[int, int] = {}

    def layers(self) -> list[InfLoraQKV]:
        return [cast(InfLoraQKV, self.backbone.get_submodule(n)) for n in self.targets]

    # ------------------------------------------------------------------ parts and parameters
    def add_task_parts(self, task: int) -> None:
        for layer in self.layers():
            layer.add_branch(str(task))

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        own = [p for layer in self.layers() for p in (layer.branch(task).lora_B_k, layer.branch(task).lora_B_v)]
        return super().task_parameters(task) + own

    def features(self, x: torch.Tensor, task: Optional[int]) -> torch.Tensor:
        return self.backbone(x)

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        with self._branches(False):
            return self.backbone(x)

    @contextlib.contextmanager
    def _branches(self, enabled: bool) -> Iterator[None]:
        with attribute_scope(self.layers(), "enabled", enabled):
            yield

    # ------------------------------------------------------------------ covariances
    @torch.no_grad()
    def _covariances(self, batches) -> tuple[list[torch.Tensor], int]:
        """Each layer's summed input outer products over the images ``batches`` yields, and the token count."""
        layers = self.layers()
        for layer in layers:
            layer.collecting, layer.cov_sum, layer.cov_count = True, None, 0
        try:
            for x in batches:
                self.backbone(x)
            sums = [layer.cov_sum for layer in layers]
            count = layers[0].cov_count
        finally:
            for layer in layers:
                layer.collecting, layer.cov_sum, layer.cov_count = False, None, 0
        if count == 0 or any(s is None for s in sums):
            raise RuntimeError("InfLoRA: no images to take the layer inputs' covariance from")
        return [s.cpu() for s in sums if s is not None], count

    # ------------------------------------------------------------------ before a task: design A
    def adaptation(self, experience) -> None:
        super().adaptation(experience)
        if not self.training:  # evaluation experiences adapt too: nothing is designed from them
            return
        new = sorted(int(t) for t in experience.task_labels if int(t) not in self.designed)
        for task in new:
            self.design_task(task, experience.dataset.eval())

    @torch.no_grad()
    def design_task(self, task: int, dataset) -> None:
        """Set task ``task``'s ``A`` in every layer from one pass over ``dataset`` (its images, un-augmented)."""
        device = next(self.backbone.parameters()).device
        saved = rng_state()  # the pass draws nothing from the run's generators (a DataLoader seeds itself)
        was_training = self.training
        self.eval()
        try:
            loader = DataLoader(dataset, batch_size=DESIGN_BATCH, shuffle=False)
            batches = (x[t == task].to(device) for x, _, t in loader if bool((t == task).any()))
            sums, count = self._covariances(batches)
        finally:
            self.train(was_training)
            set_rng_state(saved)
        for layer, s, memory, kind in zip(self.layers(), sums, self.memory, self.memory_kind):
            a = design_down_projection(s / count, memory, kind, self.rank)
            layer.branch(task).lora_A.copy_(a.to(layer.branch(task).lora_A))
        self.designed.append(task)

    # ------------------------------------------------------------------ after a task: update the memory
    @torch.no_grad()
    def observe_training_data(self, x: torch.Tensor, y: torch.Tensor, task_labels: torch.Tensor) -> None:
        for task in task_labels.unique().tolist():
            if task in self.memorised or task not in self.designed:
                continue
            sums, count = self._covariances([x[task_labels == task]])
            before = self._observed.get(task)
            self._observed[task] = sums if before is None else [a + b for a, b in zip(before, sums)]
            self._observed_count[task] = self._observed_count.get(task, 0) + count

    def end_task(self, task: int, prototype: Optional[torch.Tensor] = None) -> None:
        super().end_task(task, prototype)
        if task in self.memorised or task not in self.designed:
            return
        if task not in self._observed:
            raise RuntimeError(f"InfLoRA: task {task} ended without its training images passing through "
                               "observe_training_data: the gradient memory cannot be updated")
        sums, count = self._observed.pop(task), self._observed_count.pop(task)
        thresh = threshold(self.lamb, self.lame, self.designed.index(task), self.total_sessions)
        for i, s in enumerate(sums):
            self.memory[i], self.memory_kind[i] = dual_gpm_update(self.memory[i], self.memory_kind[i], s / count,
                                                                  thresh)
        self.memorised.append(task)

    # ------------------------------------------------------------------ checkpoints
    def get_extra_state(self):
        state = super().get_extra_state()
        state["inflora"] = {"memory": [None if m is None else m.cpu() for m in self.memory],
                            "memory_kind": list(self.memory_kind), "designed": list(self.designed),
                            "memorised": list(self.memorised)}
        return state

    def set_extra_state(self, state) -> None:
        super().set_extra_state(state)
        own = state.get("inflora")
        if own is None:
            return
        self.memory = [None if m is None else m.to(torch.float64) for m in own["memory"]]
        self.memory_kind = [str(k) for k in own["memory_kind"]]
        self.designed = [int(t) for t in own["designed"]]
        self.memorised = [int(t) for t in own["memorised"]]
