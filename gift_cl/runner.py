"""What ``run.py`` does, minus Hydra: build the benchmark, train and evaluate, write the run directory.

Single-task strategies (``gift``, ``lora``, ``linear``, ``finetune``) treat a benchmark of N tasks
as N independent fine-tuning runs, each a one-experience Avalanche stream with a fresh backbone:
the VTAB-1k / FGVC protocol, and a per-task comparison on any multi-domain benchmark.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from .backbones import create_backbone
from .checkpoint import save_safetensors, trainable_state_dict, write_json, write_text
from .data.stream import build_stream
from .metrics import benchmark_scores
from .optim import OptimConfig
from .reporting import format_table, plot_task_accuracies, read_json, write_csv

log = logging.getLogger("gift_cl")


def seed_everything(seed: int) -> None:
    from avalanche.training.determinism.rng_manager import RNGManager

    RNGManager.set_random_seeds(seed)


def make_evaluator(log_dir: Path, continual: bool = False):
    """Avalanche metrics logged as CSV; a stream adds stream accuracy, forgetting and BWT."""
    from avalanche.evaluation.metrics import accuracy_metrics, bwt_metrics, forgetting_metrics, loss_metrics
    from avalanche.logging import CSVLogger
    from avalanche.training.plugins import EvaluationPlugin

    stream_metrics = [forgetting_metrics(experience=True, stream=True), bwt_metrics(experience=True, stream=True)]
    return EvaluationPlugin(
        accuracy_metrics(epoch=True, experience=True, stream=continual),
        loss_metrics(epoch=True, experience=True),
        *(stream_metrics if continual else []),
        loggers=[CSVLogger(str(log_dir))],
    )


def experience_accuracy(metrics: dict, exp_id: int, task_label: int) -> float:
    key = f"Top1_Acc_Exp/eval_phase/test_stream/Task{task_label:03d}/Exp{exp_id:03d}"
    if key not in metrics:
        raise KeyError(f"Avalanche did not report {key}; got {sorted(metrics)[:5]}...")
    return float(metrics[key])


def run_single_task(cfg: DictConfig, run_dir: Path, optim: OptimConfig) -> dict:
    t_start = time.time()
    tasks = instantiate(cfg.benchmark)
    stream = build_stream(tasks)
    results_path = run_dir / "results.json"
    previous = read_json(results_path) or {}
    done = previous.get("tasks", {})
    results = {
        "strategy": cfg.strategy.name,
        "benchmark": cfg.benchmark_name,
        "seed": cfg.seed,
        "tasks": {},
        "finished": False,
    }
    for exp_train, exp_test, task in zip(stream.train_stream, stream.test_stream, tasks):
        if task.name in done and (run_dir / done[task.name]["checkpoint"]).is_file():
            log.info("task %s already finished in %s: skipping (resume)", task.name, run_dir)
            results["tasks"][task.name] = done[task.name]
            continue
        t0 = time.time()
        seed_everything(cfg.seed)  # every task starts from the same seed, whatever ran before it
        backbone = create_backbone(num_classes=task.num_classes, **OmegaConf.to_container(cfg.model, resolve=True))
        model = instantiate(cfg.strategy.method, backbone)
        strategy = instantiate(
            cfg.strategy.trainer,
            model=model,
            optim=optim,
            device=cfg.device,
            eval_mb_size=cfg.eval_batch_size,
            evaluator=make_evaluator(run_dir / "logs" / task.name),
            progress=cfg.progress,
        )
        exp_train.name = exp_test.name = task.name
        strategy.train(exp_train, num_workers=cfg.num_workers)
        metrics = strategy.eval([exp_test], num_workers=cfg.num_workers)
        acc = experience_accuracy(metrics, exp_test.current_experience, exp_test.task_label)
        ckpt = Path("checkpoints") / f"{task.name}.safetensors"
        save_safetensors(trainable_state_dict(model), run_dir / ckpt)
        results["tasks"][task.name] = {
            "accuracy": acc,
            "num_classes": task.num_classes,
            "n_train": len(task.train),
            "n_test": len(task.test),
            "params": model.trainable_parameter_count(),
            "wall_time_s": time.time() - t0,
            "checkpoint": str(ckpt),
            **({"info": task.info} if task.info else {}),
        }
        log.info("task %s: top-1 %.2f%%", task.name, 100 * acc)
        _write_results(results, run_dir, time.time() - t_start)
    results["finished"] = True
    results.update(benchmark_scores(tasks, {n: t["accuracy"] for n, t in results["tasks"].items()}))
    return _write_results(results, run_dir, time.time() - t_start)


def _write_results(results: dict, run_dir: Path, wall: float) -> dict:
    accs = [t["accuracy"] for t in results["tasks"].values()]
    results["average_accuracy"] = sum(accs) / len(accs) if accs else None
    results["wall_time_s"] = wall
    write_json(results, run_dir / "results.json")
    rows = [
        {"task": name, "accuracy": t["accuracy"], "trainable_params": t["params"]["trainable"],
         "wall_time_s": t["wall_time_s"]}
        for name, t in results["tasks"].items()
    ]
    write_csv(rows, run_dir / "results.csv")
    plot_task_accuracies(results, run_dir / "accuracy.png")
    return results


def resolve_run_dir(cfg: DictConfig, hydra_dir: Path) -> Path:
    """``resume=false``: Hydra's new directory. ``resume=<dir>``: that run. ``resume=true``: the newest
    unfinished run of the same strategy and benchmark (a sibling of Hydra's new directory)."""
    if not cfg.resume:
        return hydra_dir
    if cfg.resume is not True:
        path = Path(str(cfg.resume)).expanduser()
        if not (path / "config_resolved.yaml").is_file():
            raise FileNotFoundError(f"resume={path}: not a run directory (no config_resolved.yaml in it)")
        return path
    candidates = sorted(
        (d for d in hydra_dir.parent.iterdir() if d != hydra_dir and (d / "config_resolved.yaml").is_file()
         and not (read_json(d / "results.json") or {}).get("finished")),
        key=lambda d: d.stat().st_mtime,
    )
    if not candidates:
        raise FileNotFoundError(f"resume=true: no unfinished run under {hydra_dir.parent}")
    return candidates[-1]


def run(cfg: DictConfig, hydra_dir: Path) -> dict:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    run_dir = resolve_run_dir(cfg, hydra_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(OmegaConf.to_yaml(cfg, resolve=True), run_dir / "config_resolved.yaml")
    optim = OptimConfig(**OmegaConf.to_container(cfg.optim, resolve=True))
    if cfg.strategy.protocol == "continual":
        from .continual import run_continual

        results, table = run_continual(cfg, run_dir, optim)
    else:
        results = run_single_task(cfg, run_dir, optim)
        table = format_table(results)
    write_text(table + "\n", run_dir / "summary.txt")
    print(table)
    print(f"run directory: {run_dir}")
    return results
