"""safetensors files that carry a model's whole trainable state, its extra state included, and nothing that runs.

A task-aware model's state dict holds tensors and, under ``_extra_state`` keys, Python objects (task
prototypes, GIFT's anchors and first task, ArtiHippo's architectures). safetensors stores tensors only, so the
extra state is split here into its tensors (stored beside the others, under ``<key>::<n>``) and a JSON skeleton
(stored in the file's header metadata) that says where each tensor goes. The skeleton admits ``None``, booleans,
numbers, strings, lists, tuples, mappings with string or integer keys, and tensors; decoding refuses anything
else, so a crafted file can describe data but never an object to build.

Reading goes through the safetensors library (its header is parsed and bounds-checked before any tensor is
touched) and every failure, a truncated or crafted header, a pickle posing as safetensors, a skeleton that does
not fit, becomes one :class:`~gift_cl.checkpoint.CheckpointError` naming the file.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from .atomic import save_safetensors
from .checkpoint import CheckpointError

EXTRA_SEP = "::"  # extra-state tensors are stored as "<state key>::<n>"; no module name holds "::"
_TENSOR, _TUPLE, _DICT, _FLOAT = "__tensor__", "__tuple__", "__dict__", "__float__"


# ---------------------------------------------------------------------- extra state <-> (skeleton, tensors)
def encode_extra(state: Mapping[str, Any]) -> tuple[dict, dict[str, torch.Tensor]]:
    """``{state key: object}`` as a JSON skeleton and the tensors it refers to."""
    tensors: dict[str, torch.Tensor] = {}

    def enc(value: Any, key: str, where: str) -> Any:
        if isinstance(value, torch.Tensor):
            name = f"{key}{EXTRA_SEP}{len(tensors)}"
            tensors[name] = value.detach().cpu()
            return {_TENSOR: name}
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else {_FLOAT: repr(value)}  # JSON has no NaN or infinity
        if hasattr(value, "item") and getattr(value, "shape", None) == ():  # a numpy scalar
            return enc(value.item(), key, where)
        if isinstance(value, tuple):
            return {_TUPLE: [enc(v, key, f"{where}[{i}]") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [enc(v, key, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            pairs = []
            for k, v in value.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise CheckpointError(f"{where}: a key of type {type(k).__name__}; the extra state saved with a "
                                          f"model may be keyed by strings and integers only")
                pairs.append([k if isinstance(k, str) else int(k), enc(v, key, f"{where}[{k!r}]")])
            return {_DICT: pairs}
        raise CheckpointError(f"{where}: a {type(value).__name__} cannot be saved with a model (the extra state may "
                              f"hold tensors, numbers, strings, booleans, None, lists, tuples and mappings)")

    skeleton = {key: enc(value, key, key) for key, value in state.items()}
    return skeleton, tensors


def decode_extra(skeleton: Any, tensors: Mapping[str, torch.Tensor], path: Path) -> dict:
    """The inverse of :func:`encode_extra`; anything but its own markers is refused."""
    used: set[str] = set()

    def dec(node: Any, where: str) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [dec(v, f"{where}[{i}]") for i, v in enumerate(node)]
        if isinstance(node, dict) and len(node) == 1:
            (marker, value), = node.items()
            if marker == _TENSOR and isinstance(value, str) and value in tensors and value not in used:
                used.add(value)
                return tensors[value]
            if marker == _FLOAT and value in ("nan", "inf", "-inf"):
                return float(value)
            if marker == _TUPLE and isinstance(value, list):
                return tuple(dec(v, f"{where}[{i}]") for i, v in enumerate(value))
            if marker == _DICT and isinstance(value, list) and all(
                    isinstance(p, list) and len(p) == 2 and isinstance(p[0], (str, int)) and not isinstance(p[0], bool)
                    for p in value):
                return {k: dec(v, f"{where}[{k!r}]") for k, v in value}
        raise CheckpointError(f"{path}: the extra state at {where} is not one this project writes (expected a value, "
                              f"a list, or one of {_TENSOR}/{_TUPLE}/{_DICT}/{_FLOAT} with its content)")

    if not isinstance(skeleton, dict):
        raise CheckpointError(f"{path}: the extra-state record is a {type(skeleton).__name__}, expected a mapping")
    out = {str(k): dec(v, str(k)) for k, v in skeleton.items()}
    extra_tensors = {k for k in tensors if EXTRA_SEP in k}
    if extra_tensors != used:
        raise CheckpointError(f"{path}: extra-state tensors {sorted(extra_tensors - used)[:5]} are not referred to by "
                              f"its extra-state record (or referred to twice)")
    return out


# ---------------------------------------------------------------------- files
def write_state_file(state: Mapping[str, Any], path: str | os.PathLike, metadata: Optional[dict] = None) -> None:
    """``state`` (tensors and extra-state objects, as a state dict holds them) into one safetensors file,
    atomically; ``metadata`` (strings) goes into its header beside the extra-state skeleton."""
    tensors = {k: v for k, v in state.items() if torch.is_tensor(v)}
    clash = sorted(k for k in tensors if EXTRA_SEP in k)
    if clash:
        raise CheckpointError(f"state keys {clash[:3]} contain {EXTRA_SEP!r}, which marks saved extra state")
    skeleton, extra = encode_extra({k: v for k, v in state.items() if not torch.is_tensor(v)})
    header = {**(metadata or {}), "gift_cl.extra_state": json.dumps(skeleton)}
    save_safetensors({**tensors, **extra}, path, metadata=header)


def read_state_file(path: Path, expected_format: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A file written by :func:`write_state_file`: its state (tensors, extra state decoded) and header metadata.
    A missing, truncated, foreign or crafted file is one :class:`CheckpointError` naming it."""
    from safetensors import safe_open

    if not path.is_file():
        raise CheckpointError(f"{path}: missing; the directory lists this file (re-save the model, or download "
                              f"the whole directory)")
    if path.stat().st_size < 9:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes, not a safetensors file (truncated?)")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # noqa: BLE001 (the library's header, bounds and I/O errors: one message)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(err).__name__}: {first}); it may be "
                              f"truncated, corrupt, or another format (only safetensors is read, never a pickle)") \
            from None
    if metadata.get("format") != expected_format:
        raise CheckpointError(f"{path}: a safetensors file of format {metadata.get('format')!r}, expected "
                              f"{expected_format!r} (a file written by gift_cl's save_pretrained)")
    try:
        skeleton = json.loads(metadata.get("gift_cl.extra_state", "{}"))
    except (ValueError, RecursionError) as err:
        raise CheckpointError(f"{path}: its extra-state record is not valid JSON ({type(err).__name__})") from None
    extra = decode_extra(skeleton, tensors, path)
    state: dict[str, Any] = {k: v for k, v in tensors.items() if EXTRA_SEP not in k}
    state.update(extra)
    return state, metadata


__all__ = ["EXTRA_SEP", "decode_extra", "encode_extra", "read_state_file", "write_state_file"]
