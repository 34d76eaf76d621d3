"""Checks a configuration before any work: a misspelt key, an unknown value or an out-of-range number
stops the run with one message naming the key and what is allowed.

Hydra already refuses keys that do not exist (``optim.lrr=1`` → "Key 'lrr' is not in struct"); this adds
value checks, constructor-argument checks for every ``_target_`` (method, generator, benchmark, plugins),
and a rule that only this project's classes are instantiated from a configuration.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any

from omegaconf import DictConfig, ListConfig

from gift_cl.config import ConfigError, resolve_target
from gift_cl.optim import OptimConfig
from strategies.evaluation import LOGGERS

from .device import PRECISIONS, check_device

PROTOCOLS = ("independent", "sequential", "joint")
STRATEGY_KEYS = {"name", "protocol", "task_inference", "method", "plugins"}


def check_arguments(node: DictConfig, where: str, skip_first: int = 0) -> None:
    """Every key of a ``_target_`` node must be an argument of the target (skipping positional ones the
    run supplies, e.g. the backbone)."""
    target = resolve_target(node.get("_target_"), where)
    params = list(inspect.signature(target).parameters.values())[skip_first:]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    allowed = {p.name for p in params}
    for key in node:
        if key.startswith("_") and key.endswith("_"):
            continue
        if key not in allowed:
            raise ConfigError(f"{where}.{key}: not an argument of {node._target_}; allowed: {sorted(allowed)}")


def _number(value: Any, key: str, low: float, high: float = math.inf, integer: bool = False) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) if integer else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok or not math.isfinite(value) or not (low <= value <= high):
        kind = "an integer" if integer else "a number"
        bound = f">= {low}" if high == math.inf else f"in [{low}, {high}]"
        raise ConfigError(f"{key}={value!r}: must be {kind} {bound}")


def _choice(value: Any, key: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, allowed))}")


def validate(cfg: DictConfig) -> None:
    # ----------------------------------------------------------- strategy
    strategy = cfg.strategy
    unknown = set(strategy) - STRATEGY_KEYS
    if unknown:
        raise ConfigError(f"strategy.{sorted(unknown)[0]}: unknown key; allowed: {sorted(STRATEGY_KEYS)}")
    _choice(strategy.protocol, "strategy.protocol", PROTOCOLS)
    _choice(strategy.task_inference, "strategy.task_inference", (True, False))
    check_arguments(strategy.method, "strategy.method", skip_first=1)
    if "config" in strategy.method and isinstance(strategy.method.config, DictConfig):
        check_arguments(strategy.method.config, "strategy.method.config")
        from hydra.utils import instantiate

        try:
            instantiate(strategy.method.config)
        except Exception as err:  # the generator config's own checks (block, rank, heads)
            raise ConfigError(f"generator: {getattr(err, '__cause__', None) or err}") from None
    plugins = strategy.plugins if strategy.plugins is not None else []
    if not isinstance(plugins, ListConfig):
        raise ConfigError("strategy.plugins: must be a list of plugin configs")
    for i, plugin in enumerate(plugins):
        check_arguments(plugin, f"strategy.plugins[{i}]")
    # ----------------------------------------------------------- optimisation
    fields = {f.name for f in dataclasses.fields(OptimConfig)}
    for key in cfg.optim:
        if key not in fields:
            raise ConfigError(f"optim.{key}: unknown key; allowed: {sorted(fields)}")
    o = cfg.optim
    _number(o.epochs, "optim.epochs", 1, integer=True)
    _number(o.batch_size, "optim.batch_size", 1, integer=True)
    _number(o.lr, "optim.lr", 1e-12, 1.0)
    _number(o.weight_decay, "optim.weight_decay", 0.0, 10.0)
    _number(o.warmup_epochs, "optim.warmup_epochs", 0, o.epochs)
    _number(o.warmup_lr, "optim.warmup_lr", 0.0, 1.0)
    _number(o.min_lr, "optim.min_lr", 0.0, 1.0)
    if len(o.betas) != 2 or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in o.betas):
        raise ConfigError(f"optim.betas={list(o.betas)!r}: must be two numbers in [0, 1)")
    _choice(o.sched_on_updates, "optim.sched_on_updates", (True, False))
    # ----------------------------------------------------------- run
    _number(cfg.seed, "seed", 0, integer=True)
    _number(cfg.eval_batch_size, "eval_batch_size", 1, integer=True)
    if cfg.num_workers is not None:
        _number(cfg.num_workers, "num_workers", 0, integer=True)
    _number(cfg.checkpoint_every, "checkpoint_every", 0, integer=True)
    if cfg.threads is not None:
        _number(cfg.threads, "threads", 1, integer=True)
    check_device(cfg.device)
    _choice(cfg.get("precision", "fp32"), "precision", PRECISIONS)
    for key in ("tf32", "compile", "distributed"):
        _choice(cfg.get(key, False), key, (True, False))
    _choice(cfg.progress, "progress", (True, False))
    for name in cfg.logger:
        _choice(name, "logger", sorted(LOGGERS))
    # ----------------------------------------------------------- model and data
    _number(cfg.model.image_size, "model.image_size", 8, 4096, integer=True)
    check_arguments(cfg.benchmark, "benchmark")
    if "image_size" in cfg.benchmark:
        _number(cfg.benchmark.image_size, "benchmark.image_size", 8, 4096, integer=True)


__all__ = ["ConfigError", "PROTOCOLS", "validate"]
