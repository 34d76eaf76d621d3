"""What describes a trained model apart from its weights: the method's constructor call, the backbone it was
trained on, its tasks. Written into ``gift_cl_config.json`` by :mod:`gift_cl.pretrained` (and beside the
peft and merged exports), read back and checked before anything is built.

* **The method** is a configuration node, ``{"_target_": "gift_cl.methods.GiftMethod", "config":
  {"_target_": "gift_cl.GiftConfig", ...}, ...}``, made from the arguments the model was constructed with
  (:class:`~gift_cl.methods.arguments.RecordsArguments`). It is rebuilt through :mod:`gift_cl.config`'s
  allowlist, the one a saved run's configuration goes through: only the constructors the shipped configs name,
  with their own arguments, plain values in range. A crafted file cannot name anything else.
* **The backbone** is named (timm architecture, its ``pretrained_cfg``, the input size and normalisation it
  expects, where its weights came from) and fingerprinted: the SHA-256 of its tensors (dtype, shape, bytes) in
  state-dict order, classifier left out. The order, not the names: a method wraps layers (``attn.proj`` becomes
  ``attn.proj.base``) but never reorders them, so a method's frozen weights and the plain timm model they came
  from hash alike, and a backbone with other weights, another shape or another dtype does not.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional, Sequence, cast

import torch
from torch import nn

from .backbones import ASSETS, BackboneError, _classifier_prefixes
from .checkpoint import CheckpointError
from .model_protocol import ShareableModel

if TYPE_CHECKING:
    from typing_extensions import Buffer

METHOD_SLOT = "strategy.method"  # where a method's node sits in a configuration (gift_cl.config's allowlist)
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}")  # a task name that can be a file name as it is


def gift_cl_version() -> str:
    try:
        return importlib.metadata.version("gift_cl")
    except importlib.metadata.PackageNotFoundError:  # a checkout that was never installed
        return "unknown"


# ---------------------------------------------------------------------- the method's constructor call
def method_node(model: nn.Module | ShareableModel) -> dict:
    """The configuration node that rebuilds ``model`` on a backbone: ``{"_target_": ..., argument: value}``.
    Refused (one :class:`CheckpointError`) where :func:`gift_cl.config.check_instantiable` would refuse it when
    loading, so that what is saved can always be loaded."""
    from .config import ConfigError, check_instantiable

    node = _node(model, METHOD_SLOT)
    try:
        check_instantiable(node, METHOD_SLOT)
    except ConfigError as err:
        raise CheckpointError(f"{type(model).__name__} cannot be saved as a configuration from_pretrained accepts: "
                              f"{err}") from None
    return node


def _node(obj: Any, slot: str) -> dict:
    """``obj``'s constructor call as a node at ``slot`` of a configuration."""
    from .gift import GiftConfig
    from .tuner import gift_config_dict

    if isinstance(obj, GiftConfig):
        return {"_target_": _target_name(type(obj), slot), **gift_config_dict(obj)}
    arguments = getattr(obj, "constructor_arguments", None)
    if arguments is None:
        raise CheckpointError(f"{slot}: a {type(obj).__name__} records no constructor arguments; only gift_cl's "
                              f"methods and add-ons can be saved")
    node = {"_target_": _target_name(type(obj), slot)}
    for key, value in arguments().items():
        node[key] = _plain(value, f"{slot}.{key}")
    return node


def _target_name(cls: type, slot: str) -> str:
    """The name a shipped config uses for ``cls`` at ``slot`` (``gift_cl.methods.GiftMethod``)."""
    from .config import _import, allowed_targets

    for target in sorted(allowed_targets().get(slot, ())):
        if _import(target, slot) is cls:
            return target
    places = sorted(s for s, targets in allowed_targets().items() if any(_import(t, s) is cls for t in targets))
    if places:
        raise CheckpointError(f"{slot}: the shipped configs name {cls.__name__} only at {places}; from_pretrained "
                              f"rebuilds what a configuration can say, so give it that place (add-ons: their config "
                              f"names, e.g. addons={{'gist': Gist()}})")
    raise CheckpointError(f"{slot}: {cls.__module__}.{cls.__qualname__} is not a constructor the shipped configs "
                          f"name; from_pretrained could not rebuild it")


def _plain(value: Any, where: str) -> Any:
    """An argument as a configuration value: plain values, lists, mappings, nested constructor calls (Hydra
    hands a method its mappings and lists as OmegaConf containers: read item by item, interpolations resolved)."""
    from omegaconf import ListConfig

    from .gift import GiftConfig

    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointError(f"{where}={value}: not a finite number")
        return value
    if isinstance(value, GiftConfig) or hasattr(value, "constructor_arguments"):  # generator config, add-on
        return _node(value, where)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple, ListConfig)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise CheckpointError(f"{where}: a {type(value).__name__} is not a value a configuration can hold")


def build_method(node: Any, backbone: nn.Module, path: Path) -> nn.Module:
    """Instantiate a method node read from ``path`` on ``backbone``, through the configuration allowlist."""
    from .config import ConfigError, safe_instantiate
    from .former_names import installed_target_names

    if not isinstance(node, dict) or "_target_" not in node:
        raise CheckpointError(f"{path}: 'method' must be a constructor node with a _target_, got {node!r:.80}")
    node = installed_target_names(node)  # a model saved under former names loads as it was
    try:
        return safe_instantiate(node, backbone, where=METHOD_SLOT)  # a plain container: converted there
    except ConfigError as err:
        raise CheckpointError(f"{path}: method: {err}") from None


# ---------------------------------------------------------------------- the backbone
def timm_model(model: nn.Module | ShareableModel) -> nn.Module:
    """The timm model inside a method (the first module with timm's ``pretrained_cfg``)."""
    for module in model.modules():
        if isinstance(getattr(module, "pretrained_cfg", None), Mapping):
            return module
    raise CheckpointError(f"{type(model).__name__} holds no timm model (a module with a pretrained_cfg)")


def fingerprint(tensors: Iterable[torch.Tensor]) -> tuple[str, int, int]:
    """SHA-256 over (dtype, shape, bytes) of ``tensors`` in order; also their number and total size."""
    digest, count, size = hashlib.sha256(), 0, 0
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        # an ndarray is a buffer; numpy's stubs declare __buffer__ only for Python >= 3.12
        digest.update(cast("Buffer", t.reshape(-1).view(torch.uint8).numpy()))
        count, size = count + 1, size + t.numel()
    return digest.hexdigest(), count, size


def plain_backbone_tensors(backbone: nn.Module) -> list[torch.Tensor]:
    """A timm model's tensors in state-dict order, its classifier left out."""
    heads = _classifier_prefixes(backbone)
    return [v for k, v in backbone.state_dict().items() if not k.startswith(heads)]


def method_backbone_tensors(model: ShareableModel) -> list[torch.Tensor]:
    """A method's frozen pretrained tensors in state-dict order (what :func:`plain_backbone_tensors` gives
    for the timm model it was built on)."""
    frozen = model.frozen_state_keys()
    return [v for k, v in model.state_dict().items() if k in frozen]


def describe_backbone(model: ShareableModel, source: Optional[Mapping] = None,
                      data_config: Optional[Mapping] = None) -> dict:
    """The ``backbone`` section: architecture, pretrained_cfg, data config, weights fingerprint, source."""
    vit = timm_model(model)
    pretrained_cfg = vit.pretrained_cfg
    assert isinstance(pretrained_cfg, Mapping)  # timm_model finds the module whose pretrained_cfg is a Mapping
    pcfg = dict(pretrained_cfg)
    arch = str(pcfg.get("architecture") or type(vit).__name__)  # not timm's default tag: the weights may be any
    sha, count, size = fingerprint(method_backbone_tensors(model))
    return {
        "architecture": arch,
        "num_features": int(model.feature_dim),
        "weights_sha256": sha,
        "weights_tensors": count,
        "weights_parameters": size,
        "data_config": check_data_config(dict(data_config) if data_config is not None else default_data_config(vit),
                                         "data_config"),
        "source": normalise_source(source),
        "pretrained_cfg": jsonable(pcfg),
    }


def default_data_config(vit: nn.Module) -> dict:
    """Input size and normalisation from timm: the model's own ``img_size`` (timm's data config keeps the
    pretrained 224 for a ViT built at another size), mean and std from its pretrained config."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(vit)
    size = getattr(getattr(vit, "patch_embed", None), "img_size", None) or cfg["input_size"][-2:]
    return {"image_size": int(size[-1]), "mean": [float(m) for m in cfg["mean"]], "std": [float(s) for s in cfg["std"]]}


def check_data_config(cfg: Any, where: str) -> dict:
    if not isinstance(cfg, Mapping) or set(cfg) != {"image_size", "mean", "std"}:
        raise CheckpointError(f"{where}: expected {{image_size, mean, std}}, got {cfg!r:.120}")
    size, mean, std = cfg["image_size"], cfg["mean"], cfg["std"]
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= 65536:
        raise CheckpointError(f"{where}.image_size={size!r}: expected an integer in [1, 65536]")
    for key, values in (("mean", mean), ("std", std)):
        if not isinstance(values, (list, tuple)) or not values or not all(_finite(v) for v in values):
            raise CheckpointError(f"{where}.{key}={values!r:.80}: expected a list of numbers")
    return {"image_size": int(size), "mean": [float(m) for m in mean], "std": [float(s) for s in std]}


SOURCE_KEYS = ("name", "kwargs", "pretrained", "checkpoint", "seed")


def normalise_source(source: Optional[Mapping]) -> Optional[dict]:
    """How to rebuild the backbone without being handed one: ``create_backbone`` arguments and the seed a
    randomly initialised backbone was drawn with. A checkpoint shipped with gift_cl is named ``asset:<file>``
    (valid on any machine); any other local file keeps its path."""
    if source is None:
        return None
    source = {k: source.get(k) for k in SOURCE_KEYS}
    checkpoint = source["checkpoint"]
    if checkpoint:
        path = Path(str(checkpoint)).expanduser().resolve()
        source["checkpoint"] = f"asset:{path.name}" if path.parent == ASSETS.resolve() else str(path)
    source["kwargs"] = jsonable(dict(source["kwargs"] or {}))
    source["pretrained"] = bool(source["pretrained"])
    source["seed"] = int(source["seed"] or 0)
    return source


def source_arguments(source: Any, path: Path) -> tuple[dict, int]:
    """``create_backbone`` arguments (checkpoint resolved) and the seed, from a ``source`` read from ``path``."""
    from .config import SEED_RANGE, ConfigError

    if not isinstance(source, dict) or set(source) != set(SOURCE_KEYS):
        raise CheckpointError(f"{path}: backbone.source must hold exactly {list(SOURCE_KEYS)}")
    if not isinstance(source["name"], str) or not isinstance(source["kwargs"], dict) \
            or not isinstance(source["pretrained"], bool) or not (source["checkpoint"] is None
                                                                   or isinstance(source["checkpoint"], str)):
        raise CheckpointError(f"{path}: backbone.source: name (string), kwargs (mapping), pretrained (boolean), "
                              f"checkpoint (string or null) expected, got {source!r:.160}")
    try:
        SEED_RANGE.check(source["seed"], "backbone.source.seed")
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None
    checkpoint = source["checkpoint"]
    if checkpoint and checkpoint.startswith("asset:"):
        name = checkpoint[len("asset:"):]
        if not SAFE_NAME.fullmatch(name) or not (ASSETS / name).is_file():
            raise BackboneError(f"{path}: backbone.source.checkpoint={checkpoint!r}: no such file shipped with this "
                                f"gift_cl ({ASSETS}); pass backbone= with the backbone the model was trained on")
        checkpoint = str(ASSETS / name)
    args = {"name": source["name"], "kwargs": source["kwargs"], "pretrained": source["pretrained"],
            "checkpoint": checkpoint}
    return args, int(source["seed"])


# ---------------------------------------------------------------------- tasks
def task_entries(labels: Sequence[int], num_classes: Mapping[int, int], names: Mapping[int, str],
                 class_names: Mapping[int, Optional[Sequence[str]]]) -> list[dict]:
    """``tasks`` of the config: label, name, number of classes, class names (None where unknown), checked."""
    out = []
    for label in labels:
        classes = class_names.get(label)
        entry = {"label": int(label), "name": str(names.get(label, f"task{label}")),
                 "num_classes": int(num_classes[label]),
                 "class_names": None if classes is None else [str(c) for c in classes]}
        out.append(entry)
    check_tasks(out, "tasks")
    return out


def check_tasks(tasks: Any, where: str) -> list[dict]:
    if not isinstance(tasks, list) or not tasks:
        raise CheckpointError(f"{where}: expected a non-empty list of tasks")
    for i, t in enumerate(tasks):
        here = f"{where}[{i}]"
        if not isinstance(t, dict) or set(t) != {"label", "name", "num_classes", "class_names"}:
            raise CheckpointError(f"{here}: expected {{label, name, num_classes, class_names}}, got {t!r:.120}")
        if isinstance(t["label"], bool) or not isinstance(t["label"], int) or not 0 <= t["label"] < 2**31:
            raise CheckpointError(f"{here}.label={t['label']!r}: expected an integer >= 0")
        if not isinstance(t["name"], str) or not 1 <= len(t["name"]) <= 256 or not t["name"].isprintable():
            raise CheckpointError(f"{here}.name={t['name']!r:.80}: expected 1-256 printable characters")
        n = t["num_classes"]
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10**7:
            raise CheckpointError(f"{here}.num_classes={n!r}: expected an integer >= 1")
        names = t["class_names"]
        if names is not None and (not isinstance(names, list) or len(names) != n
                                  or not all(isinstance(c, str) for c in names)):
            raise CheckpointError(f"{here}.class_names: expected null or {n} strings")
    for what, seen in (("label", [t["label"] for t in tasks]), ("name", [t["name"] for t in tasks]),
                       ("file name", [file_stem(t["label"], t["name"]) for t in tasks])):
        if len(set(seen)) != len(seen):
            raise CheckpointError(f"{where}: a task {what} appears twice in {seen}")
    return tasks


def file_stem(label: int, name: str) -> str:
    """The file name (without suffix) of a task's weights: its name where that is a safe file name, else
    ``task<label>``. Derived, never read from a file: a crafted name cannot point outside the directory."""
    return name if SAFE_NAME.fullmatch(name) else f"task{int(label)}"


# ---------------------------------------------------------------------- helpers
def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists and whatever JSON cannot hold (callables, tensors) left out."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items() if _representable(v)}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value if _representable(v)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    return None


def _representable(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str, Mapping, list, tuple)) or (
        dataclasses.is_dataclass(value) and not isinstance(value, type))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def json_text(doc: Any) -> str:
    return json.dumps(doc, indent=2, allow_nan=False)


__all__ = ["build_method", "check_tasks", "describe_backbone", "file_stem", "fingerprint", "gift_cl_version",
           "method_node",
           "plain_backbone_tensors", "task_entries", "timm_model"]
