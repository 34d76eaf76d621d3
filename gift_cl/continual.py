"""The continual / multi-task protocol behind ``strategy=gift_multitask`` (and its baselines).

Sequential mode trains experience after experience and evaluates all seen tasks after each one,
filling the accuracy matrix R[i][j]. Joint mode trains one experience holding every task, batches
mixed across tasks (the multi-task upper bound). Afterwards the task identity is inferred from the
frozen backbone's [CLS] feature (ArtiHippo-style) and accuracy is reported with inferred ids too.

A checkpoint (trainable state, optimizer, schedule, RNG, stream position, results so far) is written
atomically every ``checkpoint_every`` epochs and after each evaluated experience; ``resume=true``
continues a killed run and reproduces the uninterrupted run's numbers exactly.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from strategies.continual import EpochCheckpointPlugin, rng_state, set_rng_state

from .backbones import create_backbone
from .checkpoint import save_torch, write_json
from .data.stream import build_stream
from .metrics import average_accuracy, backward_transfer, benchmark_scores, forgetting
from .reporting import format_matrix_table, plot_accuracy_matrix, write_csv
from .runner import make_evaluator, seed_everything

log = logging.getLogger("gift_cl")

CHECKPOINT = Path("checkpoints") / "last.pt"


def joint_experience(train_stream) -> DatasetExperience:
    """All tasks' training data as one experience; task labels stay per sample."""
    data = train_stream[0].dataset
    for exp in list(train_stream)[1:]:
        data = data.concat(exp.dataset)
    exp = DatasetExperience(dataset=data, current_experience=0)
    exp.task_labels = sorted(int(t) for t in data.targets_task_labels.uniques)
    exp.classes_in_this_experience = sorted(set(int(y) for y in data.targets))
    return EagerCLStream("train_stream", [exp])[0]  # the stream sets the experience's origin_stream


def experience_accuracies(metrics: dict, test_exps) -> list[float]:
    row = []
    for exp in test_exps:
        key = f"Top1_Acc_Exp/eval_phase/test_stream/Task{exp.task_label:03d}/Exp{exp.current_experience:03d}"
        row.append(float(metrics[key]))
    return row


@torch.no_grad()
def task_inference_accuracy(model, test_exps, batch_size: int, device: str) -> dict:
    """Task-id accuracy and accuracy with inferred ids; a sample counts as correct only when both
    its task and its class are right (within-task labels would otherwise collide across tasks)."""
    model.eval()
    out = {}
    for exp in test_exps:
        n = task_ok = both_ok = 0
        for x, y, t in DataLoader(exp.dataset.eval(), batch_size=batch_size, shuffle=False):
            x, y, t = x.to(device), y.to(device), t.to(device)
            t_hat = model.infer_task(x)
            pred = model(x, t_hat).argmax(-1)
            n += len(y)
            task_ok += (t_hat == t).sum().item()
            both_ok += ((t_hat == t) & (pred == y)).sum().item()
        out[exp.task_label] = {"task_id_accuracy": task_ok / n, "accuracy": both_ok / n}
    return out


class ContinualRun:
    """One run of the protocol: owns the model, strategy, progress, checkpoints and results."""

    def __init__(self, cfg: DictConfig, run_dir: Path, optim):
        self.cfg, self.run_dir = cfg, run_dir
        self.tasks = instantiate(cfg.benchmark)
        self.names = [t.name for t in self.tasks]
        self.stream = build_stream(self.tasks)
        seed_everything(cfg.seed)
        backbone = create_backbone(num_classes=0, **_model_kwargs(cfg))
        self.model = instantiate(cfg.strategy.model, backbone)
        plugins = list(instantiate(cfg.strategy.get("plugins", [])) or [])
        plugins.append(EpochCheckpointPlugin(cfg.checkpoint_every, self._save_mid_experience))
        self.strategy = instantiate(
            cfg.strategy.trainer,
            model=self.model,
            optim=optim,
            device=cfg.device,
            eval_mb_size=cfg.eval_batch_size,
            evaluator=make_evaluator(run_dir / "logs", continual=True),
            plugins=plugins,
            progress=cfg.progress,
        )
        self.joint = cfg.strategy.mode == "joint"
        self.experiences = [joint_experience(self.stream.train_stream)] if self.joint else list(self.stream.train_stream)
        self.progress = {"position": 0, "matrix": [], "train_time_s": [], "eval_after": []}

    # ------------------------------------------------------------------ checkpoints
    def _state(self, training: dict | None) -> dict:
        frozen = self.model.frozen_state_keys()
        return {
            "model": {k: v for k, v in self.model.state_dict().items() if k not in frozen},
            "tasks": {t: self.model.classifiers[str(t)].out_features for t in self.model.tasks},
            "progress": self.progress,
            "training": training,
            "rng": rng_state(),
            "plugins": {type(p).__name__: p.state_dict() for p in self._resumable_plugins()},
        }

    def _resumable_plugins(self):
        from strategies.plugins import EWC, LwF

        return [p for p in self.strategy.plugins if isinstance(p, (EWC, LwF))]

    def _save_mid_experience(self, strategy, epochs_done: int) -> None:
        save_torch(self._state(strategy.training_state(epochs_done)), self.run_dir / CHECKPOINT)

    def _save_boundary(self) -> None:
        save_torch(self._state(None), self.run_dir / CHECKPOINT)

    def restore(self, path: Path) -> None:
        state = torch.load(path, map_location=self.cfg.device, weights_only=False)
        for task, num_classes in sorted(state["tasks"].items()):
            self.model.add_task(task, num_classes)
        missing, unexpected = self.model.load_state_dict(state["model"], strict=False)
        not_frozen = set(missing) - self.model.frozen_state_keys()
        if not_frozen or unexpected:
            raise RuntimeError(f"checkpoint {path} does not fit the model: missing {sorted(not_frozen)[:5]}, "
                               f"unexpected {sorted(unexpected)[:5]}")
        self.progress = state["progress"]
        for plugin in self._resumable_plugins():
            plugin.load_state_dict(state["plugins"][type(plugin).__name__])
        # Avalanche's clock counts finished experiences (EWC reads it); the model knows its tasks.
        self.strategy.clock.train_exp_counter = self.progress["position"]
        self.model.known_train_tasks_labels = set(state["tasks"])
        if state["training"] is not None:
            self.strategy.resume_from(state["training"])
        else:
            set_rng_state(state["rng"])
        log.info("resumed from %s at experience %d%s", path, self.progress["position"],
                 f", epoch {state['training']['epochs_done']}" if state["training"] else "")

    # ------------------------------------------------------------------ the loop
    def train_and_evaluate(self) -> None:
        test = list(self.stream.test_stream)
        for i in range(self.progress["position"], len(self.experiences)):
            t0 = time.time()
            self.strategy.train(self.experiences[i], num_workers=self.cfg.num_workers)
            seen = test if self.joint else test[: i + 1]
            metrics = self.strategy.eval(seen, num_workers=self.cfg.num_workers)
            row = experience_accuracies(metrics, seen)
            self.progress["matrix"].append(row)
            self.progress["train_time_s"].append(time.time() - t0)
            self.progress["position"] = i + 1
            self._save_boundary()
            self.write_results(final=False)
            log.info("after %s: %s", "joint training" if self.joint else self.names[i],
                     " ".join(f"{100 * a:.1f}" for a in row))

    def write_results(self, final: bool) -> dict:
        matrix = self.progress["matrix"]
        counts = self.model.trainable_parameter_count()
        results = {
            "strategy": self.cfg.strategy.name,
            "benchmark": self.cfg.benchmark_name,
            "mode": self.cfg.strategy.mode,
            "seed": self.cfg.seed,
            "tasks": self.names,
            "num_classes": [t.num_classes for t in self.tasks],
            "accuracy_matrix": matrix,
            "average_accuracy": average_accuracy(matrix) if matrix else None,
            "forgetting": forgetting(matrix)["mean"] if matrix else None,
            "forgetting_per_task": {self.names[j]: f for j, f in forgetting(matrix)["per_task"].items()} if matrix else {},
            "bwt": backward_transfer(matrix) if matrix else None,
            "trainable_params": {
                "per_task": {self.names[t]: n for t, n in counts["per_task"].items()},
                "per_task_excl_classifier": {self.names[t]: n for t, n in counts["per_task_excl_classifier"].items()},
                "shared": counts["shared"],
                "total": counts["total"],
                "backbone": counts["backbone"],
            },
            "train_time_s": self.progress["train_time_s"],
            "finished": final,
        }
        if final and self.cfg.strategy.get("task_inference", True):
            inferred = task_inference_accuracy(self.model, list(self.stream.test_stream), self.cfg.eval_batch_size,
                                               self.cfg.device)
            results["task_inference"] = {self.names[t]: v for t, v in inferred.items()}
            results["task_id_accuracy"] = sum(v["task_id_accuracy"] for v in inferred.values()) / len(inferred)
            results["average_accuracy_inferred_task"] = sum(v["accuracy"] for v in inferred.values()) / len(inferred)
        if final:
            results.update(benchmark_scores(self.tasks, dict(zip(self.names, matrix[-1]))))
        write_json(results, self.run_dir / "results.json")
        if matrix:
            cols = self.names
            rows = [{"after": ("joint" if self.joint else self.names[i]),
                     **{c: (row[j] if j < len(row) else "") for j, c in enumerate(cols)}} for i, row in enumerate(matrix)]
            write_csv(rows, self.run_dir / "accuracy_matrix.csv")
            plot_accuracy_matrix(results, self.run_dir / "accuracy_matrix.png")
        return results


def _model_kwargs(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg.model, resolve=True)


def run_continual(cfg: DictConfig, run_dir: Path, optim) -> tuple[dict, str]:
    run = ContinualRun(cfg, run_dir, optim)
    ckpt = run_dir / CHECKPOINT
    if cfg.resume and ckpt.is_file():
        run.restore(ckpt)
    run.train_and_evaluate()
    results = run.write_results(final=True)
    return results, format_matrix_table(results)
