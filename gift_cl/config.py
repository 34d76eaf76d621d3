"""OmegaConf resolvers used by the Hydra configs, and what a configuration may instantiate.

:func:`register_resolvers` registers them (idempotent): where a configuration is composed (``run.py``,
``gift_cl.orchestration.sweep``, ``run.py -m``) and in :func:`load_saved_config`. Importing this module registers
nothing.

* ``${asset:vit_procedural.safetensors}``: the file shipped inside the installed package.
* ``${backbone_data:mean}`` (also ``std``, ``image_size``): what the backbone of the model node
  holding the interpolation expects, from timm's pretrained config of ``name`` + ``kwargs`` (or the
  ``data_config`` of a JSON next to a local ``checkpoint``); see
  :func:`gift_cl.backbones.backbone_data_config`. The model yamls say ``mean: ${backbone_data:mean}``,
  so benchmarks keep interpolating ``${model.mean}``, and an explicit ``model.mean=[...]`` (or
  ``model.image_size=...``) replaces the interpolation: the override wins.

**What may be instantiated.** A configuration names a constructor with ``_target_``; Hydra calls it. Who
wrote the configuration decides what may be named:

* **Composed from the command line** (``run.py``, ``run.py -m``, ``python -m gift_cl.orchestration.sweep``: the
  configs and overrides the user gave, ``hydra.searchpath`` included; ``check_instantiable(...,
  command_line=True)``, used by :func:`gift_cl.orchestration.validation.validate`): any importable ``_target_``, at any
  place (the user's own method, benchmark or add-on in their own package: the user ran the command, their
  code is theirs to run). Each node is still checked: its keys arguments of the constructor, its values plain
  and of the annotated type, and for this project's constructors in the range :data:`ARGUMENT_RANGES` gives.
* **Read from disk** (a run directory's ``config_resolved.yaml`` through :func:`load_saved_config`, and
  everything built from it: ``gift_cl.interpret``, ``gift-cl export``; a ``from_pretrained`` model config through
  :func:`safe_instantiate`): a saved file may come from anyone, so a ``_target_`` is honoured only at a place
  where a shipped config puts one (``benchmark``, ``generator``, ``strategy.method``, ``strategy.method.config``,
  ``strategy.method.addons.<name>``, ``strategy.plugins[i]``) and only if a shipped config names that very
  constructor there: :func:`allowed_targets` reads them from ``configs/`` (the one place the list lives). A
  saved run of a user's method is therefore refused by these tools (the message names the target).
* **Resume** (``resume=<run dir>``, a sweep continuing a started run) builds the run from the configuration
  the command line composes, never from the saved file: the saved file is only read as data and compared key
  by key (a differing ``_target_`` is a difference: refused unless ``allow_config_change=true``, and then the
  command line's constructor is the one called). So resuming a user's method needs the same command line
  (``hydra.searchpath=...``, ``strategy=...``), and nothing read from disk runs code the command line did not
  name.

In both cases the arguments must be plain values (scalars, lists, mappings); Hydra's ``_args_``,
``_partial_``, ``_recursive_`` are refused. A saved configuration may use only this project's resolvers
(:data:`PROJECT_RESOLVERS`) and references to its own keys (:func:`load_saved_config`).
"""
from __future__ import annotations

import importlib
import inspect
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from omegaconf import DictConfig, ListConfig, OmegaConf

from .backbones import DATA_KEYS, asset_path, backbone_data_config
from .former_names import installed_target_names


def _backbone_data(key: str, *, _parent_) -> object:
    if key not in DATA_KEYS:
        raise ValueError(f"${{backbone_data:{key}}}: expected one of {list(DATA_KEYS)}")
    model = _parent_
    if not isinstance(model, DictConfig) or model.get("name") is None:
        raise ValueError(f"${{backbone_data:{key}}} must sit in a model node with a timm `name` (and optional "
                         "`kwargs`, `checkpoint`); otherwise give the value explicitly")
    kwargs = model.get("kwargs")
    kwargs = OmegaConf.to_container(kwargs, resolve=True) if isinstance(kwargs, DictConfig) else {}
    assert isinstance(kwargs, dict)  # a mapping node's container is a dict
    value = backbone_data_config(str(model.name), kwargs, model.get("checkpoint"))[key]
    # a list as a ListConfig: OmegaConf.resolve (``run.py --cfg job --resolve``) refuses a plain list
    return ListConfig(value) if isinstance(value, list) else value


# a protocol other than the method's home one is named by this suffix (gift_multitask, gift_joint)
PROTOCOL_SUFFIX = {"independent": "independent", "sequential": "multitask", "joint": "joint", "class_incremental": "cil"}


def strategy_name(method: str, home_protocol: str, *own_plugins: str, _parent_) -> str:
    """``strategy.name`` of a run of ``method`` (``${strategy_name:lora,independent}`` in ``configs/method/``): the
    method's name, ``_<protocol>`` appended when the run's protocol is not the method's home one
    (``lora_multitask``), then the continual-learning plugins' names (``strategy.plugins`` keys, ``cl=...``) other
    than the method's own (``own_plugins``: ArtiHippo's search) (``lora_multitask_ewc``); the plain shared model with them is named by them alone
    (``naive`` + ``cl=ewc`` is ``ewc``). The shipped ``strategy=<name>`` combinations are named so."""
    strategy = _parent_
    protocol = str(strategy.get("protocol", home_protocol))
    name = str(method) if protocol == home_protocol else f"{method}_{PROTOCOL_SUFFIX.get(protocol, protocol)}"
    plugins = strategy.get("plugins")
    extra = [str(k) for k in plugins if str(k) not in own_plugins] if isinstance(plugins, DictConfig) else []
    if extra:
        name = "_".join(extra) if name == "naive" else "_".join([name, *extra])
    return name


# name -> resolver. Neither is cached by OmegaConf: the key alone ("mean") does not identify the backbone
# (backbones.py caches what is costly)
RESOLVERS: dict[str, Callable[..., Any]] = {"asset": asset_path, "backbone_data": _backbone_data,
                                             "strategy_name": strategy_name}
PROJECT_RESOLVERS = tuple(RESOLVERS)  # the only resolvers a saved configuration may use


def register_resolvers() -> None:
    """Register this project's resolvers (:data:`RESOLVERS`) with OmegaConf, replacing whatever holds their
    names (``gift_cl.orchestration.cli``'s torch-free stand-ins, which call this at their first use). Idempotent: call
    it wherever a configuration is composed or read."""
    for name, resolver in RESOLVERS.items():
        OmegaConf.register_new_resolver(name, resolver, replace=True, use_cache=False)


CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # the shipped configs (the repository's configs/)


class ConfigError(ValueError):
    """A configuration value is wrong: names the key, the value and what is allowed."""


# ----------------------------------------------------------------------------- the allowlist
def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _package_root(path: Path, text: str) -> str:
    """Where a config file's content lands in the composed config: ``# @package`` or its group."""
    header = re.search(r"^#\s*@package\s+(\S+)", text, re.MULTILINE)
    group = path.relative_to(CONFIG_DIR).parts[0] if path.parent != CONFIG_DIR else ""
    if header is None or header[1] == "_group_":
        return group
    return "" if header[1] == "_global_" else header[1]


def _collect(node: Any, slot: str, found: dict, aliases: list) -> None:
    """Every ``_target_`` of a shipped file by slot; ``${key}`` values (``config: ${generator}``) as aliases."""
    if isinstance(node, dict):
        if "_target_" in node:
            found.setdefault(slot, set()).add(node["_target_"])
        for key, value in node.items():
            if key != "defaults":
                _collect(value, _join(slot, key), found, aliases)
    elif isinstance(node, list):
        for value in node:
            _collect(value, slot + "[]", found, aliases)
    elif isinstance(node, str):
        ref = re.fullmatch(r"\$\{([\w.]+)\}", node)
        if ref:
            aliases.append((slot, ref[1]))


@lru_cache(maxsize=1)
def allowed_targets() -> dict[str, frozenset[str]]:
    """``{slot: constructors}``: exactly the ``_target_`` values the shipped configs put at each place of a
    composed configuration (``strategy.plugins[]`` is any item of that list). Derived from ``configs/``, so a
    new shipped method or benchmark is allowed by adding its config, and nothing else ever is."""
    import yaml

    found: dict[str, set] = {}
    aliases: list = []
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        if path.relative_to(CONFIG_DIR).parts[0] == "hydra":  # Hydra's own launcher configs
            continue
        text = path.read_text(encoding="utf-8")
        _collect(yaml.safe_load(text), _package_root(path, text), found, aliases)
    changed = True
    while changed:  # a slot holding ${generator} may hold whatever the generator group names
        changed = False
        for slot, ref in aliases:
            extra = found.get(ref, set()) - found.get(slot, set())
            if extra:
                found.setdefault(slot, set()).update(extra)
                changed = True
    # Avalanche plugins are named (strategy.plugins.<name>); a configuration that lists them (strategy.plugins[])
    # may name the same constructors
    listed = found.setdefault("strategy.plugins[]", set())
    for slot, targets in list(found.items()):
        if slot.startswith("strategy.plugins.") and slot.count(".") == 2:
            listed.update(targets)
    return {slot: frozenset(targets) for slot, targets in found.items() if targets}


# positional arguments the run itself passes (not the configuration): a method gets the backbone
POSITIONAL = {"strategy.method": 1}
# mapping arguments whose keys are the arguments of another constructor (ArtiHippo builds a GiftConfig)
DICT_ARGUMENTS = {("gift_cl.methods.ArtiHippo", "gift"): "gift_cl.GiftConfig"}
CONVERT_MODES = ("none", "partial", "object", "all")  # Hydra's _convert_: how containers are passed


# ----------------------------------------------------------------------------- numeric arguments
def _show(bound: float) -> str:
    """A bound as a person writes it: ``1000000``, not ``1000000.0``; ``1e-12`` stays."""
    return str(int(bound)) if float(bound).is_integer() and abs(bound) < 1e15 else str(bound)


@dataclass(frozen=True)
class Range:
    """The numbers an argument may take: ``[low, high]`` (either end open), integers or not."""

    low: float
    high: float = math.inf
    integer: bool = False
    open_low: bool = False
    open_high: bool = False

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        low, high = _show(self.low), _show(self.high)
        if self.high == math.inf:
            return f"{kind} {'>' if self.open_low else '>='} {low}"
        return f"{kind} in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def check(self, value: Any, key: str) -> None:
        if not self.contains(value):
            raise ConfigError(f"{key}={value!r}: must be {self.describe()}")


@dataclass(frozen=True)
class OneOf:
    """The values a string argument may take (checked with the numbers, before anything is built)."""

    values: tuple[str, ...]

    def describe(self) -> str:
        return "one of " + ", ".join(self.values)

    def contains(self, value: Any) -> bool:
        return value in self.values

    def check(self, value: Any, key: str) -> None:
        if not self.contains(value):
            raise ConfigError(f"{key}={value!r}: must be {self.describe()}")


def _count(low: int, high: int) -> Range:
    return Range(low, high, integer=True)


def _positive(high: float) -> Range:
    return Range(0, high, open_low=True)


SEED_RANGE = _count(0, 2**32 - 1)  # numpy's seed range (the run seeds numpy, torch and random with it)
WIDTH = 4096  # the largest rank / hidden size / cluster count a ViT generator or adapter is given

# Every numeric argument of every constructor a method, generator or add-on config may name (a test keeps
# this complete): a degenerate value (0 clusters, rank 0, mlp_ratio 0) would otherwise build a model that
# trains nothing, or fail with a traceback deep inside the run.
ARGUMENT_RANGES: dict[str, dict[str, Range | OneOf]] = {
    "gift_cl.GiftConfig": {"rank": _count(1, WIDTH), "depth": _count(0, 64), "num_clusters": _count(1, WIDTH),
                           "num_heads": _count(1, 64), "mlp_ratio": _positive(16)},
    "gift_cl.methods.GiftMethod": {"anchor_weight": Range(0, 1e9)},
    "gift_cl.methods.AdapterMethod": {"hidden": _count(1, WIDTH), "scale": _positive(100)},
    "gift_cl.methods.GistAdapterMethod": {"hidden": _count(1, WIDTH), "scale": _positive(100),
                                          "init_std": Range(0, 10)},
    "gift_cl.methods.LoraMethod": {"rank": _count(1, WIDTH), "alpha": _positive(1e6)},
    "gift_cl.methods.VptDeep": {"length": _count(1, 1024), "dropout": Range(0, 1, open_high=True)},
    "gift_cl.methods.RanPAC": {"projection_dim": _count(1, 65536), "projection_seed": SEED_RANGE},
    "gift_cl.methods.InfLoRA": {"rank": _count(1, WIDTH), "lamb": Range(0, 1), "lame": Range(0, 1),
                                "total_sessions": _count(1, 10**5)},
    "gift_cl.methods.L2P": {"pool_size": _count(1, 10**5), "length": _count(2, 1024), "top_k": _count(1, 10**5)},
    "gift_cl.methods.DualPrompt": {"pool_size": _count(1, 10**5), "length": _count(2, 1024),
                                   "g_length": _count(0, 1024)},
    "gift_cl.methods.CodaPrompt": {"pool_size": _count(1, 10**5), "length": _count(2, 1024),
                                   "ortho_weight": Range(0, 1e6), "num_tasks": _count(1, 10**5)},
    "gift_cl.methods.ArtiHippo": {"lora_rank": _count(1, WIDTH), "lora_alpha": _positive(1e6)},
    "gift_cl.methods.CoeffTuning": {"dropout": Range(0, 1, open_high=True)},
    "gift_cl.methods.Gist": {"ce_weight": Range(0, 1e6), "kl_weight": Range(0, 1e6), "temperature": _positive(1e3),
                             "init_range": Range(0, 1e3), "dropout": Range(0, 1, open_high=True)},
    "gift_cl.strategies.plugins.EWC": {"ewc_lambda": Range(0, 1e12), "decay_factor": Range(0, 1)},
    "gift_cl.strategies.plugins.LwF": {"alpha": Range(0, 1e6), "temperature": _positive(1e3)},
    "gift_cl.strategies.plugins.Replay": {"mem_size": _count(1, 10**9), "batch_size": _count(1, 10**6),
                                  "batch_size_mem": _count(1, 10**6)},
    "gift_cl.strategies.replay_cil.ERACE": {"mem_size": _count(1, 10**9), "batch_size_mem": _count(1, 10**6),
                                    "seed": SEED_RANGE},
    "gift_cl.strategies.replay_cil.DERPP": {"mem_size": _count(1, 10**9), "batch_size_mem": _count(1, 10**6),
                                    "alpha": Range(0, 1e6), "beta": Range(0, 1e6),
                                    "current_ce": OneOf(("seen", "task")), "seed": SEED_RANGE},
    "gift_cl.methods.artihippo.ArtiHippoSearch": {
        "supernet_epochs": _count(1, 10**4), "lr": _positive(1), "weight_decay": Range(0, 10),
        "batch_size": _count(1, 10**6), "val_fraction": Range(0, 1, open_low=True, open_high=True),
        "max_val": _count(1, 10**9), "population": _count(1, 10**4), "generations": _count(0, 10**4),
        "parents": _count(1, 10**4), "mutation_prob": Range(0, 1), "eps_train": Range(0, 1), "eps_search": Range(0, 1),
        "temperature": _positive(1e3), "pretrained_similarity": Range(-1, 1), "tolerance": Range(0, 1e6),
        "eval_batch_size": _count(1, 10**6), "probe_steps": _count(0, 10**7), "new_lr_scale": _positive(1e3),
        "level1": OneOf(("aux", "separate")), "tolerance_kind": OneOf(("absolute", "relative", "images")),
        "choice": OneOf(("parameters", "flops")), "similarity": OneOf(("global", "per_layer"))},
}

# annotation -> (python types, how a message says it); a float argument takes an int too
_KINDS = {"int": ((int,), "an integer"), "float": ((int, float), "a number"), "bool": ((bool,), "true or false"),
          "str": ((str,), "a string"), "list": ((list, tuple), "a list"), "dict": ((dict,), "a mapping")}
_ANNOTATION_KINDS = {"int": "int", "float": "float", "bool": "bool", "str": "str", "Sequence": "list", "list": "list",
                     "List": "list", "tuple": "list", "Tuple": "list", "dict": "dict", "Dict": "dict",
                     "Mapping": "dict"}


def argument_kind(param: inspect.Parameter) -> tuple[Optional[str], bool]:
    """``(kind, nullable)`` of a parameter from its annotation (``Optional[int]`` -> ``("int", True)``);
    kind is None where the annotation says nothing checkable (a class, a union, none at all)."""
    ann = param.annotation
    if ann is inspect.Parameter.empty:
        return None, param.default is None
    text = (ann if isinstance(ann, str) else getattr(ann, "__name__", str(ann))).replace("typing.", "")
    text = text.replace(" ", "")
    nullable = param.default is None
    optional = re.fullmatch(r"Optional\[(.*)\]", text)
    if optional:
        text, nullable = optional[1], True
    parts = [p for p in text.split("|") if p != "None"]
    nullable = nullable or len(parts) < len(text.split("|"))
    if len(parts) != 1:
        return None, nullable
    return _ANNOTATION_KINDS.get(parts[0].split("[")[0]), nullable


# ----------------------------------------------------------------------------- checking a configuration
def _import(target: str, where: str):
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{where}._target_={target!r}: no such class or function") from None


def resolve_target(target: Any, where: str):
    """The class or function a ``_target_`` names, if a shipped config names it somewhere."""
    if not isinstance(target, str) or not any(target in t for t in allowed_targets().values()):
        raise ConfigError(f"{where}._target_={target!r}: not a constructor this project's configs name")
    return _import(target, where)


def _check_plain(value: Any, where: str) -> None:
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ConfigError(f"{where}: a {type(value).__name__} is not a configuration value "
                          f"(expected a number, string, boolean, null, list or mapping)")
    if isinstance(value, str) and "${" in value:
        raise ConfigError(f"{where}={value!r}: an interpolation left after resolving (an escaped \\${{...}}?)")


def _visit(node: Any, where: str, slot: str, command_line: bool = False) -> None:
    if isinstance(node, dict):
        if "_target_" in node:
            _check_target_node(node, where, slot, command_line)
            return
        for key, value in node.items():
            if not isinstance(key, str) or (key.startswith("_") and key.endswith("_")):
                raise ConfigError(f"{_join(where, key)}: Hydra's special keys (other than _target_ and _convert_ "
                                  f"in a node that has a _target_) are not allowed in a configuration")
            _visit(value, _join(where, key), _join(slot, key), command_line)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            _visit(value, f"{where}[{i}]", slot + "[]", command_line)
    else:
        _check_plain(node, where)


def _check_target_node(node: dict, where: str, slot: str, command_line: bool = False) -> None:
    """One ``_target_`` node: allowed at this place (read from disk: a shipped config names it there; composed
    from the command line: anything importable), its keys arguments of the constructor, its values plain, of
    the annotated type and in range; nested targets likewise."""
    target, allowed = node["_target_"], allowed_targets()
    if command_line:
        if not isinstance(target, str) or not target:
            raise ConfigError(f"{where}._target_={target!r}: must name a class or function (module.name)")
    elif slot not in allowed:
        raise ConfigError(f"{where}._target_={target!r}: nothing may be instantiated at {where}; a configuration "
                          f"names constructors only at {', '.join(sorted(allowed))}")
    elif not isinstance(target, str) or target not in allowed[slot]:
        raise ConfigError(f"{where}._target_={target!r}: not a constructor a configuration may name here; "
                          f"allowed: {', '.join(sorted(allowed[slot]))}")
    constructor = _import(target, where)
    params = _parameters(constructor, target, where)[POSITIONAL.get(slot, 0):]
    if command_line:  # another name of one of this project's constructors keeps its ranges
        target = _known_name(target, constructor)
    open_keys = any(p.kind is p.VAR_KEYWORD for p in params)
    by_name = {p.name: p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    for key, value in node.items():
        here = _join(where, key)
        if key == "_target_":
            continue
        if key == "_convert_":
            if value not in CONVERT_MODES:
                raise ConfigError(f"{here}={value!r}: must be one of {', '.join(CONVERT_MODES)}")
            continue
        if not isinstance(key, str) or (key.startswith("_") and key.endswith("_")):
            raise ConfigError(f"{here}: Hydra's {key} is not allowed in a configuration (a node may say only "
                              f"_target_, _convert_ and the constructor's arguments)")
        if key not in by_name and not open_keys:
            raise ConfigError(f"{here}: not an argument of {target}; allowed: {sorted(by_name)}")
        if key in by_name and not (isinstance(value, dict) and "_target_" in value):
            check_argument(target, by_name[key], value, here)
        _visit(value, here, _join(slot, key), command_line)


def _known_name(target: str, constructor: Any) -> str:
    """The name :data:`ARGUMENT_RANGES` knows ``constructor`` by (``gift_cl.methods.lora.LoraMethod`` is
    ``gift_cl.methods.LoraMethod``), else ``target``."""
    if target in ARGUMENT_RANGES or not target.startswith("gift_cl."):
        return target
    for known in ARGUMENT_RANGES:
        if _import(known, known) is constructor:
            return known
    return target


def _parameters(constructor: Any, target: str, where: str) -> list[inspect.Parameter]:
    """The parameters of ``constructor``; one that Python cannot describe (a builtin) takes any keywords."""
    if not callable(constructor):
        raise ConfigError(f"{where}._target_={target!r}: a {type(constructor).__name__}, not a class or function")
    try:
        return list(inspect.signature(constructor).parameters.values())
    except (TypeError, ValueError):
        return [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]


def check_argument(target: str, param: inspect.Parameter, value: Any, where: str) -> None:
    """``value`` for ``param`` of ``target``: the annotated type, the range of :data:`ARGUMENT_RANGES`, and for
    a mapping read as another constructor's arguments (:data:`DICT_ARGUMENTS`), each of those."""
    if isinstance(value, str) and value == "???":  # a mandatory value not given: Hydra names it when it is read
        return
    kind, nullable = argument_kind(param)
    span = ARGUMENT_RANGES.get(target, {}).get(param.name)
    if value is None:
        if nullable or (kind is None and span is None):
            return
        if span is not None:
            raise ConfigError(f"{where}=None: must be {span.describe()}")
        assert kind is not None  # (kind, span) = (None, None) returned above
        raise ConfigError(f"{where}=None: must be {_KINDS[kind][1]}")
    if span is not None:
        span.check(value, where)
    elif kind is not None and (isinstance(value, bool) and kind in ("int", "float")
                               or not isinstance(value, _KINDS[kind][0])):
        raise ConfigError(f"{where}={value!r}: must be {_KINDS[kind][1]}")
    inner = DICT_ARGUMENTS.get((target, param.name))
    if inner is not None:
        _check_arguments_of(inner, value, where)


def _check_arguments_of(target: str, mapping: Any, where: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}={mapping!r}: must be a mapping of {target} arguments")
    params = inspect.signature(_import(target, where)).parameters
    for key, value in mapping.items():
        if key not in params:
            raise ConfigError(f"{_join(where, key)}: not an argument of {target}; allowed: {sorted(params)}")
        check_argument(target, params[key], value, _join(where, key))


def check_instantiable(tree: Any, where: str = "", slot: Optional[str] = None, *, command_line: bool = False) -> None:
    """Everything under ``tree`` (a resolved, plain configuration or part of one, at ``where``) may be
    instantiated: see the module docstring. ``command_line``: the configuration was composed from the command
    line (any importable ``_target_``); otherwise (the default) it was read from disk and only what the shipped
    configs name at each place is allowed. Raises :class:`ConfigError` naming the first offending key."""
    if isinstance(tree, (DictConfig, ListConfig)):
        tree = OmegaConf.to_container(tree, resolve=True)
    _visit(tree, where, where if slot is None else slot, command_line)


# ----------------------------------------------------------------------------- a saved configuration
_INTERPOLATION = re.compile(r"\$\{\s*([^${}:\s]*)\s*(:?)")


def check_interpolations(node: Any, where: str = "") -> None:
    """Only references to other keys (``${model.mean}``) and this project's resolvers: ``${oc.env:...}``,
    ``${oc.decode:...}`` or a resolver another library registered do not belong in a saved run."""
    if isinstance(node, dict):
        for key, value in node.items():
            check_interpolations(value, _join(where, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            check_interpolations(value, f"{where}[{i}]")
    elif isinstance(node, str):
        for name, colon in _INTERPOLATION.findall(node):
            if colon and name not in PROJECT_RESOLVERS:
                raise ConfigError(f"{where}={node!r}: the resolver {name!r} is not allowed in a saved configuration; "
                                  f"only {', '.join(PROJECT_RESOLVERS)} and references to other keys")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def load_saved_config(path: str | Path) -> DictConfig:
    """A run's saved configuration, checked before anything reads it: a YAML mapping, its interpolations
    only this project's, then resolved and every ``_target_`` in it instantiable (:func:`check_instantiable`),
    the seed in range. Returned fully resolved (what was checked is what will be instantiated). Only what the
    shipped configs name may be instantiated (the module docstring): a saved run of a user's own method is
    refused here, naming the target."""
    import yaml

    register_resolvers()  # ${asset:...}, ${backbone_data:...}: the only resolvers a saved file may use
    path = Path(path)
    try:
        cfg = OmegaConf.load(path)  # PyYAML's safe loader: no tags that build objects
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; a run directory holds the config_resolved.yaml its run wrote") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable YAML configuration ({_first_line(err)})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path}: expected a mapping of configuration keys, got a list")
    try:
        check_interpolations(OmegaConf.to_container(cfg, resolve=False))
        try:
            tree = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
            assert isinstance(tree, dict)  # cfg is a DictConfig (checked above)
        except Exception as err:  # noqa: BLE001 (OmegaConf's and the resolvers' errors: one message)
            raise ConfigError(f"cannot resolve it ({type(err).__name__}: {_first_line(err)})") from None
        tree = installed_target_names(tree)
        check_instantiable(tree)
        SEED_RANGE.check(tree.get("seed", 0), "seed")
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    saved = OmegaConf.create(tree)
    assert isinstance(saved, DictConfig)
    return saved


def safe_instantiate(node: DictConfig, *args, where: str = "config", **kwargs):
    """Instantiate a ``_target_`` node at ``where`` (``benchmark``, ``strategy.method``) of a configuration read
    from disk, after :func:`check_instantiable` (the shipped configs' allowlist); Hydra is handed the checked,
    resolved values."""
    tree = OmegaConf.to_container(node, resolve=True) if isinstance(node, (DictConfig, ListConfig)) else node
    check_instantiable(tree, where)
    from hydra.utils import instantiate

    return instantiate(tree, *args, **kwargs)
