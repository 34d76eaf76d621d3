"""A finished run: :func:`load_run` (the only function that knows the run-directory format), its
:class:`GiftRun` and per-task :class:`TaskView`, and ``results.json`` readers (:func:`read_results`,
:func:`accuracy_gains`)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional, Sequence, cast

import numpy as np
import torch
from torch import nn

from ..tuner import GiftModel
from .maps import cluster_maps, concept_vectors, untrained_head

if TYPE_CHECKING:
    from ..methods.base import TaskAwareModel


# ---------------------------------------------------------------------- a finished run
@dataclass
class TaskView:
    """One task of a run: its :class:`GiftModel` and generator head, and a module mapping images to its logits."""

    name: str
    index: int
    data: Any  # the benchmark's task (``.test``, ``.train``, ``.num_classes``)
    gift: GiftModel
    head: str
    classifier: nn.Module

    def cluster_maps(self, images: torch.Tensor, layer: str, **kw) -> torch.Tensor:
        return cluster_maps(self.gift, images, layer, self.head, **kw)

    def concept_vectors(self, layer: str, source: str = "auto", block: int = 0) -> torch.Tensor:
        return concept_vectors(self.gift, layer, self.head, source, block)

    def test_images(self, n: int = 4) -> torch.Tensor:
        """The first ``n`` test images of the task, normalised as the model sees them: ``(n, 3, H, W)``."""
        test = self.data.test
        return torch.stack([test[i][0] for i in range(min(n, len(test)))])


@dataclass
class GiftRun:
    """A finished (or checkpointed) run, loaded once: its benchmark tasks, per-task views, and the task
    prototypes (mean frozen [CLS] feature per task, used for task-id inference) where the run has them."""

    run_dir: Path
    config: Any
    tasks: list  # the benchmark's tasks, in benchmark order
    prototypes: dict[str, torch.Tensor]
    _view: Callable[[str], TaskView] = field(repr=False)
    _cache: dict = field(default_factory=dict, repr=False)
    shared_model: bool = False  # one model for every task (multi-task run) vs one model per task

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task(self, name: Optional[str] = None) -> TaskView:
        """The view of task ``name`` (default: the first). Independent runs keep one task model at a time."""
        name = name or self.names[0]
        if name not in self.names:
            raise KeyError(f"task {name!r} is not in this run; tasks: {self.names}")
        if name not in self._cache:
            if not self.shared_model:
                self._cache.clear()  # one ViT per task: do not hold them all
            self._cache[name] = self._view(name)
        return self._cache[name]

    def __iter__(self) -> Iterator[TaskView]:
        return (self.task(n) for n in self.names)

    def layers(self) -> list[str]:
        return list(self.task().gift.layers())

    @property
    def normalisation(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` the run normalised its inputs with (to draw images back as pixels)."""
        src = self.config.benchmark if "mean" in self.config.benchmark else self.config.model
        return [float(v) for v in src.get("mean", (0.5,) * 3)], [float(v) for v in src.get("std", (0.5,) * 3)]

    def model_inputs(self, pixels: np.ndarray) -> torch.Tensor:
        """uint8 images ``(B, H, W, 3)`` (as ``procedural.generate`` draws them) as the run's model sees them:
        ``(B, 3, H', W')``, resized to the benchmark's ``resize_to`` if it has one, normalised as in training."""
        images = torch.from_numpy(np.ascontiguousarray(pixels)).permute(0, 3, 1, 2).float() / 255.0
        resize_to = self.config.benchmark.get("resize_to")
        if resize_to:
            images = torch.nn.functional.interpolate(images, size=int(resize_to), mode="bilinear",
                                                     align_corners=False)
        mean, std = self.normalisation
        return (images - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]

    @property
    def results(self) -> Optional[dict]:
        """The run's ``results.json`` (``None`` if the run wrote none yet)."""
        return read_results(self.run_dir)

    def concept_vectors(self, layers: Optional[Sequence[str]] = None, source: str = "auto", block: int = 0,
                        tasks: Optional[Sequence[str]] = None, untrained_heads: bool = False,
                        seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
        """``{layer: {task: (M, d_out)}}`` for :func:`gift_cl.concepts.analyze`. ``untrained_heads``: every
        task's generator head freshly initialised (seed ``seed + task index``) on the trained trunk, the
        reference level of reuse the shared trunk alone gives (:func:`untrained_head`)."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for name in tasks or self.names:
            view = self.task(name)
            ctx = untrained_head(view.gift, view.head, seed + view.index) if untrained_heads else contextlib.nullcontext()
            with ctx:
                for layer in layers or list(view.gift.layers()):
                    out.setdefault(layer, {})[name] = view.concept_vectors(layer, source, block)
        return out


def _gift_of(model: nn.Module) -> GiftModel:
    if isinstance(model, GiftModel):
        return model
    gift = getattr(model, "gift", None)
    if isinstance(gift, GiftModel):
        return gift
    raise TypeError(f"{type(model).__name__} has no GIFT generator to interpret")


def load_run(run_dir: str | Path) -> GiftRun:
    """Load a run directory once (config, benchmark, checkpoints). ALL knowledge of the run-directory format
    lives here: ``config_resolved.yaml``; sequential and joint runs keep one model in ``checkpoints/last.pt``;
    independent runs keep ``checkpoints/<task>.safetensors`` per task (docs/guide/runs.md, "Run directory").

    The saved configuration is checked whole before anything is built (:func:`gift_cl.config.load_saved_config`:
    only the constructors the shipped configs name, at their places, with their own arguments of the right type
    and range, only this project's resolvers; else one :class:`~gift_cl.config.ConfigError` naming the file and
    the key), and checkpoints load with ``weights_only=True``: a run directory from elsewhere cannot make this
    call run code."""
    from omegaconf import OmegaConf

    from ..backbones import create_backbone
    from ..checkpoint import load_run_checkpoint
    from ..config import load_saved_config, safe_instantiate
    from ..protocols import get_protocol
    from ..rng import seed_everything

    run_dir = Path(run_dir)
    cfg = load_saved_config(run_dir / "config_resolved.yaml")
    tasks = safe_instantiate(cfg.benchmark, where="benchmark")  # the benchmark is read once per run
    names = [t.name for t in tasks]
    # cfg.model is a mapping with string keys; OmegaConf types to_container as any container with any keys
    model_kw = cast("dict[str, Any]", OmegaConf.to_container(cfg.model, resolve=True))

    def build() -> TaskAwareModel:
        # The run seeded right before building its backbone: a randomly initialised (test/smoke) backbone
        # is only rebuilt identically under the same seed (its frozen weights are not checkpointed).
        seed_everything(int(cfg.get("seed", 0)))
        return safe_instantiate(cfg.strategy.method, create_backbone(num_classes=0, **model_kw),
                                where="strategy.method")

    if not get_protocol(cfg.strategy.protocol).fresh_model_per_task:  # one model holds every task
        state = load_run_checkpoint(run_dir / "checkpoints" / "last.pt")
        model = build()
        for t, n in sorted(state["tasks"].items()):
            model.add_task(int(t), n)
        model.load_state_dict(state["model"], strict=False)
        model.eval()
        gift = _gift_of(model)
        prototypes = {names[int(t)]: p for t, p in getattr(model, "prototypes", {}).items()}

        def shared_view(name: str) -> TaskView:
            idx = names.index(name)
            return TaskView(name, idx, tasks[idx], gift, str(idx), _TaskForward(model, idx).eval())

        return GiftRun(run_dir, cfg, tasks, prototypes, shared_view, shared_model=True)

    def view(name: str) -> TaskView:
        from safetensors.torch import load_file

        idx = names.index(name)
        model = build()
        gift = _gift_of(model)
        model.add_task(idx, tasks[idx].num_classes)
        model.load_state_dict(load_file(run_dir / "checkpoints" / f"{name}.safetensors"), strict=False)
        return TaskView(name, idx, tasks[idx], gift, str(idx), _TaskForward(model, idx).eval())

    return GiftRun(run_dir, cfg, tasks, {}, view, shared_model=False)


class _TaskForward(nn.Module):
    def __init__(self, model, task: int):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, x):
        return self.model(x, self.task)


def read_results(run_dir: str | Path) -> Optional[dict]:
    """``results.json`` of any run directory (any method, e.g. a linear-probe baseline), checked against the
    results schema (:func:`gift_cl.reporting.read_results`); ``None`` if absent."""
    from ..reporting import read_results as read_checked

    return read_checked(run_dir) if (Path(run_dir) / "results.json").is_file() else None


def task_accuracies(results: dict) -> dict[str, float]:
    """Final accuracy per task name from a ``results.json`` (``final_accuracy``)."""
    return {str(k): float(v) for k, v in results["final_accuracy"].items()}


def accuracy_gains(results: dict, baseline: dict) -> dict[str, float]:
    """Per task: final accuracy of a run minus that of a baseline run (e.g. the linear probe), from their
    ``results.json``; tasks missing from either are left out."""
    ours, base = task_accuracies(results), task_accuracies(baseline)
    return {t: ours[t] - base[t] for t in ours if t in base}
