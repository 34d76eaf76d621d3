"""The one run loop: every method, every protocol, one checkpoint and one results schema.

The protocol (``strategy.protocol``: independent, sequential, joint) is an object of
:mod:`gift_cl.protocols`: it decides the experiences, what is evaluated after each, whether each task gets a
fresh model, and how the results are read from the accuracy matrix.

A checkpoint (trainable state, optimizer, schedule, RNG, stream position, results so far, plugin state,
the evaluation's clock, metrics and logged values) is written atomically every ``checkpoint_every`` epochs
and after each evaluated experience; a killed run continues with ``resume=`` and reproduces the
uninterrupted run's numbers and logs exactly.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from gift_cl.atomic import save_safetensors
from gift_cl.backbones import create_backbone
from gift_cl.checkpoint import CheckpointError, load_run_checkpoint, save_run_checkpoint
from gift_cl.classincremental.evaluation import check_disjoint_classes, evaluate_class_incremental
from gift_cl.data.stream import build_stream
from gift_cl.optim import OptimConfig
from gift_cl.protocols import get_protocol
from gift_cl.reporting import read_predictions, write_predictions
from gift_cl.rng import rng_state, seed_everything, set_rng_state
from gift_cl.strategies import TaskAwareStrategy
from gift_cl.strategies.data_parallel import DataParallel
from gift_cl.strategies.evaluation import close_loggers, evaluation_state, make_evaluator, restore_evaluation
from gift_cl.strategies.plugins import AugmentationSeeds, EpochCheckpointPlugin, PredictionRecorder

from .device import runtime
from .distributed import broadcast_object
from .export import write_run_model, write_task
from .results import task_inference_accuracy, write_results
from .runfiles import CHECKPOINT, CHECKPOINTS_DIR

if TYPE_CHECKING:
    from gift_cl.methods.base import TaskAwareModel

log = logging.getLogger("gift_cl")



def strategy_plugins(node) -> list:
    """The strategy's Avalanche plugins: ``strategy.plugins`` maps names to plugin configs (``cl=ewc`` adds ``ewc``;
    a method's own, e.g. ArtiHippo's search), in the order the configuration composed them; a list is taken as it
    is."""
    if node is None:
        return []
    items = node.values() if isinstance(node, DictConfig) else node
    return [instantiate(item) for item in items]


def experience_accuracies(metrics: dict, test_exps) -> list[float]:
    row = []
    for exp in test_exps:
        key = f"Top1_Acc_Exp/eval_phase/test_stream/Task{exp.task_label:03d}/Exp{exp.current_experience:03d}"
        if key not in metrics:
            raise KeyError(f"Avalanche did not report {key}; got {sorted(metrics)[:5]}...")
        row.append(float(metrics[key]))
    return row


class Run:
    """One run: owns the benchmark, the model(s), the strategy, progress, checkpoints and results."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.env = runtime(cfg)  # device, precision, loaders, rank (orchestration/device.py)
        self.protocol = get_protocol(cfg.strategy.protocol)
        self.optim = OptimConfig(**cast("dict[str, Any]", OmegaConf.to_container(cfg.optim, resolve=True)))  # a mapping
        self.tasks = instantiate(cfg.benchmark)
        # augmentation seeded per sample: num_workers cannot change the results (strategies/plugins.py)
        self.augmentation = AugmentationSeeds(cfg.seed)
        for i, task in enumerate(self.tasks):
            task.train = self.augmentation.wrap(task.train, i)
        self.names = [t.name for t in self.tasks]
        self.stream = build_stream(self.tasks)
        for exp, name in zip(self.stream.train_stream, self.names):
            exp.name = name
        self.test = list(self.stream.test_stream)
        self.experiences = self.protocol.experiences(self.stream.train_stream)
        # progress is everything the results are computed from; it travels in every checkpoint
        self.progress: dict[str, Any] = {"position": 0, "matrix": [], "time_s": [], "params": []}
        if self.protocol.class_incremental:  # rows without task ids (gift_cl.classincremental), one per experience
            check_disjoint_classes(self.tasks)
            self.progress.update(cil_matrix=[], cil_accuracy=[], cil_task_id_accuracy=[])
        self.model: Optional[TaskAwareModel] = None
        self.strategy: Optional[TaskAwareStrategy] = None
        # each task's per-image predictions at its latest evaluation (the final one at the end): predictions.npz
        self.predictions: dict[str, tuple] = {}
        self.recorder = PredictionRecorder()
        self._unit: Optional[int] = None  # which experience the current model was built for (independent)
        if not self.protocol.fresh_model_per_task:
            self._build(self.run_dir / "logs")

    # ------------------------------------------------------------------ model and strategy
    def _built(self) -> tuple[TaskAwareModel, TaskAwareStrategy]:
        """The model and strategy :meth:`_build` made (in __init__, or per task in the independent protocol)."""
        assert self.model is not None and self.strategy is not None, "no model yet: _build makes it"
        return self.model, self.strategy

    def _build(self, log_dir: Path) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)  # independent: every task starts from the same seed, whatever ran before
        model_kw = cast("dict[str, Any]", OmegaConf.to_container(cfg.model, resolve=True))  # cfg.model: a mapping
        backbone = create_backbone(num_classes=0, **model_kw)
        self.model = instantiate(cfg.strategy.method, backbone)
        self.plugins = strategy_plugins(cfg.strategy.get("plugins"))
        checkpoints = EpochCheckpointPlugin(cfg.checkpoint_every, self._save_mid_experience)
        self.strategy = TaskAwareStrategy(
            model=self.model,
            optim=self.optim,
            device=self.env.device,
            eval_mb_size=cfg.eval_batch_size,
            evaluator=make_evaluator(log_dir, stream_metrics=not self.protocol.fresh_model_per_task,
                                     loggers=cfg.logger if self.env.is_main else (),
                                     run_name=f"{cfg.strategy.name}/{cfg.benchmark_name}/{log_dir.name}"),
            plugins=[*self.plugins, self.augmentation, checkpoints, self.recorder],
            progress=cfg.progress and self.env.is_main,
            precision=self.env.precision,
            compile=self.env.compile,
            distributed=DataParallel.from_process_group(cfg.seed) if self.env.distributed else None,
        )
        # an epoch's checkpoint after the evaluator has logged the epoch (Avalanche calls plugins in list
        # order, the evaluator after ours): it then holds the logs of every epoch it has the weights of
        plugins = self.strategy.plugins
        plugins.remove(checkpoints)
        plugins.insert(plugins.index(self.strategy.clock), checkpoints)

    def _model_for(self, i: int) -> None:
        if self.protocol.fresh_model_per_task and self._unit != i:
            self._build(self.run_dir / "logs" / self.names[i])
        self._unit = i

    def _eval_experiences(self, i: int) -> list:
        """What is evaluated after experience ``i`` (nothing before the last one with ``evaluate=last_experience``
        in the sequential protocol: its rows of the accuracy matrix stay empty)."""
        return self.protocol.evaluated_after(i, self.test, len(self.experiences),
                                             last_only=self.cfg.get("evaluate") == "last_experience")

    # ------------------------------------------------------------------ checkpoints
    def _resumable_plugins(self) -> dict:
        """The strategy's plugins that have a state to checkpoint, by name: the class name (``EWCPlugin``),
        numbered from the second of a class on (``EWCPlugin#1``)."""
        named: dict = {}
        for p in self._built()[1].plugins:
            if hasattr(p, "state_dict") and hasattr(p, "load_state_dict"):
                base = type(p).__name__
                name = base if base not in named else f"{base}#{sum(k.split('#')[0] == base for k in named)}"
                named[name] = p
        return named

    def _state(self, training: Optional[dict]) -> dict:
        model, strategy = self._built()
        between_independent_tasks = self.protocol.fresh_model_per_task and training is None
        return {  # between two independent tasks the next model starts fresh: nothing of this one is needed
            "model": {} if between_independent_tasks else model.trainable_state_dict(),
            "tasks": {} if between_independent_tasks else
            {int(t): model.head_width(t) for t in model.tasks},
            "progress": self.progress,
            "training": training,
            "rng": rng_state(),
            "plugins": {name: p.state_dict() for name, p in self._resumable_plugins().items()},
            "evaluation": None if between_independent_tasks else evaluation_state(strategy),
        }

    def _save_mid_experience(self, strategy, epochs_done: int) -> None:
        if not self.env.is_main:  # rank 0 alone writes
            return
        save_run_checkpoint(self._state(strategy.training_state(epochs_done)), self.run_dir / CHECKPOINT)

    def _save_boundary(self) -> None:
        if not self.env.is_main:
            return
        save_run_checkpoint(self._state(None), self.run_dir / CHECKPOINT)

    def restore(self, path: Path) -> None:
        """Continue from a checkpoint; raises before anything of this run directory is rewritten."""
        state = load_run_checkpoint(path, self.env.device)
        progress = state["progress"]
        if progress["position"] > len(self.experiences) or any(
                len(row) > len(self.test) for row in progress["matrix"]):
            raise CheckpointError(f"{path}: the checkpoint is at experience {progress['position']} of a stream "
                                  f"that does not fit this benchmark ({len(self.experiences)} experiences)")
        self.progress = progress
        self.predictions = read_predictions(self.run_dir) or {}
        mid = state["training"] is not None
        if self.protocol.fresh_model_per_task:
            if not mid:  # between two tasks: the next one starts from a fresh model
                set_rng_state(state["rng"])
                return
            self._model_for(progress["position"])
        model, strategy = self._built()
        for task, num_classes in sorted(state["tasks"].items()):
            if str(task) not in model.classifiers:
                model.add_task(int(task), num_classes)
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        not_frozen = set(missing) - model.frozen_state_keys()
        if not_frozen or unexpected:
            raise CheckpointError(f"{path} does not fit the model: missing {sorted(not_frozen)[:5]}, "
                                  f"unexpected {sorted(unexpected)[:5]}")
        plugins, saved = self._resumable_plugins(), state["plugins"]
        if isinstance(saved, list):  # a checkpoint that stored the plugins' states in the strategy's order
            saved = dict(zip(plugins, saved)) if len(saved) == len(plugins) else {f"#{i}": s for i, s in enumerate(saved)}
        if set(saved) != set(plugins):
            raise CheckpointError(f"{path}: holds the state of the plugins {sorted(saved)}, this strategy has "
                                  f"{sorted(plugins)}")
        for name, plugin in plugins.items():
            plugin.load_state_dict(saved[name])
        # the clock (every logger's step), the metrics that span experiences (forgetting), what was logged
        if "evaluation" not in state:
            log.warning("%s: a checkpoint without the evaluation's state (an older gift_cl): the logs are "
                        "appended to, and forgetting is logged only for the experiences trained from now", path)
        restore_evaluation(strategy, state.get("evaluation"), path)
        # Avalanche's clock counts finished experiences (EWC reads it); the model knows its tasks.
        strategy.clock.train_exp_counter = self.protocol.clock_experiences(progress["position"])
        model.known_train_tasks_labels = set(int(t) for t in state["tasks"])
        if mid:
            strategy.resume_from(state["training"])
        else:
            set_rng_state(state["rng"])
        log.info("resumed from %s at experience %d%s", path, progress["position"],
                 f", epoch {state['training']['epochs_done']}" if mid else "")

    # ------------------------------------------------------------------ the loop
    def train_and_evaluate(self) -> None:
        for i in range(self.progress["position"], len(self.experiences)):
            self._model_for(i)
            model, strategy = self._built()
            t0 = time.time()
            strategy.train(self.experiences[i], **self.env.loader)
            seen = self._eval_experiences(i)
            row = None
            if self.env.is_main and not seen:
                row = []
            elif self.env.is_main:  # distributed: rank 0 evaluates, the other ranks receive its row
                # evaluation never changes what trains next: the RNGs it draws from (DataLoader seeds) are put
                # back, so evaluate=last_experience gives exactly the last row of evaluate=every_experience
                before = rng_state()
                row = experience_accuracies(strategy.eval(seen, **self.env.loader), seen)
                set_rng_state(before)
                for exp in seen:
                    self.predictions[self.names[exp.current_experience]] = self.recorder.predictions[exp.task_label]
            row = broadcast_object(row)
            self.progress["matrix"].append(row)
            if self.protocol.class_incremental:
                self._evaluate_class_incremental(i, seen)
            self.progress["time_s"].append(time.time() - t0)
            if self.protocol.fresh_model_per_task:  # the task's own model: its counts and weights now
                counts = model.trainable_parameter_count()
                self.progress["params"].append({
                    "per_task": counts["total"],
                    "per_task_excl_classifier": counts["total"] - sum(
                        p.numel() for p in model.classifiers.parameters()),
                    "backbone": counts["backbone"]})
                tensors = {k: v for k, v in model.trainable_state_dict().items() if torch.is_tensor(v)}
                if self.env.is_main:
                    save_safetensors(tensors, self.run_dir / CHECKPOINTS_DIR / f"{self.names[i]}.safetensors")
                    write_task(self.run_dir, model, i, self.names[i])  # model/tasks/: the shareable model
                close_loggers(strategy)  # the task's logs are complete on disk before it counts as done
            self.progress["position"] = i + 1
            if self.env.is_main:  # before the checkpoint: a resumed run always finds the predictions it had
                write_predictions(self.predictions, self.run_dir)
            self._save_boundary()
            if self.env.is_main:
                self.write_results(final=False)
            log.info("after %s: %s", self.experiences[i].name,
                     " ".join(f"{100 * a:.1f}" for a in row) if row else "(not evaluated: evaluate=last_experience)")

    def _evaluate_class_incremental(self, i: int, seen: list) -> None:
        """The class-incremental row after this experience: every seen class, no task id (rank 0 evaluates)."""
        model, strategy = self._built()
        out = None
        if self.env.is_main and seen:
            # as the task-incremental evaluation: nothing it draws changes what trains next
            before, training = rng_state(), model.training
            out = evaluate_class_incremental(model, seen, self.cfg.eval_batch_size, self.env.device,
                                             self.cfg.strategy.get("infer_task", "auto"), strategy.amp.autocast)
            set_rng_state(before)
            model.train(training)
        out = broadcast_object(out)
        self.progress["cil_matrix"].append(out["per_task"] if out else [])
        self.progress["cil_accuracy"].append(out["accuracy"] if out else None)
        self.progress["cil_task_id_accuracy"].append(out["task_id_accuracy"] if out else None)
        self.progress["cil_infer_task"] = model.task_inference_rule(self.cfg.strategy.get("infer_task", "auto"))
        if out:
            log.info("class-incremental after %s: %.1f on %d images of the %d classes seen", self.experiences[i].name,
                     100 * out["accuracy"], out["n"],
                     sum(model.head_width(t) for t in model.tasks))

    def write_results(self, final: bool) -> dict:
        inference = None
        if final and not self.protocol.fresh_model_per_task and len(self.tasks) > 1 and self.cfg.strategy.get("task_inference", True):
            inference = task_inference_accuracy(self._built()[0], self.test, self.cfg.eval_batch_size, self.env.device)
        counts = None if self.protocol.fresh_model_per_task else self._built()[0].trainable_parameter_count()
        results = write_results(self.cfg, self.run_dir, self.tasks, self.progress, counts, inference, final)
        # a method's own outputs beside results.json (ArtiHippo: artihippo.json, and artihippo.png at the end)
        if self.model is not None:  # (none when a resumed independent run had no task left to train)
            self.model.write_artifacts(self.run_dir, self.names, final)
        return results


def run_protocol(cfg: DictConfig, run_dir: Path, resume_from: Optional[Path]) -> dict:
    run = Run(cfg, run_dir)
    if resume_from is not None:
        run.restore(resume_from)
    run.train_and_evaluate()
    results = None
    if run.env.is_main:  # results.json, then <run_dir>/model/: the trained model as save_pretrained writes it
        results = run.write_results(final=True)
        write_run_model(cfg, run.run_dir, run.model, run.names, [t.info for t in run.tasks], results)
    if run.strategy is not None:
        close_loggers(run.strategy)
    return broadcast_object(results)
