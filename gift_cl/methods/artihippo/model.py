"""ArtiHippo (Savadikar, Dai, Wu; arXiv 2303.08250): a mixture of experts grown in the final projection of
every attention block (``blocks.l.attn.proj``) of a frozen ViT, one architecture per task.

For each task and block the architecture holds one operation (:mod:`gift_cl.methods.artihippo.search` finds it):

- ``reuse`` an old expert as it is (``source``: the old task whose expert it is, or ``-1``, the pretrained
  projection, which every task may reuse or adapt like an old task's expert);
- ``adapt`` an old expert with a light task-specific residual: a LoRA ``B·A`` (``adapt: lora``) or a residual
  ``ΔW = G_t(W_old)`` that the task's own GIFT generator reads from the old expert's weights
  (``adapt: gift``; ψ starts at zero, so adapt starts exactly at reuse);
- ``new``: a new expert of the task (``new_init: random`` as CHEEM, or ``pretrained``: a copy of the
  pretrained projection, which then starts exactly at the frozen model);
- ``skip``: the block's attention sub-block is bypassed (``x + MLP(norm2(x))`` only).

An *expert* is named by the task that created it (``new``, ``adapt``) or ``-1`` (pretrained); a ``reuse``
points to the reused task, whose expert may itself be a reuse (resolved by :meth:`expert_id`). Old tasks'
experts never train again: a task's parameters are its new experts, its adapters / generator and its
classifier, so old tasks' outputs do not change (zero forgetting, bit for bit). A task's long-term memory is
its architecture, those parameters and its mean frozen [CLS] feature (``prototypes``, the base class's
task-id inference and the search's task similarity).

Module layout (state-dict keys): ``backbone.blocks.l.attn.proj`` is an :class:`ExpertPool` with ``base``
(pretrained, frozen), ``experts[str(t)]`` (``new``) and ``lora[str(t)]`` (``adapt: lora``); GIFT generators
are ``generators[str(t)]``. The architecture lives in the extra state: a checkpoint rebuilds a task's modules
from it before they are loaded. Keys starting with ``search`` belong to the supernet during a search only.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

from ...gift import GiftConfig, GiftGenerator
from ...lora import LoraAdapter
from ..base import FrozenBackboneModel
from .arch import ADAPTS, NEW_INITS, OPS, PRETRAINED, SEARCH, Arch, source_key
from .report import write_report

if TYPE_CHECKING:
    from timm.models.vision_transformer import Block, VisionTransformer


class ExpertPool(nn.Module):
    """Replaces ``attn.proj``: the pretrained projection plus the experts and adapters tasks grew. The model
    hands it a ``route`` (the expert of the task being run) for the duration of one forward pass."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.experts = nn.ModuleDict()  # str(task) -> nn.Linear: the task's new expert
        self.lora = nn.ModuleDict()  # str(task) -> LoraAdapter: the task's adapter of an old expert
        self.route: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) if self.route is None else self.route(x)


class ArtiHippo(FrozenBackboneModel):
    """Per task, one operation per block over a growing pool of ``attn.proj`` experts; see the module doc."""

    def __init__(self, backbone: nn.Module, adapt: str = "lora", new_init: str = "random",
                 ops: Sequence[str] = OPS, pretrained_expert: bool = True, lora_rank: int = 8,
                 lora_alpha: float = 1.0, gift: Optional[dict] = None):
        if adapt not in ADAPTS:
            raise ValueError(f"adapt={adapt!r}: expected one of {ADAPTS}")
        if new_init not in NEW_INITS:
            raise ValueError(f"new_init={new_init!r}: expected one of {NEW_INITS}")
        ops = tuple(ops)
        if not ops or set(ops) - set(OPS):
            raise ValueError(f"ops={list(ops)}: must be a non-empty subset of {list(OPS)}")
        if not ({"new", "skip"} & set(ops)) and not pretrained_expert:
            raise ValueError("the first task needs an operation without an old expert: put new or skip in ops, "
                             "or keep pretrained_expert=true")
        super().__init__(backbone)
        self.adapt, self.new_init, self.ops = adapt, new_init, ops
        self.pretrained_expert = pretrained_expert
        self.lora_rank, self.lora_alpha = lora_rank, lora_alpha
        gift = dict(gift or {})
        gift.setdefault("rank", 16)
        gift.setdefault("depth", 0)
        gift.setdefault("positional_encoding", False)
        self.gift_config = GiftConfig(**{**gift, "target_modules": ("attn.proj",)})
        self.pools: list[ExpertPool] = []
        for blk in self._vit().blocks:
            attn = cast("Block", blk).attn  # timm's ViT blocks
            attn.proj = ExpertPool(cast(nn.Linear, attn.proj))  # typed Module: a ViT's attention projection
            self.pools.append(attn.proj)
        self.generators = nn.ModuleDict()  # str(task) -> GiftGenerator (adapt: gift)
        with torch.random.fork_rng(devices=[]):  # counting a generator's parameters draws no random numbers
            self._generator_params = sum(p.numel() for p in self._new_generator().parameters())
        self.arch: dict[int, Arch] = {}
        self.search_log: dict[int, dict] = {}  # what the search saw and chose, per task (for the report)
        # per task, the mean [CLS] token after every block along its own path (depth, D): the per-layer similarity
        self.layer_prototypes: dict[int, torch.Tensor] = {}

    def _vit(self) -> VisionTransformer:
        """The backbone, a timm ViT (typed nn.Module): ArtiHippo runs its blocks one by one."""
        return cast("VisionTransformer", self.backbone)

    @property
    def depth(self) -> int:
        return len(self.pools)

    @property
    def proj_shape(self) -> tuple[int, int]:
        return cast("tuple[int, int]", tuple(self.pools[0].base.weight.shape))  # (d_out, d_in): a Linear's is 2-D

    # ------------------------------------------------------------------ architectures and their modules
    def validate_arch(self, arch: Arch, old_tasks: Sequence[int]) -> Arch:
        arch = [(str(op), None if src is None else int(src)) for op, src in arch]
        if len(arch) != self.depth:
            raise ValueError(f"an architecture has one operation per block ({self.depth}), got {len(arch)}")
        for l, (op, src) in enumerate(arch):
            if op not in self.ops:
                raise ValueError(f"block {l}: operation {op!r} is not in this search space {list(self.ops)}")
            if op in ("reuse", "adapt"):
                if src not in self.sources(l, old_tasks):
                    raise ValueError(f"block {l}: {op} of {src}, which has no expert there")
            elif src is not None:
                raise ValueError(f"block {l}: {op} takes no source")
        return arch

    def sources(self, block: int, tasks: Optional[Sequence[int]] = None) -> list[int]:
        """Old experts available at ``block``: the pretrained projection and every (given) task that did not
        skip it. Two sources may name the same expert (a reuse); :meth:`candidates` dedupes them."""
        tasks = sorted(self.arch) if tasks is None else tasks
        out = [PRETRAINED] if self.pretrained_expert else []
        return out + [t for t in tasks if self.arch[t][block][0] != "skip"]

    def expert_id(self, block: int, task: int):
        """The expert ``task`` runs at ``block``: ``("pre",)``, ``("new", key)``, ``("adapt", key, parent)``
        (``parent`` an expert id) or ``None`` (skip). Reuses resolve to the expert they reuse."""
        if task == PRETRAINED:
            return ("pre",)
        op, src = self.arch[task][block]
        if op == "skip":
            return None
        if op == "new":
            return ("new", str(task))
        assert src is not None, f"block {block}: {op} names no source"  # validate_arch: reuse and adapt name one
        if op == "reuse":
            return self.expert_id(block, src)
        return ("adapt", str(task), self.expert_id(block, src))

    def candidates(self, block: int, tasks: Optional[Sequence[int]] = None) -> dict[int, list[int]]:
        """Distinct old experts at ``block``: {owner source: [tasks that run it]} (owner = first source that
        names it; the pretrained expert lists the tasks that reuse it)."""
        out: dict[int, list[int]] = {}
        ids: dict = {}
        for src in self.sources(block, tasks):
            eid = self.expert_id(block, src)
            owner = ids.setdefault(eid, src)
            out.setdefault(owner, [])
            if src != PRETRAINED:
                out[owner].append(src)
        return out

    def _new_linear(self) -> nn.Linear:
        base = self.pools[0].base
        lin = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
        return lin.to(base.weight.device, base.weight.dtype)

    def _init_new(self, lin: nn.Linear, block: int) -> nn.Linear:
        with torch.no_grad():
            if self.new_init == "pretrained":
                lin.weight.copy_(self.pools[block].base.weight)
                if lin.bias is not None:
                    lin.bias.copy_(self.pools[block].base.bias)
            else:  # timm's ViT initialisation of a linear layer
                nn.init.trunc_normal_(lin.weight, std=0.02)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)
        return lin

    def _new_lora(self) -> LoraAdapter:
        d_out, d_in = self.proj_shape
        return LoraAdapter(d_in, d_out, self.lora_rank, self.lora_alpha).to(self.pools[0].base.weight.device)

    def _new_generator(self) -> GiftGenerator:
        d_out, d_in = self.proj_shape
        return GiftGenerator(self.gift_config, d_in=d_in, d_out=d_out).to(self.pools[0].base.weight.device)

    def _build_task_modules(self, task: int) -> None:
        """Create (freshly initialised) the modules ``task``'s architecture needs; idempotent."""
        key = str(task)
        for l, (op, _) in enumerate(self.arch[task]):
            pool = self.pools[l]
            if op == "new" and key not in pool.experts:
                pool.experts[key] = self._init_new(self._new_linear(), l)
            if op == "adapt" and self.adapt == "lora" and key not in pool.lora:
                pool.lora[key] = self._new_lora()
        if self.adapt == "gift" and any(op == "adapt" for op, _ in self.arch[task]) and key not in self.generators:
            self.generators[key] = self._new_generator()
        self.requires_grad_(False)

    def set_architecture(self, task: int, arch: Arch, search_log: Optional[dict] = None) -> None:
        """Fix ``task``'s architecture (old tasks' experts only) and create its parts, freshly initialised."""
        if task in self.arch:
            raise ValueError(f"task {task} already has an architecture")
        self.arch[task] = self.validate_arch(arch, [t for t in sorted(self.arch)])
        if search_log is not None:
            self.search_log[task] = search_log
        self._build_task_modules(task)

    def has_architecture(self, task: int) -> bool:
        return task in self.arch

    def add_task_parts(self, task: int) -> None:
        if task in self.arch:  # a restored checkpoint builds them from the extra state instead
            self._build_task_modules(task)

    def begin_task(self, tasks) -> None:
        missing = [t for t in tasks if t not in self.arch]
        if missing:
            raise RuntimeError(f"ArtiHippo task(s) {missing} have no architecture: train with strategy=artihippo "
                               f"(the search plugin), or call set_architecture() first")
        super().begin_task(tasks)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        key = str(task)
        own = super().task_parameters(task)
        for pool in self.pools:
            for d in (pool.experts, pool.lora):
                if key in d:
                    own += list(d[key].parameters())
        if key in self.generators:
            own += list(self.generators[key].parameters())
        return own

    # ------------------------------------------------------------------ supernet parts (search only)
    def add_search_modules(self, lora_sources: Sequence[Sequence[int]]) -> None:
        """The supernet's own parts for the task being searched: a new expert per block (``new_init``), an
        adapter per block and old expert (LoRA) or one generator (GIFT). Dropped by :meth:`drop_search_modules`."""
        for l, pool in enumerate(self.pools):
            if "new" in self.ops:
                pool.experts[SEARCH] = self._init_new(self._new_linear(), l)
            if "adapt" in self.ops and self.adapt == "lora":
                for src in lora_sources[l]:
                    pool.lora[f"{SEARCH}_{source_key(src)}"] = self._new_lora()
        if "adapt" in self.ops and self.adapt == "gift":
            self.generators[SEARCH] = self._new_generator()
        self.requires_grad_(False)

    def search_parameters(self) -> list[nn.Parameter]:
        params = [p for pool in self.pools for d in (pool.experts, pool.lora) for k, m in d.items()
                  if k.startswith(SEARCH) for p in m.parameters()]
        if SEARCH in self.generators:
            params += list(self.generators[SEARCH].parameters())
        return params

    def drop_search_modules(self) -> None:
        for pool in self.pools:
            for d in (pool.experts, pool.lora):
                for k in [k for k in d if k.startswith(SEARCH)]:
                    del d[k]
        if SEARCH in self.generators:
            del self.generators[SEARCH]

    def search_path(self, arch: Arch) -> list:
        """Expert ids of a supernet path: old experts as they are; ``new``/``adapt`` use the supernet's parts."""
        path: list = []
        for l, (op, src) in enumerate(arch):
            if op == "skip":
                path.append(None)
            elif op == "new":
                path.append(("new", SEARCH))
            elif op == "reuse":
                assert src is not None, f"block {l}: reuse names no source"
                path.append(self.expert_id(l, src))
            else:
                assert src is not None, f"block {l}: {op} names no source"
                key = f"{SEARCH}_{source_key(src)}" if self.adapt == "lora" else SEARCH
                path.append(("adapt", key, self.expert_id(l, src)))
        return path

    # ------------------------------------------------------------------ forward
    def _delta(self, pool: ExpertPool, key: str, parent) -> torch.Tensor:
        """The adapter ``key``'s residual weight on ``parent`` (GIFT reads the parent expert's weight)."""
        if self.adapt == "lora":
            return cast(LoraAdapter, pool.lora[key]).delta_weight()  # nn.ModuleDict is typed Module
        weight = self._weight(pool, parent)
        return self.generators[key](weight.unsqueeze(0))[0]

    def _weight(self, pool: ExpertPool, eid) -> torch.Tensor:
        if eid[0] == "pre":
            return pool.base.weight
        if eid[0] == "new":
            return cast(nn.Linear, pool.experts[eid[1]]).weight  # nn.ModuleDict is typed Module
        return self._weight(pool, eid[2]) + self._delta(pool, eid[1], eid[2])

    def _expert_out(self, pool: ExpertPool, eid, x: torch.Tensor) -> torch.Tensor:
        kind = eid[0]
        if kind == "pre":
            return pool.base(x)
        if kind == "new":
            return pool.experts[eid[1]](x)
        y = self._expert_out(pool, eid[2], x)  # the adapted expert, then its residual (exactly reuse at start)
        if self.adapt == "lora":
            return y + pool.lora[eid[1]](x)
        return y + F.linear(x, self._delta(pool, eid[1], eid[2]))

    def run_path(self, x: torch.Tensor, path: Sequence, cls_tokens: Optional[list] = None) -> torch.Tensor:
        """The pooled [CLS] feature with block ``l`` running expert ``path[l]`` (``None``: skip the attention).
        ``cls_tokens``: a list that receives the [CLS] token after every block (the per-layer similarity)."""
        bb = self._vit()
        x = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(x))))
        for module, pool, eid in zip(bb.blocks, self.pools, path):
            blk = cast("Block", module)  # timm's ViT blocks (nn.Sequential items are typed Module)
            if eid is None:
                x = x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
            else:
                pool.route = lambda h, pool=pool, eid=eid: self._expert_out(pool, eid, h)
                try:
                    x = blk(x)
                finally:
                    pool.route = None
            if cls_tokens is not None:
                cls_tokens.append(x[:, 0])
        return bb.forward_head(bb.norm(x), pre_logits=True)

    def task_path(self, task: int) -> list:
        return [self.expert_id(l, task) for l in range(self.depth)]

    def features(self, x: torch.Tensor, task: Optional[int]) -> torch.Tensor:
        assert task is not None, "ArtiHippo's features depend on the task"  # as int(None) refused it
        return self.run_path(x, self.task_path(int(task)))

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    # ------------------------------------------------------------------ cost of an architecture
    def op_parameters(self, op: str) -> int:
        d_out, d_in = self.proj_shape
        if op == "new":
            return d_out * d_in + (d_out if self.pools[0].base.bias is not None else 0)
        if op == "adapt" and self.adapt == "lora":
            return self.lora_rank * (d_in + d_out)
        return 0

    def added_parameters(self, arch: Arch) -> int:
        """Parameters an architecture adds (classifier excluded): new experts, adapters, the GIFT generator."""
        n = sum(self.op_parameters(op) for op, _ in arch)
        if self.adapt == "gift" and any(op == "adapt" for op, _ in arch):
            n += self._generator_params
        return n

    def added_flops(self, arch: Arch) -> int:
        """Multiply-adds per token over the frozen model: skip saves the attention sub-block; an unmerged
        adapter adds its residual product. (A merged adapter costs nothing at test time.)"""
        d_out, d_in = self.proj_shape
        tokens = self._vit().patch_embed.num_patches + getattr(self.backbone, "num_prefix_tokens", 1)
        attention = 3 * d_in * d_in + 2 * tokens * d_in + d_out * d_in
        extra = {"skip": -attention, "reuse": 0, "new": 0,
                 "adapt": self.lora_rank * (d_in + d_out) if self.adapt == "lora" else d_out * d_in}
        return sum(extra[op] for op, _ in arch)

    # ------------------------------------------------------------------ report and checkpoints
    def architecture_report(self) -> dict:
        """Per task and block the chosen operation, the source task of a reuse/adapt, the expert it runs
        (the task that created it, -1 for the pretrained projection), and what each task added."""
        tasks = []
        for task in sorted(self.arch):
            blocks = [{"block": l, "op": op, "source": src,
                       "expert_owner": None if op == "skip" else self._owner(l, task)}
                      for l, (op, src) in enumerate(self.arch[task])]
            own = self.task_parameters(task) if str(task) in self.classifiers else []
            head = sum(p.numel() for p in self.classifiers[str(task)].parameters()) if own else 0
            tasks.append({"task": task, "blocks": blocks, "added_parameters": self.added_parameters(self.arch[task]),
                          "trainable_parameters": sum(p.numel() for p in own) - head,
                          "added_flops_per_token": self.added_flops(self.arch[task]),
                          "search": self.search_log.get(task)})
        return {"depth": self.depth, "ops": list(self.ops), "adapt": self.adapt, "new_init": self.new_init,
                "pretrained_expert": self.pretrained_expert, "tasks": tasks}

    def _owner(self, block: int, task: int) -> int:
        """The task that created the expert ``task`` runs at ``block`` (-1: the pretrained projection)."""
        op, src = self.arch[task][block]
        if op != "reuse":
            return task
        assert src is not None, f"block {block}: reuse names no source"  # validate_arch: a reuse names one
        return PRETRAINED if src == PRETRAINED else self._owner(block, src)

    def write_artifacts(self, run_dir, task_names: Sequence[str], final: bool) -> None:
        """Run-loop hook: ``artihippo.json`` (the grown architecture) and, at the end, ``artihippo.png``."""
        write_report(self.architecture_report(), run_dir, task_names, figure=final)

    def get_extra_state(self):
        return {**super().get_extra_state(),
                "arch": {t: [[op, src] for op, src in a] for t, a in self.arch.items()},
                "search_log": self.search_log,
                "layer_prototypes": {t: p.cpu() for t, p in self.layer_prototypes.items()}}

    def set_extra_state(self, state) -> None:
        super().set_extra_state(state)
        self.arch = {int(t): [(op, src) for op, src in a] for t, a in state["arch"].items()}
        self.search_log = {int(t): s for t, s in state.get("search_log", {}).items()}
        self.layer_prototypes = {int(t): p for t, p in state.get("layer_prototypes", {}).items()}
        for task in sorted(self.arch):  # the modules exist before the children load their tensors
            self._build_task_modules(task)


__all__ = ["ArtiHippo", "ExpertPool", "OPS", "PRETRAINED"]
