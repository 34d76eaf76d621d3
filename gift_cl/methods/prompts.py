"""The prompt-based class-incremental baselines L2P, DualPrompt and CODA-Prompt, as the CODA-Prompt paper ran them.

Source: the official CODA-Prompt repository (github.com/GT-RIPL/CODA-Prompt): ``models/zoo.py`` holds the three
prompt modules (``L2P``, ``DualPrompt``, ``CodaPrompt``), ``models/vit.py`` how a ViT uses them, ``learners/prompt.py``
and ``trainer.py`` how they train; the hyper-parameters are those of its ``experiments/*.sh`` (``--prompt_param``)
and ``configs/*_prompt.yaml``. The three share one mechanism, written once here (:class:`PromptPoolModel`):

* the **query** is the frozen ViT's [CLS] feature of a first pass without prompts (``torch.no_grad``);
* from the query each method builds, for each prompted layer, **prefix-tuning** prompts: the first half of a
  prompt of length ``L`` is prepended to that layer's attention keys, the second half to its values (after the
  qkv projection, split over the heads; the sequence and so the pooled [CLS] output keep their length);
* the second pass, with the prompts, gives the feature the classifier reads;
* the prompt loss of every prompted layer (summed over layers, as ``models/vit.py`` sums it) is added to the
  cross-entropy: L2P's and DualPrompt's key pull ``Σ (1 − cos(query, key))``, CODA-Prompt's orthogonality
  penalty. It reaches the training loss through :meth:`PromptPoolModel.penalty` (the strategy adds the model's
  penalty to the loss of the forward pass it just ran).

What each method selects (``models/zoo.py``):

* :class:`L2P` (L2P++ of the CODA-Prompt paper: prefix-tuning, not prompt-tuning): one pool of ``pool_size``
  prompts with keys, the ``top_k`` keys most cosine-similar to the query chosen at training and at test; the
  pool and keys train on every task.
* :class:`DualPrompt`: G-prompts (shared by all tasks) in ``g_layers``; an E-prompt pool of ``pool_size`` (one
  per task) with keys in ``e_layers``. In training the E-prompt is the task's own (task id, and the pull loss
  pulls the task's key to the queries); at test each E-layer takes its top-1 key (every key of the pool, as the
  official code matches them).
* :class:`CodaPrompt`: a pool of ``pool_size`` components, ``pool_size // num_tasks`` per task, each with a key
  and an attention vector; the prompt is the components weighted by ``cos(query ⊙ attention, key)``
  (no selection, end-to-end differentiable). In training only the current task's components train, the earlier
  tasks' enter detached, the later ones not at all; at test every seen task's components are used. A task's
  components are initialised when the task arrives, orthonormal (Gram-Schmidt of Gaussian vectors) to the
  earlier ones; the not yet seen ones are zero.

Prediction. At test the prompts depend on the query only, never on a task id: ``features(x, None)`` (and
``features(x, t)`` in eval mode) is that path, so :attr:`shared_features` is True, and the base class's
``class_incremental_logits`` (``infer_task="auto"`` → ``max_logit``) puts the per-task heads side by side over one
forward pass: one growing linear classifier over every seen class, which is the official single head with the
logits of unseen classes masked (``logits[:, :valid_out_dim]``). In training the official code also masks the
logits of the earlier tasks' classes (``logits[:, :last_valid_out_dim] = -inf``), so a task's cross-entropy is over
its own classes only: our per-task heads do the same by construction (a task trains its own head only, the
earlier heads are frozen, as the masked rows of the official head receive no gradient).

Where the project differs, and why:

* Per-task slices of a pool are separate parameters (DualPrompt's E-prompts and keys per task, CODA-Prompt's
  components, keys and attention vectors per task), and only the current task's train. The official code keeps
  one tensor per pool and sends the earlier rows zero gradients (detach / not selected), which leaves them
  unchanged under its Adam without weight decay; separate parameters keep them unchanged bit for bit under any
  optimizer (the project's AdamW decays every parameter it is given). The pool, keys and attention vectors are
  created at construction (shared trainable parts: checkpointed, :meth:`shared_parameters`).
* The task id of a training batch is the task's position among the tasks the model knows (stream order), the
  official ``trainer.py``'s ``task_id = i``.
* The prompted layers are arguments (the official code hard-codes ``[0..4]``, ``[0]``, ``[0, 1]`` / ``[2, 3, 4]``),
  so the small test backbones can run the methods; the defaults are the official layers.
* The optimizer and schedule are the project's (AdamW, cosine with warm-up), with the official Adam's
  learning rate 1e-3 in the configs (its weight decay 0 is ``optim.weight_decay=0``); epochs and batch size are
  the run's.
* The classifier heads are initialised as every method's in the project (truncated normal, std 0.02), the
  official head as ``nn.Linear``.

Two things of the official code are kept as they are, because the paper's numbers were run with them: L2P's
pull loss indexes ``cos_sim[:, k_idx]`` with the (batch, top_k) index matrix, so it sums ``1 − cos`` of every query
of the batch with the keys chosen by every query (batch × batch × top_k terms), and both pull losses are sums over
the batch (not means); DualPrompt and L2P initialise prompts and keys uniform in [0, 1) (``tensor_prompt``).
"""
from __future__ import annotations

import abc
import types
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .addon import check_token_pooling
from .attention import attention_with_core
from .base import FrozenBackboneModel

Prefix = tuple[torch.Tensor, torch.Tensor]  # (keys, values) to prepend, each (B, length, D)


class _PassState:
    """What a forward pass shares between the model and its patched attention layers: the prefixes of the pass
    being run (``{layer: (keys, values)}``) and the prompt loss of the passes since the model's last ``forward``.
    Not state: a copy (``copy.deepcopy``, pickle) starts empty (a loss holding a graph cannot be copied)."""

    def __init__(self) -> None:
        self.prefixes: dict[int, Prefix] = {}
        self.loss: torch.Tensor | float = 0.0

    def __reduce__(self):
        return (_PassState, ())


def _prefix_attention_forward(attn: Any, x: torch.Tensor, attn_mask: Optional[torch.Tensor] = None,
                              is_causal: bool = False) -> torch.Tensor:
    """timm ``Attention.forward`` with the pass's prefix keys and values of this layer prepended to the heads'
    keys and values (as ``Attention.forward(prompt=[pk, pv])`` of the official ``models/vit.py``)."""
    prefix = attn.__dict__["_prompt_state"].prefixes.get(attn.__dict__["_prompt_layer"])

    def prefixed_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B = q.shape[0]
        pk, pv = (p.to(k.dtype).reshape(B, -1, attn.num_heads, attn.head_dim).transpose(1, 2) for p in prefix)
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        if getattr(attn, "fused_attn", True):
            return F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0)
        maps = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        return attn.attn_drop(maps) @ v

    return attention_with_core(
        attn, x, attn_mask, is_causal, None if prefix is None else prefixed_heads,
        mask_refusal="prefix prompts extend the keys and values; this backbone passed an attention mask "
                     "(masked or causal attention), which they do not handle")


def _depth(backbone: nn.Module) -> int:
    blocks: Any = backbone.blocks
    return len(blocks)


def _layers(layers: Sequence[int], depth: int, who: str) -> list[int]:
    out = [int(layer) for layer in layers]
    if any(not 0 <= layer < depth for layer in out) or len(set(out)) != len(out):
        raise ValueError(f"{who}: prompted layers must be distinct blocks of this {depth}-block ViT, got {out}")
    return out


def _even_length(length: int, who: str) -> int:
    if length < 2 or length % 2:
        raise ValueError(f"{who}: a prefix prompt's length is split in keys and values, so it must be even and "
                         f">= 2, got {length}")
    return int(length)


def _uniform(*shape: int) -> nn.Parameter:
    """The official ``tensor_prompt``: uniform in [0, 1)."""
    return nn.Parameter(torch.empty(*shape).uniform_())


def _ortho_penalty(t: torch.Tensor) -> torch.Tensor:
    """The official ``ortho_penalty``: mean squared deviation of the rows' Gram matrix from the identity."""
    return ((t @ t.T - torch.eye(t.shape[0], device=t.device, dtype=t.dtype)) ** 2).mean()


def orthonormal_rows(previous: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` unit rows of Gaussian vectors, orthogonal to the rows of ``previous`` (m, n) and to each other by
    classical Gram-Schmidt: the official ``CodaPrompt.gram_schmidt`` for one task's slice."""
    basis = [row for row in previous if float(row.pow(2).sum()) >= 1e-8]
    new: list[torch.Tensor] = []
    for _ in range(count):
        v = torch.randn(previous.shape[1], dtype=previous.dtype, device=previous.device)
        if basis or new:
            rows = torch.stack(basis + new)
            v = v - ((rows @ v) / rows.pow(2).sum(1)) @ rows
        new.append(v)
    out = torch.stack(new)
    return out / out.norm(dim=1, keepdim=True)


class PromptPoolModel(FrozenBackboneModel):
    """The shared machinery: the query pass, prefix prompts in the prompted layers' attention, the prompt loss.

    A subclass lists its ``prompted_layers`` and builds one layer's prompts in :meth:`layer_prompt`."""

    shared_features = True

    def __init__(self, backbone: nn.Module, prompted_layers: Sequence[int]):
        super().__init__(backbone)
        check_token_pooling(self.backbone, type(self).__name__)  # the query is the [CLS] feature
        self.prompted_layers = sorted(prompted_layers)
        self._state = _PassState()
        for layer in self.prompted_layers:
            blocks: Any = self.backbone.blocks
            attn = blocks[layer].attn
            # instance-level forward and __dict__ entries: no new submodules, state-dict keys unchanged
            attn.__dict__["_prompt_state"] = self._state
            attn.__dict__["_prompt_layer"] = layer
            attn.forward = types.MethodType(_prefix_attention_forward, attn)

    # --------------------------------------------------------------- what a prompt method provides
    @abc.abstractmethod
    def layer_prompt(self, query: torch.Tensor, layer: int, train: bool,
                     slot: int) -> tuple[Optional[Prefix], torch.Tensor | float]:
        """Layer ``layer``'s prefix ``(keys, values)`` (each (B, length, D)) for the queries (B, D) and its loss term:
        the official ``prompt.forward(q, layer, x, train, task_id)``. ``slot`` is the position of the task that
        trains (``train``), else of the last task seen."""

    # --------------------------------------------------------------- the forward pass
    def slot(self, task: int) -> int:
        """The position of ``task`` among the tasks the model knows (stream order): its task id in the official code."""
        return self.tasks.index(int(task))

    def query(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen ViT's [CLS] feature, without prompts (the official first pass)."""
        with torch.no_grad():
            return self.backbone(x)

    def prompts(self, query: torch.Tensor, train: bool, slot: int) -> tuple[dict[int, Prefix], torch.Tensor | float]:
        """Every prompted layer's prefix and the summed loss."""
        prefixes: dict[int, Prefix] = {}
        loss: torch.Tensor | float = 0.0
        for layer in self.prompted_layers:
            prefix, term = self.layer_prompt(query, layer, train, slot)
            if prefix is not None:
                prefixes[layer] = prefix
            loss = loss + term
        return prefixes, loss

    def features(self, x: torch.Tensor, task: Optional[int]) -> torch.Tensor:
        """Training (train mode with a task): the task's prompts and its loss. Otherwise the test-time path: the
        prompts the query chooses, whatever ``task`` is."""
        train = self.training and task is not None
        slot = self.slot(task) if train and task is not None else len(self.tasks) - 1
        prefixes, loss = self.prompts(self.query(x), train, slot)
        self._state.prefixes = prefixes
        try:
            feats = self.backbone(x)
        finally:
            self._state.prefixes = {}
        if train:
            self._state.loss = self._state.loss + loss
        return feats

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor, task_labels) -> torch.Tensor | dict:
        self._state.loss = 0.0  # the penalty is the prompt loss of this forward pass
        return super().forward(x, task_labels)

    def penalty(self) -> torch.Tensor | float:
        """The prompt loss of the last forward pass in training (summed over the prompted layers), else 0."""
        return self._state.loss if self.training else 0.0


class L2P(PromptPoolModel):
    """L2P (Wang et al., CVPR 2022) as L2P++ of the CODA-Prompt paper: a pool of ``pool_size`` prefix prompts of
    length ``length`` with keys; each image takes the ``top_k`` prompts whose keys are most cosine-similar to its
    query, in ``layers``. Official (``experiments/*.sh``: ``--prompt_param 30 20 -1``; ``zoo.py``): pool 30, length 20,
    top-5, shallow (layer 0). The pool and keys train on every task (shared parameters)."""

    def __init__(self, backbone: nn.Module, pool_size: int = 30, length: int = 20, top_k: int = 5,
                 layers: Sequence[int] = (0,)):
        super().__init__(backbone, _layers(layers, _depth(backbone), "L2P"))
        if not 1 <= top_k <= pool_size:
            raise ValueError(f"L2P: top_k must be in [1, pool_size={pool_size}], got {top_k}")
        self.pool_size, self.length, self.top_k = pool_size, _even_length(length, "L2P"), top_k
        n = len(self.prompted_layers)
        self.prompt_pool = _uniform(n, pool_size, self.length, self.feature_dim)
        self.prompt_keys = _uniform(n, pool_size, self.feature_dim)

    def shared_parameters(self, task: int) -> list[nn.Parameter]:
        return [self.prompt_pool, self.prompt_keys]

    def layer_prompt(self, query, layer, train, slot):
        if layer not in self.prompted_layers:
            return None, 0.0
        i = self.prompted_layers.index(layer)
        p, keys = self.prompt_pool[i], self.prompt_keys[i]
        cos = torch.einsum("bj,kj->bk", F.normalize(query, dim=1).detach(), F.normalize(keys, dim=1))
        idx = cos.topk(self.top_k, dim=1).indices  # (B, top_k)
        chosen = p[idx]  # (B, top_k, L, D)
        half, B = self.length // 2, query.shape[0]
        prefix = (chosen[:, :, :half].reshape(B, -1, self.feature_dim),
                  chosen[:, :, half:].reshape(B, -1, self.feature_dim))
        # the official indexing: cos[:, idx] is (B, B, top_k), every query against every query's chosen keys
        return prefix, (1.0 - cos[:, idx]).sum() if train else 0.0


class DualPrompt(PromptPoolModel):
    """DualPrompt (Wang et al., ECCV 2022): G-prompts of length ``g_length`` shared by every task in ``g_layers``;
    E-prompts of length ``length`` with keys, one per task (a pool of ``pool_size``), in ``e_layers``: the task's own
    in training, the top-1 key match at test. Official (``experiments/*.sh``: ``--prompt_param 10 20 6``;
    ``zoo.py``): E-pool 10 (the number of tasks), E length 20 in layers 2-4, G length 6 in layers 0-1."""

    def __init__(self, backbone: nn.Module, pool_size: int = 10, length: int = 20, g_length: int = 6,
                 e_layers: Sequence[int] = (2, 3, 4), g_layers: Sequence[int] = (0, 1)):
        depth = _depth(backbone)
        e, g = _layers(e_layers, depth, "DualPrompt"), _layers(g_layers, depth, "DualPrompt")
        super().__init__(backbone, sorted(set(e) | set(g)))
        if pool_size < 1:
            raise ValueError(f"DualPrompt: pool_size must be >= 1, got {pool_size}")
        self.e_layers, self.g_layers = e, g
        self.pool_size, self.length = pool_size, _even_length(length, "DualPrompt")
        self.g_length = _even_length(g_length, "DualPrompt") if g else g_length
        d = self.feature_dim
        # one E-prompt and key per task (a slot of the official pool), created now: shared trainable parts
        self.e_prompts = nn.ParameterList([_uniform(len(e), self.length, d) for _ in range(pool_size)])
        self.e_keys = nn.ParameterList([_uniform(len(e), d) for _ in range(pool_size)])
        self.g_prompts = _uniform(len(g), max(self.g_length, 0), d)

    def slot(self, task: int) -> int:
        slot = super().slot(task)
        if slot >= self.pool_size:
            raise ValueError(f"DualPrompt has one E-prompt per task (pool_size={self.pool_size}); task {task} is "
                             f"task number {slot + 1}: raise strategy.method.pool_size")
        return slot

    def add_task_parts(self, task: int) -> None:
        self.slot(task)  # refuse a task beyond the pool now, not at its first step

    def shared_parameters(self, task: int) -> list[nn.Parameter]:
        slot = self.slot(task)
        return [self.e_prompts[slot], self.e_keys[slot]] + ([self.g_prompts] if self.g_layers else [])

    def layer_prompt(self, query, layer, train, slot):
        B, d = query.shape[0], self.feature_dim
        parts: list[Prefix] = []
        loss: torch.Tensor | float = 0.0
        if layer in self.e_layers:
            i = self.e_layers.index(layer)
            keys = torch.stack([k[i] for k in self.e_keys])
            cos = torch.einsum("bj,kj->bk", F.normalize(query, dim=1).detach(), F.normalize(keys, dim=1))
            half = self.length // 2
            if train:  # the task's own E-prompt, its key pulled to the queries
                loss = (1.0 - cos[:, slot]).sum()
                chosen = self.e_prompts[slot][i].expand(B, -1, -1)
                parts.append((chosen[:, :half], chosen[:, half:]))
            else:
                pool = torch.stack([p[i] for p in self.e_prompts])
                chosen = pool[cos.topk(1, dim=1).indices]  # (B, 1, L, D)
                parts.append((chosen[:, :, :half].reshape(B, -1, d), chosen[:, :, half:].reshape(B, -1, d)))
        if layer in self.g_layers:
            g = self.g_prompts[self.g_layers.index(layer)].expand(B, -1, -1)
            half = self.g_length // 2
            parts.append((g[:, :half], g[:, half:]))
        if not parts:
            return None, 0.0
        return (torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)), loss


class CodaPrompt(PromptPoolModel):
    """CODA-Prompt (Smith et al., CVPR 2023): a pool of ``pool_size`` prompt components of length ``length`` with keys
    and attention vectors in ``layers``, ``pool_size // num_tasks`` per task; the prompt is the components weighted
    by the cosine of the attended query to their keys. ``ortho_weight`` weighs the orthogonality penalty on the
    components, keys and attention vectors of the training pass. Official (``experiments/*.sh``:
    ``--prompt_param 100 8 0.0``, "ortho penalty loss weight - with updated code, now can be 0"; ``zoo.py``): 100
    components, length 8, layers 0-4, weight 0; ``num_tasks`` is the stream's task count there (10 in the
    CIFAR-100 and ImageNet-R runs), an argument here (the model does not know the stream)."""

    def __init__(self, backbone: nn.Module, pool_size: int = 100, length: int = 8, ortho_weight: float = 0.0,
                 num_tasks: int = 10, layers: Sequence[int] = (0, 1, 2, 3, 4)):
        super().__init__(backbone, _layers(layers, _depth(backbone), "CODA-Prompt"))
        if not 1 <= num_tasks <= pool_size:
            raise ValueError(f"CODA-Prompt: num_tasks must be in [1, pool_size={pool_size}], got {num_tasks}")
        self.pool_size, self.length, self.num_tasks = pool_size, _even_length(length, "CODA-Prompt"), num_tasks
        self.ortho_weight = ortho_weight
        self.per_task = pool_size // num_tasks  # the official int(e_pool_size / n_tasks)
        n, d = len(self.prompted_layers), self.feature_dim
        # each task's slice of the pool: components, keys, attention vectors (zero until the task arrives)
        self.components = nn.ParameterList([nn.Parameter(torch.zeros(n, self.per_task, self.length, d))
                                            for _ in range(num_tasks)])
        self.keys = nn.ParameterList([nn.Parameter(torch.zeros(n, self.per_task, d)) for _ in range(num_tasks)])
        self.attention = nn.ParameterList([nn.Parameter(torch.zeros(n, self.per_task, d)) for _ in range(num_tasks)])
        self.init_slice(0)  # the official constructor orthonormalises the first task's slice

    def slot(self, task: int) -> int:
        slot = super().slot(task)
        if slot >= self.num_tasks:
            raise ValueError(f"CODA-Prompt's pool is split for num_tasks={self.num_tasks} tasks; task {task} is task "
                             f"number {slot + 1}: raise strategy.method.num_tasks")
        return slot

    @torch.no_grad()
    def init_slice(self, slot: int) -> None:
        """Task ``slot``'s components, keys and attention vectors: Gaussian, orthonormalised (Gram-Schmidt) against
        the earlier tasks' (the official ``process_task_count``), per layer."""
        for params in (self.components, self.keys, self.attention):
            for i in range(len(self.prompted_layers)):
                earlier = [p[i].reshape(self.per_task, -1) for p in list(params)[:slot]]
                previous = torch.cat(earlier) if earlier else params[0][i].reshape(self.per_task, -1)[:0]
                new = orthonormal_rows(previous, self.per_task)
                params[slot][i].copy_(new.reshape(params[slot][i].shape))

    def add_task_parts(self, task: int) -> None:
        slot = self.slot(task)
        if slot > 0:
            self.init_slice(slot)

    def shared_parameters(self, task: int) -> list[nn.Parameter]:
        slot = self.slot(task)
        return [self.components[slot], self.keys[slot], self.attention[slot]]

    def layer_prompt(self, query, layer, train, slot):
        if layer not in self.prompted_layers or slot < 0:
            return None, 0.0
        i = self.prompted_layers.index(layer)

        def pool(params: nn.ParameterList) -> torch.Tensor:  # slices 0..slot, the earlier ones detached in training
            return torch.cat([params[s][i].detach() if train and s < slot else params[s][i] for s in range(slot + 1)])

        keys, attention, components = pool(self.keys), pool(self.attention), pool(self.components)
        attended = torch.einsum("bd,kd->bkd", query, attention)
        weights = torch.einsum("bkd,kd->bk", F.normalize(attended, dim=2), F.normalize(keys, dim=1))
        prompt = torch.einsum("bk,kld->bld", weights, components)
        half = self.length // 2
        loss: torch.Tensor | float = 0.0
        if train and self.ortho_weight > 0:
            loss = (_ortho_penalty(keys) * self.ortho_weight + _ortho_penalty(attention) * self.ortho_weight
                    + _ortho_penalty(components.reshape(components.shape[0], -1)) * self.ortho_weight)
        return (prompt[:, :half], prompt[:, half:]), loss
