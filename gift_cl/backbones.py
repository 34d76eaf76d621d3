"""Backbones: a timm name, pretrained from the hub when online or from a local checkpoint file offline.

The project's own small pretrained ViT (formula-driven images and the held-out procedural upstream domains,
``python -m gift_cl.pretrain``) ships as ``gift_cl/assets/vit_formula.safetensors`` (the previous one as
``vit_procedural.safetensors``) and loads through exactly the same local-checkpoint path a user with real ViT-B
weights takes.

A local checkpoint must fit: every backbone tensor present with its shape, nothing left over, every value
finite. Otherwise the frozen backbone would stay random (timm only logs missing keys) and the run would
finish with lower numbers and exit 0. The file is read without running code (safetensors, or
``torch.load(weights_only=True)``); anything else is one :class:`BackboneError` naming the file.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import timm
from torch import nn

ASSETS = Path(__file__).parent / "assets"
log = logging.getLogger("gift_cl")

# wrappers a checkpoint may put around a backbone's state dict: ``{"state_dict": ...}`` (and a trainer's
# ``{"model": ...}``), and key prefixes of DataParallel (``module.``) and of models holding the ViT
NESTING_KEYS = ("state_dict", "model", "module")
KNOWN_PREFIXES = ("module.", "backbone.", "model.")
# timm.create_model arguments that load or describe weights: those come from model.checkpoint / pretrained
LOADER_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir",
                 "num_classes")


class BackboneError(RuntimeError):
    """The backbone cannot be built: says which source was tried and what to do instead."""


def asset_path(name: str) -> str:
    return str(ASSETS / name)


def create_backbone(
    name: str,
    num_classes: int,
    pretrained: bool = False,
    checkpoint: Optional[str] = None,
    kwargs: Optional[dict] = None,
    **data: Any,
) -> nn.Module:
    """Build a timm model with a fresh ``num_classes`` head.

    - ``checkpoint``: a local ``.pth``/``.safetensors`` state dict (:func:`load_backbone_checkpoint`): every
      backbone tensor must be there, nothing else (the classifier ``head`` may differ or be absent; a
      ``state_dict``/``model`` wrapper and a ``module.``/``backbone.``/``model.`` prefix are taken off, and the
      log says so); position embeddings (and even patch size) are resampled to ``kwargs`` by timm.
    - ``pretrained=True`` without a checkpoint: the timm hub weights (needs network or a warm HF cache).
    - neither: random initialisation (tests and from-scratch runs).
    Loaded weights must be finite. ``data`` (``image_size``, ``mean``, ``std``: the rest of a ``model`` config)
    belongs to the data side and is not used here; any other key is a :class:`BackboneError` naming it (a
    misspelt ``model.chekpoint`` would otherwise build a random backbone without a word).
    """
    _check_model_keys(data)
    kwargs = _check_kwargs(kwargs)
    _check_name(name)
    if checkpoint:
        path = _checkpoint_path(checkpoint, name)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
        load_backbone_checkpoint(model, path)
        return model
    if pretrained:
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
        except Exception as err:  # hub errors come in many types; all mean the same to the user
            raise BackboneError(
                f"could not load pretrained weights for {name!r} from the hub ({type(err).__name__}: {err}). "
                f"Offline, download the weights elsewhere and pass model.checkpoint=/path/to/file.(pth|safetensors)"
            ) from err
        _check_finite(model.state_dict(), f"the hub weights of {name!r}")
        return model
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)


def _check_model_keys(data: dict) -> None:
    """The keys of a ``model`` config beyond the backbone's own arguments: only :data:`DATA_KEYS`."""
    unknown = sorted(k for k in data if k not in DATA_KEYS)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], MODEL_KEYS, n=1)
        hint = f" (did you mean model.{close[0]}?)" if close else ""
        raise BackboneError(f"model.{unknown[0]}: unknown key{hint}; a model config has only "
                            f"{', '.join(MODEL_KEYS)}")


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not timm.is_model(name.split(".")[0]):
        raise BackboneError(f"unknown timm model {name!r}")


def _checkpoint_path(checkpoint: Any, name: str) -> Path:
    path = Path(os.path.expanduser(str(checkpoint)))
    if not path.is_file():
        raise BackboneError(
            f"backbone checkpoint not found: {path}. Expected a .pth or .safetensors state dict for {name!r}"
            + (" (create the project backbone with `python -m gift_cl.pretrain`)" if ASSETS in path.parents else "")
        )
    return path


def _check_kwargs(kwargs: Any) -> dict:
    """``model.kwargs`` are architecture arguments: plain values, and none of timm's weight-loading ones."""
    kwargs = dict(kwargs or {})
    for key, value in kwargs.items():
        if key in LOADER_KWARGS:
            raise BackboneError(f"model.kwargs.{key}: not allowed; the weights come from model.checkpoint "
                                f"(a local file) or model.pretrained (the hub)")
        if not _is_plain(value):
            raise BackboneError(f"model.kwargs.{key}={value!r}: expected a number, string, boolean, null or a "
                                f"list/mapping of those")
    return kwargs


def _is_plain(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return value is None or isinstance(value, (bool, int, float, str))


# ----------------------------------------------------------------------------- local checkpoints
def load_backbone_checkpoint(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model`` (all but its classifier), refusing a checkpoint that does not fit."""
    state, prefix, dropped = fitted_state(model, path)
    model.load_state_dict(state, strict=False)  # strict but for the classifier, checked by fitted_state
    if prefix:
        log.info("backbone checkpoint %s: prefix %r taken off the keys%s", path, prefix,
                 f"; {len(dropped)} entries without it ignored ({_some(dropped, 3)})" if dropped else "")
    log.info("backbone %s: %d tensors loaded from %s", type(model).__name__, len(state), path)


def fitted_state(model: nn.Module, path: Path) -> tuple[dict, str, list]:
    """The state dict in ``path`` as ``model`` takes it: unwrapped, its known prefix taken off, converted by
    timm, checked finite and to hold exactly the backbone's tensors with their shapes (the classifier aside).
    ``model`` may live on the meta device (only names and shapes are read from it). Returns the state dict,
    the prefix taken off and the entries left out for not having it."""
    state = _unwrap(read_checkpoint(path), path)
    heads = _classifier_prefixes(model)
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(heads)}
    state, prefix, dropped = _strip_prefix(state, set(expected))
    state = _timm_filter(model, {k: v for k, v in state.items() if not k.startswith(heads)}, path)
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    _check_fits(state, expected, path, prefix)
    _check_finite(state, f"backbone checkpoint {path}")
    return state, prefix, dropped


def check_backbone(name: str, pretrained: bool = False, checkpoint: Optional[str] = None,
                   kwargs: Optional[dict] = None, **data: Any) -> None:
    """What :func:`create_backbone` would refuse about a model config, found before a run does any work: the
    name, ``kwargs``, and a local checkpoint read and checked against the architecture built on the meta
    device (no weights are initialised or loaded). The hub is not contacted. Cached per file version, so a
    sweep checking hundreds of configurations reads each checkpoint once."""
    _check_model_keys(data)
    kwargs = _check_kwargs(kwargs)
    _check_name(name)
    if not checkpoint:
        return
    path = _checkpoint_path(checkpoint, name)
    stat = path.stat()
    _check_checkpoint_fits(name, json.dumps(kwargs, sort_keys=True), str(path.resolve()), stat.st_mtime_ns,
                           stat.st_size)


@lru_cache(maxsize=32)
def _check_checkpoint_fits(name: str, kwargs_json: str, path: str, mtime_ns: int, size: int) -> None:
    import torch

    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0, **json.loads(kwargs_json))
    except Exception:  # noqa: BLE001 (an architecture that cannot be built on meta: create_backbone checks it)
        return
    fitted_state(model, Path(path))


def read_checkpoint(path: Path) -> Any:
    """The object in a checkpoint file, read without running code: safetensors, or a torch file through
    ``torch.load(weights_only=True)`` (tensors and containers only). Told apart by content, not suffix."""
    import torch
    from safetensors.torch import load_file

    size = path.stat().st_size
    if size == 0:
        raise BackboneError(f"backbone checkpoint {path} is empty; expected a .pth or .safetensors state dict")
    with open(path, "rb") as f:
        head = f.read(512)
    header = int.from_bytes(head[:8], "little") if len(head) >= 9 else 0
    try:
        if head[8:9] == b"{" and 0 < header <= size - 8:
            return load_file(str(path))
        if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch's zip format, or a (legacy) pickle
            with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line only
                warnings.simplefilter("ignore")
                return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (torch, zip, pickle and safetensors errors: one message)
        raise BackboneError(f"backbone checkpoint {path}: {_unreadable(err)}") from None
    what = "a text file" if _is_text(head) else "neither a PyTorch (.pth) nor a safetensors file"
    raise BackboneError(f"backbone checkpoint {path} is {what}; expected a .pth or .safetensors state dict")


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(c.isprintable() or c.isspace() for c in text)


def _unreadable(err: Exception) -> str:
    """Why a file could not be read, in one line, without torch's advice to load it unsafely."""
    text = str(err)
    if "Weights only load failed" in text:
        called = re.search(r"GLOBAL ([\w.]+)", text)
        what = f"calls {called[1]}" if called else "holds instructions beyond tensors and containers"
        return (f"a pickle that {what} when loaded: refused (checkpoints are read with weights_only=True, "
                f"as plain tensors only); save the weights as a state dict or .safetensors")
    return f"not readable as a checkpoint, truncated or corrupt? ({type(err).__name__}: {_first_line(err)})"


def _first_line(err: Exception) -> str:
    """The first sentence of an error message (torch's run on for lines), at most 200 characters."""
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0][:200] if text else ""


def _unwrap(obj: Any, path: Path) -> dict:
    """The tensor mapping inside a checkpoint: ``{"state_dict": {...}}`` and ``{"model": {...}}`` are opened."""
    import torch

    opened = []
    while isinstance(obj, dict) and not all(torch.is_tensor(v) for v in obj.values()):
        key = next((k for k in NESTING_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        opened.append(key)
        obj = obj[key]
    if not isinstance(obj, dict) or not obj:
        raise BackboneError(f"backbone checkpoint {path} holds no state dict (a {type(obj).__name__}); expected a "
                            f"mapping of tensor names to tensors")
    others = sorted(str(k) for k, v in obj.items() if not torch.is_tensor(v))
    if others:
        raise BackboneError(f"backbone checkpoint {path}: entries that are not tensors: {_some(others)}; expected a "
                            f"state dict (or one under {'/'.join(NESTING_KEYS)})")
    if opened:
        log.info("backbone checkpoint %s: the state dict under %s", path, "/".join(opened))
    return obj


def _strip_prefix(state: dict, expected: set) -> tuple[dict, str, list]:
    """The state dict with the known prefix (``module.``, ``backbone.``, ``model.``, also nested) taken off
    whose keys match the backbone best; unprefixed wins ties. Returns it, the prefix, the entries left out."""
    best, best_prefix = state, ""
    best_score = len(expected & set(state))
    frontier = [("", state)]
    for _ in range(3):
        frontier = [(prefix + p, {k[len(p):]: v for k, v in d.items() if k.startswith(p)})
                    for prefix, d in frontier for p in KNOWN_PREFIXES]
        frontier = [(prefix, d) for prefix, d in frontier if d]
        for prefix, d in frontier:
            score = len(expected & set(d))
            if score > best_score:
                best, best_prefix, best_score = d, prefix, score
    dropped = sorted(k for k in state if not k.startswith(best_prefix)) if best_prefix else []
    return best, best_prefix, dropped


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names)


def _timm_filter(model: nn.Module, state: dict, path: Path) -> dict:
    """timm's own conversion for the architecture (position-embedding resampling to ``img_size``, patch-size
    resizing, other layouts), as its pretrained loader applies it."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state
    try:
        try:
            return fn(state, model)
        except TypeError:
            return fn(state)
    except Exception as err:  # noqa: BLE001 (a checkpoint timm cannot adapt: shapes, layout)
        raise BackboneError(f"backbone checkpoint {path} does not fit {type(model).__name__} "
                            f"({type(err).__name__}: {_first_line(err)})") from None


def _check_fits(state: dict, expected: dict, path: Path, prefix: str) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    stripped = f" (after taking off {prefix!r})" if prefix else ""
    if missing:
        instead = f"; the checkpoint has instead {_some(unexpected)}" if unexpected else ""
        raise BackboneError(f"backbone checkpoint {path} does not fit the model: {len(missing)} backbone tensors "
                            f"missing{stripped}: {_some(missing)}{instead}. Expected a state dict of this "
                            f"architecture (model.name / model.kwargs)")
    if unexpected:
        raise BackboneError(f"backbone checkpoint {path} does not fit the model: {len(unexpected)} tensors the "
                            f"backbone does not have{stripped}: {_some(unexpected)}. Expected a state dict of this "
                            f"architecture (model.name / model.kwargs)")
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in sorted(state)
             if tuple(state[k].shape) != tuple(expected[k].shape)]
    if wrong:
        raise BackboneError(f"backbone checkpoint {path} does not fit the model: shapes differ (checkpoint vs "
                            f"model) for {_some(wrong)}. Expected a state dict of this architecture (model.kwargs)")


def _check_finite(state: dict, source: str) -> None:
    import torch

    bad = sorted(k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()
                 and not bool(torch.isfinite(v).all()))
    if bad:
        raise BackboneError(f"{source}: non-finite (NaN or inf) values in {len(bad)} backbone tensors: {_some(bad)}; "
                            f"refusing a broken backbone")


def _some(names: list, n: int = 6) -> str:
    return ", ".join(map(str, names[:n])) + (f", … ({len(names) - n} more)" if len(names) > n else "")


# ----------------------------------------------------------------------------- data config
DATA_KEYS = ("image_size", "mean", "std")
MODEL_KEYS = ("name", "pretrained", "checkpoint", "kwargs", *DATA_KEYS)  # every key of a model config


def _img_size(kwargs: dict) -> Optional[int]:
    size = kwargs.get("img_size")
    if size is None:
        return None
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise BackboneError(f"img_size={list(size)}: only square inputs are supported")
        size = size[0]
    return int(size)


def _checkpoint_data_config(checkpoint: Optional[str]) -> dict:
    """``data_config`` from a JSON next to a local checkpoint (``<stem>.json``), if it has one."""
    if not checkpoint:
        return {}
    path = Path(os.path.expanduser(str(checkpoint))).with_suffix(".json")
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise BackboneError(f"{path}:{e.lineno}:{e.colno}: malformed JSON ({e.msg})") from None
    cfg = doc.get("data_config", {}) if isinstance(doc, dict) else {}
    return {k: cfg[k] for k in DATA_KEYS if k in cfg}


@lru_cache(maxsize=32)
def _timm_data_config(name: str, kwargs_json: str) -> tuple:
    """timm's data config of ``name`` built with ``kwargs``: on the meta device, so no weights, no memory."""
    import torch
    from timm.data import resolve_model_data_config

    kwargs = json.loads(kwargs_json)
    if not timm.is_model(name.split(".")[0]):
        raise BackboneError(f"unknown timm model {name!r}")
    try:
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs)
        cfg = resolve_model_data_config(model)
    except Exception:  # noqa: BLE001 (some architectures cannot be built on the meta device: use the registry entry)
        pcfg = timm.get_pretrained_cfg(name)
        if pcfg is None:
            raise BackboneError(f"timm has no pretrained config for {name!r}; set model.mean/std/image_size") from None
        cfg = {"input_size": pcfg.input_size, "mean": pcfg.mean, "std": pcfg.std}
    return int(cfg["input_size"][-1]), tuple(float(m) for m in cfg["mean"]), tuple(float(s) for s in cfg["std"])


def backbone_data_config(name: str, kwargs: Optional[dict] = None, checkpoint: Optional[str] = None) -> dict:
    """The input size and normalisation a backbone expects: ``{"image_size", "mean", "std"}``.

    In order of precedence: the ``data_config`` of a JSON next to a local ``checkpoint`` (how those
    weights were trained; the shipped ``vit_procedural.json`` has one), then ``kwargs["img_size"]``
    for the size (timm keeps the pretrained config's 224 when a ViT is built at another size), then
    timm's pretrained config of ``name`` (its tag decides: ``.augreg_in21k`` -> 0.5/0.5,
    ``deit_*.fb_in1k`` -> ImageNet mean/std). No weights are loaded and nothing is downloaded.
    """
    kwargs = dict(kwargs or {})
    size, mean, std = _timm_data_config(str(name), json.dumps(kwargs, sort_keys=True, default=str))
    out: dict[str, Any] = {"image_size": _img_size(kwargs) or size, "mean": list(mean), "std": list(std)}
    out.update(_checkpoint_data_config(checkpoint))
    out["image_size"] = int(out["image_size"])
    out["mean"] = [float(m) for m in out["mean"]]
    out["std"] = [float(s) for s in out["std"]]
    return out
