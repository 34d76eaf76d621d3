"""Checks a configuration before any work: a misspelt key, an unknown value or an out-of-range number
stops the run with one message naming the key and what is allowed.

Hydra already refuses keys that do not exist (``optim.lrr=1`` → "Key 'lrr' is not in struct"); this adds
value checks and, through :func:`gift_cl.config.check_instantiable`, the rule for every ``_target_`` (method,
generator, benchmark, add-ons): called with its own arguments, each of its annotated type and every number of
this project's constructors in the range ``gift_cl.config.ARGUMENT_RANGES`` gives; and a local backbone
checkpoint must fit the architecture (:func:`gift_cl.backbones.check_backbone`). Which constructors may be
named depends on where the configuration comes from (``command_line``; the rule is in :mod:`gift_cl.config`):
composed from the command line, any importable one (a user's method in their own package, its config on
``hydra.searchpath``); otherwise only what a shipped config names at that place.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

from omegaconf import DictConfig, ListConfig, OmegaConf

from gift_cl.backbones import check_backbone
from gift_cl.config import SEED_RANGE, ConfigError, Range, allowed_targets, check_instantiable
from gift_cl.optim import OptimConfig
from gift_cl.protocols import INFER_TASK, PROTOCOLS
from gift_cl.strategies.evaluation import LOGGERS

from .device import PRECISIONS, check_device

STRATEGY_KEYS = {"name", "protocol", "task_inference", "infer_task", "method", "plugins"}


def check_arguments(node: DictConfig, where: str, command_line: bool = False) -> None:
    """The ``_target_`` node at ``where`` (and every target inside it): allowed there, its keys arguments of
    the constructor (not the positional ones the run supplies, e.g. the backbone), its values of the right
    type and range."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        allowed = sorted(allowed_targets().get(where, ()))
        raise ConfigError(f"{where}: must be a mapping with a _target_, e.g. one of {', '.join(allowed)}")
    check_instantiable(node, where, command_line=command_line)


def _number(value: Any, key: str, low: float, high: float = math.inf, integer: bool = False) -> None:
    Range(low, high, integer).check(value, key)


def _choice(value: Any, key: str, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r}: must be one of {', '.join(map(str, allowed))}")


EVALUATE = ("every_experience", "last_experience")


def validate(cfg: DictConfig, *, command_line: bool = False) -> None:
    """Stop with one :class:`ConfigError` naming the first wrong key of ``cfg``. ``command_line=True``: ``cfg``
    was composed from the command line (``run.py``, a sweep), so its ``_target_``s may name any constructor,
    the user's own included; the default allows only what the shipped configs name (a configuration from
    elsewhere)."""
    # ----------------------------------------------------------- strategy
    strategy = cfg.strategy
    unknown = set(strategy) - STRATEGY_KEYS
    if unknown:
        raise ConfigError(f"strategy.{sorted(unknown)[0]}: unknown key; allowed: {sorted(STRATEGY_KEYS)}")
    _choice(strategy.protocol, "strategy.protocol", tuple(PROTOCOLS))
    _choice(strategy.get("task_inference", True), "strategy.task_inference", (True, False))
    _choice(strategy.get("infer_task", "auto"), "strategy.infer_task", INFER_TASK)
    if "generator" in cfg:  # first: strategy.method.config is ${generator}, the key a user sets
        check_arguments(cfg.generator, "generator", command_line)
    check_arguments(strategy.method, "strategy.method", command_line)
    if "config" in strategy.method and isinstance(strategy.method.config, DictConfig):
        from hydra.utils import instantiate

        try:
            instantiate(strategy.method.config)
        except Exception as err:  # noqa: BLE001 (the generator config's own checks: block, rank, heads)
            raise ConfigError(f"generator: {getattr(err, '__cause__', None) or err}") from None
    plugins = strategy.get("plugins")
    if plugins is not None and (not isinstance(plugins, (ListConfig, DictConfig))
                                or (isinstance(plugins, DictConfig) and "_target_" in plugins)):
        raise ConfigError("strategy.plugins: must map names to plugin configs (cl=ewc adds strategy.plugins.ewc), "
                          "or list plugin configs")
    check_instantiable(plugins, "strategy.plugins", command_line=command_line)
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
    SEED_RANGE.check(cfg.seed, "seed")
    _number(cfg.eval_batch_size, "eval_batch_size", 1, integer=True)
    _choice(cfg.get("evaluate", "every_experience"), "evaluate", EVALUATE)
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
    check_arguments(cfg.benchmark, "benchmark", command_line)
    if "image_size" in cfg.benchmark:
        _number(cfg.benchmark.image_size, "benchmark.image_size", 8, 4096, integer=True)
    # last, the slowest check: a local backbone checkpoint is read and matched to the architecture
    # cfg.model is a mapping with string keys; OmegaConf types to_container as any container with any keys
    model = cast("dict[str, Any]", OmegaConf.to_container(cfg.model, resolve=True))
    check_backbone(**model)


__all__ = ["ConfigError", "validate"]
