"""The one results schema (``results.json``, ``schema_version`` 2) and the files written beside it.

Every protocol writes the same fields (docs/guide/runs.md, "Results schema"); fields that a protocol cannot define
(forgetting without a sequence, task-id accuracy with one task) are ``null``. Accuracies are fractions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from gift_cl.atomic import write_json, write_text
from gift_cl.classincremental.evaluation import class_incremental_summary
from gift_cl.metrics import backward_transfer, benchmark_scores, forgetting
from gift_cl.protocols import get_protocol
from gift_cl.reporting import (
    RESULTS_SCHEMA_VERSION,
    format_summary,
    plot_accuracy_matrix,
    plot_class_incremental,
    plot_task_accuracies,
    write_csv,
)

from .runfiles import (
    ACCURACY_PLOT,
    CIL_CSV,
    CIL_PLOT,
    MATRIX_CSV,
    MATRIX_PLOT,
    OVERRIDES_FILE,
    RESULTS_CSV,
    RESULTS_FILE,
    SUMMARY_FILE,
)

SCHEMA_VERSION = RESULTS_SCHEMA_VERSION


@torch.no_grad()
def task_inference_accuracy(model, test_exps, batch_size: int, device: str) -> dict[int, dict]:
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


def final_accuracies(protocol: str, matrix: list[list[float]]) -> list[float]:
    """Each task's accuracy at the end of a run of ``protocol`` (:meth:`gift_cl.protocols.Protocol.final_accuracies`)."""
    return get_protocol(protocol).final_accuracies(matrix)


def experience_times(protocol: str, seconds: list[float], n_tasks: int) -> list[Optional[float]]:
    """``results.csv``'s ``train_time_s`` per task (:meth:`gift_cl.protocols.Protocol.experience_times`)."""
    return get_protocol(protocol).experience_times(seconds, n_tasks)


def _data_seed(cfg: DictConfig):
    """The seed that drew the data: ``benchmark.data_seed`` (procedural), ``benchmark.class_order_seed``
    (Avalanche's class-split benchmarks), else the run's seed (loaders with a fixed split)."""
    for key in ("data_seed", "class_order_seed"):
        value = cfg.benchmark.get(key)
        if value is not None:
            return int(value)
    return int(cfg.seed)


def _overrides(run_dir: Path) -> list[str]:
    from omegaconf import OmegaConf

    path = Path(run_dir) / OVERRIDES_FILE  # written when the run started (gift_cl.orchestration.cli)
    return list(OmegaConf.load(path)) if path.is_file() else []


def _class_incremental(cfg: DictConfig, protocol, progress: dict, names: list[str]) -> Optional[dict]:
    if not protocol.class_incremental:
        return None
    block = class_incremental_summary(progress["cil_matrix"], progress["cil_accuracy"], names)
    if block is not None:
        block["task_id_accuracy_per_stage"] = progress["cil_task_id_accuracy"]
        # how the task of an image was found: max_logit | nearest_class | nearest_task | head (one head, no task)
        block["infer_task"] = progress.get("cil_infer_task", str(cfg.strategy.get("infer_task", "auto")))
    return block


def build_results(cfg: DictConfig, run_dir: Path, tasks, progress: dict, counts: Optional[dict],
                  inference: Optional[dict], final: bool) -> dict:
    protocol = get_protocol(cfg.strategy.protocol)
    names = [t.name for t in tasks]
    matrix = progress["matrix"]
    finals = protocol.final_accuracies(matrix)
    sequential = protocol.defines_forgetting(matrix)
    results = {
        "schema_version": SCHEMA_VERSION,
        "strategy": cfg.strategy.name,
        "method": str(cfg.strategy.method._target_).rsplit(".", 1)[-1],
        "addons": sorted(cfg.strategy.method.get("addons") or {}),
        "protocol": protocol.name,
        "benchmark": cfg.benchmark_name,
        "seed": cfg.seed,
        "data_seed": _data_seed(cfg),
        "overrides": _overrides(run_dir),
        "tasks": [{"name": t.name, "num_classes": t.num_classes, "n_train": len(t.train), "n_test": len(t.test),
                   "info": t.info} for t in tasks],
        "accuracy_matrix": matrix,
        "final_accuracy": dict(zip(names, finals)),
        "average_accuracy": sum(finals) / len(finals) if finals else None,
        "forgetting": forgetting(matrix)["mean"] if sequential else None,
        "forgetting_per_task": ({names[j]: f for j, f in forgetting(matrix)["per_task"].items()}
                                if sequential else None),
        "bwt": backward_transfer(matrix) if sequential else None,
        "params": protocol.parameter_counts(names, progress, counts),
        "task_inference": None,
        "task_id_accuracy": None,
        "average_accuracy_inferred_task": None,
        "class_incremental": _class_incremental(cfg, protocol, progress, names),
        "train_time_s": progress["time_s"],
        "wall_time_s": sum(progress["time_s"]),
        "finished": final,
    }
    if inference:
        results["task_inference"] = {names[t]: v for t, v in inference.items()}
        results["task_id_accuracy"] = sum(v["task_id_accuracy"] for v in inference.values()) / len(inference)
        results["average_accuracy_inferred_task"] = sum(v["accuracy"] for v in inference.values()) / len(inference)
    if final:
        results.update(benchmark_scores(tasks, results["final_accuracy"]))
    return results


def write_results(cfg: DictConfig, run_dir: Path, tasks, progress: dict, counts: Optional[dict],
                  inference: Optional[dict], final: bool) -> dict:
    """``results.json``, ``results.csv``, ``accuracy.png`` and, with an accuracy matrix,
    ``accuracy_matrix.csv`` / ``.png``; at the end also ``summary.txt``."""
    run_dir = Path(run_dir)
    results = build_results(cfg, run_dir, tasks, progress, counts, inference, final)
    write_json(results, run_dir / RESULTS_FILE)
    names = [t["name"] for t in results["tasks"]]
    p = results["params"]
    protocol = get_protocol(results["protocol"])
    times = protocol.experience_times(results["train_time_s"], len(names))
    write_csv([{"task": n, "num_classes": t["num_classes"], "accuracy": results["final_accuracy"].get(n, ""),
                "trainable_params": p["per_task"].get(n, ""),
                "trainable_params_excl_classifier": p["per_task_excl_classifier"].get(n, ""),
                "train_time_s": "" if times[i] is None else times[i]}
               for i, (n, t) in enumerate(zip(names, results["tasks"]))], run_dir / RESULTS_CSV)
    if results["final_accuracy"]:
        plot_task_accuracies(results, run_dir / ACCURACY_PLOT)
    if protocol.has_matrix and results["accuracy_matrix"]:
        rows = protocol.matrix_row_labels(names)
        write_csv([{"after": rows[i], **{c: (row[j] if j < len(row) else "") for j, c in enumerate(names)}}
                   for i, row in enumerate(results["accuracy_matrix"])], run_dir / MATRIX_CSV)
        plot_accuracy_matrix(results, run_dir / MATRIX_PLOT)
    cil = results["class_incremental"]
    if cil and any(a is not None for a in cil["accuracy_per_stage"]):
        write_csv([{"stage": i, "after": names[i], "classes_seen": sum(t["num_classes"] for t in results["tasks"][: i + 1]),
                    "accuracy": "" if a is None else a,
                    "task_id_accuracy": "" if cil["task_id_accuracy_per_stage"][i] is None
                    else cil["task_id_accuracy_per_stage"][i]}
                   for i, a in enumerate(cil["accuracy_per_stage"])], run_dir / CIL_CSV)
        plot_class_incremental(results, run_dir / CIL_PLOT)
    if final:
        write_text(format_summary(results) + "\n", run_dir / SUMMARY_FILE)
    return results


