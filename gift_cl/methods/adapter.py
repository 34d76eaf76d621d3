"""Two adapter methods on the frozen backbone, one set of adapters per task.

:class:`AdapterMethod` (``strategy=adapter``): a Convpass / PETL-style *parallel* bottleneck adapter, the
project's own configuration of that family (no single source runs exactly this one). Per task and block, one
adapter beside the attention branch and one beside the MLP branch, each reading the branch's *normed* input,

    x = x + attn(norm1(x)) + s·up(GELU(down(norm1(x))))
    x = x + mlp(norm2(x))  + s·up(GELU(down(norm2(x))))

(the adapter's output joins the branch output, before the block's layer scale / drop path, which are identities
in these ViTs). Hidden size ``hidden`` (default 8), scale ``s`` = 0.1, ``down`` Xavier-uniform with zero bias,
``up`` zero-initialised: at step 0 the model is the frozen one, bit for bit (the hook adds an exact zero). Per
task: ``depth × 2 × (2·D·h + h + D)`` = 313,536 parameters on ViT-B/16 (D = 768, h = 8, depth 12).

:class:`GistAdapterMethod` (``strategy=gist_adapter``): the adapter of GIST's release (Ruan et al.,
``gist_Adapter`` with ``tuning_mode='gist_adapter'`` in its ``models/vision_transformer.py``): per task and
block ONE hidden-``hidden`` adapter (default 4), shared by the attention and the MLP branch, reading the
*un-normalised* residual stream and added outside the branch's drop path,

    x = x + drop_path(attn(norm1(x))) + s·up(GELU(down(x)))
    x = x + drop_path(mlp(norm2(x)))  + s·up(GELU(down(x)))      (x here: the stream after the attention step)

with ``s`` = 0.1 and both projections trunc-normal(std 0.02), biases 0 (the release's timm ``init_weights``).
Not zero-initialised: the adapter adds a small non-zero term from step 0 on (``init_std=0`` makes it start at
the frozen model, bit for bit). Per task: ``depth × (2·D·h + h + D)`` = 82,992 parameters on ViT-B/16
(h = 4). The only difference to the release is float association: the hooks compute
``x + (branch + adapter)`` where the release computes ``(x + branch) + adapter`` (~1e-7 relative).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .base import HookedBackboneModel


class Bottleneck(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


class AdapterMethod(HookedBackboneModel):
    BRANCHES = ("attn", "mlp")

    def __init__(self, backbone: nn.Module, hidden: int = 8, scale: float = 0.1, addons: Optional[dict] = None):
        super().__init__(backbone)
        if hidden < 1:
            raise ValueError(f"adapter hidden size must be >= 1, got {hidden}")
        self.hidden, self.scale = hidden, scale
        blocks = self.backbone.blocks
        assert isinstance(blocks, (nn.Sequential, nn.ModuleList))  # timm ViT: an nn.Sequential of blocks
        self.depth = len(blocks)
        self.adapters = nn.ModuleDict()  # task -> ModuleDict("<block>:<branch>" -> Bottleneck)
        for i, blk in enumerate(blocks):
            for branch in self.BRANCHES:
                getattr(blk, branch).register_forward_hook(_AdapterHook(self, f"{i}:{branch}"))

    def add_task_parts(self, task: int) -> None:
        cls_token = self.backbone.cls_token
        assert isinstance(cls_token, torch.Tensor)  # timm ViT's [CLS] token parameter
        device = cls_token.device
        self.adapters[str(task)] = nn.ModuleDict({
            f"{i}:{b}": Bottleneck(self.feature_dim, self.hidden) for i in range(self.depth) for b in self.BRANCHES
        }).to(device)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return super().task_parameters(task) + list(self.adapters[str(task)].parameters())


class _AdapterHook:
    """Forward hook of one branch: add the active task's adapter of the branch input."""

    def __init__(self, model: AdapterMethod, key: str):
        self.model, self.key = model, key

    def __call__(self, module, args, out):
        model = self.model
        if model.active is None:
            return None
        return out + model.scale * model.adapters[model.active][self.key](args[0])


class GistBottleneck(nn.Module):
    """GIST's ``gist_Adapter``: ``up(GELU(down(x)))`` (the scale is applied by the method), both projections
    trunc-normal(``init_std``), biases 0."""

    def __init__(self, dim: int, hidden: int, init_std: float):
        super().__init__()
        self.down = nn.Linear(dim, hidden)
        self.up = nn.Linear(hidden, dim)
        for layer in (self.down, self.up):
            if init_std > 0:
                nn.init.trunc_normal_(layer.weight, std=init_std)
            else:
                nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x)))


class GistAdapterMethod(HookedBackboneModel):
    """GIST's release adapter (module docstring): one shared adapter per block on the un-normalised stream."""

    def __init__(self, backbone: nn.Module, hidden: int = 4, scale: float = 0.1, init_std: float = 0.02,
                 addons: Optional[dict] = None):
        super().__init__(backbone)
        if hidden < 1:
            raise ValueError(f"adapter hidden size must be >= 1, got {hidden}")
        if init_std < 0:
            raise ValueError(f"adapter init_std must be >= 0, got {init_std}")
        self.hidden, self.scale, self.init_std = hidden, scale, init_std
        blocks = self.backbone.blocks
        assert isinstance(blocks, (nn.Sequential, nn.ModuleList))  # timm ViT: an nn.Sequential of blocks
        self.depth = len(blocks)
        self.adapters = nn.ModuleDict()  # task -> ModuleList (one GistBottleneck per block)
        for i, blk in enumerate(blocks):
            for norm, drop_path in (("norm1", "drop_path1"), ("norm2", "drop_path2")):
                hook = _GistAdapterHook(self, i)
                # the stream entering the branch (its norm's input) is what the adapter reads; its output is
                # added to the branch's output after the drop path, i.e. straight onto the residual stream
                getattr(blk, norm).register_forward_pre_hook(hook.capture)
                getattr(blk, drop_path).register_forward_hook(hook.add)

    def add_task_parts(self, task: int) -> None:
        cls_token = self.backbone.cls_token
        assert isinstance(cls_token, torch.Tensor)  # timm ViT's [CLS] token parameter
        device = cls_token.device
        self.adapters[str(task)] = nn.ModuleList(
            GistBottleneck(self.feature_dim, self.hidden, self.init_std) for _ in range(self.depth)).to(device)

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return super().task_parameters(task) + list(self.adapters[str(task)].parameters())


class _GistAdapterHook:
    """One branch of block ``layer``: ``capture`` (pre-hook of the branch's norm) keeps the un-normalised stream,
    ``add`` (hook of the branch's drop path) adds the block's adapter of it. A plain object holding the model, so
    ``copy.deepcopy`` of the model copies it consistently."""

    def __init__(self, model: GistAdapterMethod, layer: int):
        self.model, self.layer = model, layer
        self.stream: Optional[torch.Tensor] = None

    def capture(self, module, args):
        self.stream = args[0] if self.model.active is not None else None
        return None

    def add(self, module, args, out):
        stream, self.stream = self.stream, None
        model = self.model
        if model.active is None or stream is None:
            return None
        return out + model.scale * model.adapters[model.active][self.layer](stream)
