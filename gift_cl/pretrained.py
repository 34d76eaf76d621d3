"""``save_pretrained`` / ``from_pretrained``: a trained model as a directory that anyone can load, push to the
Hugging Face Hub as it is, and load back from there, without this framework's run directory.

A directory holds::

    gift_cl_config.json          everything needed to rebuild the model (gift_cl.model_meta): format version,
                                 method and generator config, backbone (name, pretrained_cfg, data config,
                                 weights fingerprint, where its weights come from), tasks in order (label, name,
                                 classes, class names), the results of the run it came from
    shared.safetensors           one model for all tasks (sequential / joint protocol): what tasks share (a GIFT
                                 trunk, the backbone Naive/EWC/LwF train) and the model's extra state
    tasks/<task>.safetensors     (<task>: its name, or task<label> where the name is no safe file name)
                                 each task's own trainable state (classifier, generator head, adapters, ...);
                                 one model per task (independent protocol): that task's whole model
    README.md                    a model card (the Hub shows it)

Only the trainable state is stored: the frozen backbone is the user's (``backbone=``) or rebuilt from the
config's source (a checkpoint shipped with gift_cl, timm hub weights, or the seed of a random test backbone),
and refused with one :class:`~gift_cl.backbones.BackboneError` if its weights are not the ones the model was
trained on. Loading reads JSON and safetensors only and builds the method through the configuration allowlist
(:mod:`gift_cl.config`): nothing in a directory can run code. A missing file, a newer format version, a crafted
config or safetensors header is one :class:`~gift_cl.checkpoint.CheckpointError` naming the file. The loaded
model reproduces the saved model's logits bit for bit on the same backbone.

Pushing: ``huggingface_hub.upload_folder(repo_id="me/name", folder_path=<dir>)``; loading:
``from_pretrained("me/name")`` (through ``huggingface_hub.snapshot_download``, so ``HF_HUB_OFFLINE=1`` reads the
local cache).
"""
from __future__ import annotations

import contextlib
import copy
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union, cast

import torch
from torch import nn

from .atomic import write_json, write_text
from .backbones import BackboneError
from .checkpoint import CheckpointError
from .former_names import read_former_addon_keys
from .model_meta import (
    build_method,
    check_data_config,
    check_tasks,
    describe_backbone,
    file_stem,
    fingerprint,
    gift_cl_version,
    method_node,
    plain_backbone_tensors,
    source_arguments,
    task_entries,
)
from .model_protocol import ShareableModel
from .protocols import PROTOCOLS
from .tensorfile import read_state_file, write_state_file

CONFIG_NAME = "gift_cl_config.json"
FORMAT = "gift_cl.pretrained"
FORMAT_VERSION = 1
SHARED_FILE = "shared.safetensors"
TASK_DIR = "tasks"
LAYOUTS = ("multitask", "per_task")  # one model for all tasks | one model per task (independent protocol)
MAX_CONFIG_BYTES = 64 << 20
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


# ---------------------------------------------------------------------- one model per task
class TaskModels(nn.Module):
    """One model per task (the independent protocol: each task trained alone from the same pretrained state)
    behind a task-aware model's ``forward(x, task_labels)``: a mixed batch is split by task and padded as
    :meth:`TaskAwareModel.forward_mixed` pads it. ``models``: ``{task label: one-task model}``."""

    def __init__(self, models: Mapping[int, nn.Module]):
        super().__init__()
        self.models = nn.ModuleDict({str(int(t)): m for t, m in models.items()})

    @property
    def tasks(self) -> list[int]:
        return sorted(int(t) for t in self.models)

    def model(self, task: int) -> nn.Module:
        return self.models[str(int(task))]

    def forward(self, x: torch.Tensor, task_labels) -> torch.Tensor:
        from .padding import PAD_LOGIT

        if isinstance(task_labels, int):
            return self.model(task_labels)(x, task_labels)
        task_labels = torch.as_tensor(task_labels, device=x.device)
        tasks = [int(t) for t in task_labels.unique()]
        if len(tasks) == 1:
            return self.model(tasks[0])(x, tasks[0])
        parts = {t: (task_labels == t).nonzero(as_tuple=True)[0] for t in tasks}
        logits = {t: self.model(t)(x[idx], t) for t, idx in parts.items()}
        out = x.new_full((x.shape[0], max(v.shape[1] for v in logits.values())), PAD_LOGIT)
        for t, idx in parts.items():
            out[idx, : logits[t].shape[1]] = logits[t].to(out.dtype)
        return out

    def save_pretrained(self, directory, **metadata) -> Path:
        return save_pretrained(self, directory, **metadata)


# ---------------------------------------------------------------------- saving
def save_pretrained(
    model: nn.Module,
    directory,
    *,
    task_names: Union[Sequence[str], Mapping[int, str], None] = None,
    class_names: Optional[Mapping[int, Optional[Sequence[str]]]] = None,
    protocol: Optional[str] = None,
    results: Optional[Mapping] = None,
    backbone_source: Optional[Mapping] = None,
    data_config: Optional[Mapping] = None,
) -> Path:
    """Write ``model`` (a :class:`~gift_cl.methods.TaskAwareModel`, or :class:`TaskModels` of one-task models)
    into ``directory``; returns it.

    ``task_names`` (by task label: a list ``names[label]`` or a mapping; default ``task<label>``), ``class_names``
    (``{label: [names]}``), ``protocol``, ``results`` (the run's ``results.json``), ``backbone_source``
    (``create_backbone`` arguments ``name, kwargs, pretrained, checkpoint`` and the ``seed``: lets
    ``from_pretrained`` rebuild the backbone itself) and ``data_config`` (``image_size, mean, std``; default timm's)
    are recorded; a model loaded by :func:`from_pretrained` keeps its own unless given."""
    directory = Path(directory)
    previous = getattr(model, "pretrained_config", None) or {}
    known = {t["label"]: t for t in previous.get("tasks", [])}
    protocol = protocol if protocol is not None else previous.get("protocol")
    if protocol == "independent" and not isinstance(model, TaskModels):  # one task's model of such a run
        single = cast(ShareableModel, model)  # typed nn.Module: a task-aware model when not a TaskModels
        if len(single.classifiers) != 1:
            raise CheckpointError(f"protocol='independent' keeps one model per task; this {type(model).__name__} holds "
                                  f"tasks {list(single.classifiers)}: save a TaskModels of one-task models")
        model = TaskModels({int(next(iter(single.classifiers))): model})
    reference: ShareableModel
    if isinstance(model, TaskModels):
        parts = {t: cast(ShareableModel, model.model(t)) for t in model.tasks}  # a TaskModels of TaskAwareModels
        for t, part in parts.items():
            if [int(k) for k in part.classifiers] != [t]:
                raise CheckpointError(f"TaskModels: the model for task {t} holds tasks {list(part.classifiers)}; each "
                                      f"model of a TaskModels holds its own task only")
        labels, reference, layout = list(parts), next(iter(parts.values())), "per_task"
        num_classes = {t: _num_classes(parts[t], t) for t in labels}
    else:
        reference = cast(ShareableModel, model)  # typed nn.Module: a task-aware model when not a TaskModels
        labels, layout = [int(t) for t in reference.classifiers], "multitask"
        if not labels:
            raise CheckpointError(f"{type(model).__name__} has no tasks yet: nothing to save")
        num_classes = {t: _num_classes(reference, t) for t in labels}
    if task_names is None:
        names = {t: known[t]["name"] for t in labels if t in known}
    elif isinstance(task_names, Mapping):
        names = {int(k): v for k, v in task_names.items()}
    else:
        names = {i: v for i, v in enumerate(task_names)}
    if class_names is None:
        class_names = {t: known[t]["class_names"] for t in labels if t in known}
    tasks = task_entries(labels, num_classes, names, class_names)
    name_of = {t["label"]: t["name"] for t in tasks}
    if layout == "per_task":
        for t in labels:
            write_task_model(parts[t], directory, t, name_of[t])
    else:
        shared, own = split_state(reference)  # the model itself (multitask)
        write_state_file(shared, directory / SHARED_FILE, {"format": FORMAT, "gift_cl.part": "shared"})
        for t in labels:
            write_state_file(own[t], task_file(directory, t, name_of[t]),
                             {"format": FORMAT, "gift_cl.part": "task", "gift_cl.task": name_of[t]})
    written = {task_file(directory, t, name_of[t]) for t in labels}
    _remove_stale(directory, written if layout == "per_task" else written | {directory / SHARED_FILE})
    write_config(directory, reference, tasks, layout, protocol=protocol,
                 results=results if results is not None else previous.get("results"),
                 backbone_source=backbone_source if backbone_source is not None else
                 (previous.get("backbone") or {}).get("source"),
                 data_config=data_config if data_config is not None else
                 (previous.get("backbone") or {}).get("data_config"))
    return directory


def _num_classes(model: ShareableModel, task: int) -> int:
    """Task ``task``'s number of classes (its classifier's ``out_features``)."""
    return cast(int, model.classifiers[str(task)].out_features)  # nn.ModuleDict is typed Module; an nn.Linear's


def task_file(directory: Path, label: int, name: str) -> Path:
    return Path(directory) / TASK_DIR / f"{file_stem(label, name)}.safetensors"


def _remove_stale(directory: Path, written: set) -> None:
    """A directory saved into again holds exactly the new model: weight files an earlier save wrote (this
    format, by their header) and this one did not are removed, so that what is pushed is what is loaded.
    Files gift_cl did not write are left alone."""
    from safetensors import safe_open

    for path in [directory / SHARED_FILE, *sorted((directory / TASK_DIR).glob("*.safetensors"))]:
        if path in written or not path.is_file():
            continue
        try:
            with safe_open(str(path), framework="pt") as f:
                ours = (f.metadata() or {}).get("format") == FORMAT
        except Exception:  # noqa: BLE001 (not a readable safetensors file: not ours to remove)
            ours = False
        if ours:
            path.unlink()


def write_task_model(model: ShareableModel, directory, task: int, name: str) -> Path:
    """One task's model, its whole trainable state (and extra state), as ``tasks/<name>.safetensors``: how the
    independent protocol's per-task models are stored (the run writes each as its task ends)."""
    check_tasks([{"label": int(task), "name": name, "num_classes": 1, "class_names": None}], "task")
    path = task_file(Path(directory), task, name)
    write_state_file(model.trainable_state_dict(), path,
                     {"format": FORMAT, "gift_cl.part": "task_model", "gift_cl.task": name})
    return path


def write_config(directory, model: ShareableModel, tasks: list[dict], layout: str, *, protocol: Optional[str] = None,
                 results: Optional[Mapping] = None, backbone_source: Optional[Mapping] = None,
                 data_config: Optional[Mapping] = None) -> dict:
    """``gift_cl_config.json`` (written last: a directory without it is incomplete) and the model card.
    ``model``: the model, or for ``per_task`` any one of the task models (they share method and backbone)."""
    directory = Path(directory)
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {LAYOUTS}")
    if protocol is not None and protocol not in PROTOCOLS:
        raise CheckpointError(f"protocol={protocol!r}: expected one of {tuple(PROTOCOLS)} or None")
    check_tasks(tasks, "tasks")
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "gift_cl_version": gift_cl_version(),
        "layout": layout,
        "protocol": protocol,
        "method": method_node(model),
        "backbone": describe_backbone(model, backbone_source, data_config),
        "tasks": tasks,
        "results": json.loads(json.dumps(results, default=float)) if results is not None else None,
    }
    _write_model_card(directory, doc)
    write_json(doc, directory / CONFIG_NAME)
    return doc


def split_state(model: ShareableModel) -> tuple[dict, dict[int, dict]]:
    """The trainable state split into what one task owns (its ``task_parameters`` not reachable under another
    key) and the rest (shared parameters, tied parts, buffers, extra state)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    refs = Counter(id(p) for p in params.values())
    owners: dict[int, set] = {}
    labels = [int(t) for t in model.classifiers]
    for t in labels:
        for owned in model.task_parameters(t):
            owners.setdefault(id(owned), set()).add(t)
    shared: dict[str, Any] = {}
    own: dict[int, dict] = {t: {} for t in labels}
    for key, value in model.trainable_state_dict().items():
        p = params.get(key)
        tasks = owners.get(id(p), set()) if p is not None else set()
        if p is not None and refs[id(p)] == 1 and len(tasks) == 1:
            own[next(iter(tasks))][key] = value
        else:
            shared[key] = value
    return shared, own


def _write_model_card(directory: Path, doc: dict) -> None:
    """``README.md`` for the Hub, unless the directory has one that gift_cl did not write."""
    path = directory / "README.md"
    if path.is_file() and "library_name: gift_cl" not in path.read_text(encoding="utf-8", errors="replace")[:200]:
        return
    method = doc["method"]["_target_"].rsplit(".", 1)[-1]
    bb = doc["backbone"]
    accuracy = (doc.get("results") or {}).get("final_accuracy") or {}
    cells = {t["name"]: "" if not isinstance(accuracy.get(t["name"]), (int, float)) else
             f"{100 * accuracy[t['name']]:.2f}" for t in doc["tasks"]}
    rows = "\n".join(f"| {t['name']} | {t['label']} | {t['num_classes']} | {cells[t['name']]} |" for t in doc["tasks"])
    text = f"""---
library_name: gift_cl
tags: [gift_cl, image-classification, {method}{', ' + doc['protocol'] if doc['protocol'] else ''}]
---
# {method} on `{bb['architecture']}`: {len(doc['tasks'])} task(s)

Trained with gift_cl {doc['gift_cl_version']}{f" ({doc['protocol']} protocol)" if doc['protocol'] else ''}. Backbone
`{bb['architecture']}`, {bb['data_config']['image_size']} px inputs normalised with mean {bb['data_config']['mean']}
and std {bb['data_config']['std']}; its weights' SHA-256 (state-dict order, classifier excluded):
`{bb['weights_sha256']}`. Everything needed to rebuild the model is in `{CONFIG_NAME}`.

| task | label | classes | accuracy (%) |
|---|---|---|---|
{rows}

```python
from gift_cl.pretrained import from_pretrained
model = from_pretrained("<this directory or its Hub id>")  # or backbone=timm.create_model(...) with the weights above
logits = model(images, task_label)                          # images: (B, 3, H, W), normalised as above
```
"""
    write_text(text, path)


# ---------------------------------------------------------------------- loading
def from_pretrained(source, backbone: Optional[nn.Module] = None, *, task: Optional[str] = None,
                    device: Union[str, torch.device, None] = None, revision: Optional[str] = None,
                    cache_dir=None) -> nn.Module:
    """The model saved in ``source``: a directory written by :func:`save_pretrained`, or a Hugging Face Hub id
    (``owner/name``, fetched with ``huggingface_hub.snapshot_download``; ``revision``, ``cache_dir`` are passed).

    ``backbone``: the timm model to build on (any classifier; it becomes part of the returned model, as with
    peft). Default: rebuilt from the config's source. Either way its weights must be the ones the model was
    trained on. Returns the :class:`~gift_cl.methods.TaskAwareModel` (one model for all tasks) or a
    :class:`TaskModels` (one model per task; ``task=<name>`` loads that task's model only), in eval mode, with
    the config as ``model.pretrained_config``. The caller's random state is left as it was."""
    directory = resolve_directory(source, revision, cache_dir)
    doc = read_config(directory)
    path = directory / CONFIG_NAME
    entries = doc["tasks"]
    if task is not None:
        if doc["layout"] != "per_task":
            raise CheckpointError(f"{path}: one model for all its tasks; task= picks a model of a directory that holds "
                                  f"one model per task (independent protocol)")
        entries = [t for t in entries if t["name"] == task]
        if not entries:
            raise CheckpointError(f"{path}: no task {task!r}; tasks: {[t['name'] for t in doc['tasks']]}")
    model: nn.Module
    with _caller_rng_kept():
        if backbone is None:
            backbone = _backbone_from_source(doc, path)
        _check_backbone(backbone, doc, path)
        if doc["layout"] == "multitask":
            model = _build(doc, backbone, path, entries)
            files = [task_file(directory, t["label"], t["name"]) for t in entries]
            state = _read_parts(directory, [directory / SHARED_FILE] + files)
            load_state(model, state, directory)
        else:
            backbones = [backbone] + [copy.deepcopy(backbone) for _ in entries[1:]]  # copies before any is wrapped
            models = {}
            for entry, bb in zip(entries, backbones):
                part = _build(doc, bb, path, [entry])
                file = task_file(directory, entry["label"], entry["name"])
                load_state(part, _read_parts(directory, [file]), file)
                models[entry["label"]] = part
            model = models[entries[0]["label"]] if task is not None else TaskModels(models)
    model.eval()
    if device is not None:
        model.to(device)
    # nn.Module.__setattr__ is typed Tensor | Module; any value is an attribute at run time
    cast(Any, model).pretrained_config = {**doc, "tasks": entries}
    return model


def load_method(source, cls: type, backbone: Optional[nn.Module] = None, **kwargs) -> nn.Module:
    """``cls.from_pretrained``: :func:`from_pretrained`, which must give one ``cls`` model."""
    model = from_pretrained(source, backbone=backbone, **kwargs)
    if isinstance(model, TaskModels) and len(model.models) == 1:
        model = next(iter(model.models.values()))
    if not isinstance(model, cls):
        what = (f"one model per task ({len(model.models)} tasks, independent protocol): pick one with task=<name>, or "
                f"load them all with gift_cl.pretrained.from_pretrained") if isinstance(model, TaskModels) \
            else f"a {type(model).__name__}"
        raise CheckpointError(f"{source}: holds {what}, not a {cls.__name__}")
    return model


def resolve_directory(source, revision: Optional[str] = None, cache_dir=None) -> Path:
    """A local directory, or the snapshot of a Hub repository (only the files this format reads are fetched)."""
    path = Path(str(source)).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path}: a file; expected a directory written by save_pretrained (holding {CONFIG_NAME})")
    if not HUB_ID.fullmatch(str(source)):
        raise CheckpointError(f"{source}: no such directory, and not a Hugging Face Hub id (owner/name)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise CheckpointError(f"{source}: no such directory; loading it from the Hugging Face Hub needs huggingface_hub "
                              f"(pip install huggingface_hub)") from None
    try:
        folder = snapshot_download(repo_id=str(source), revision=revision, cache_dir=cache_dir,
                                   allow_patterns=[CONFIG_NAME, SHARED_FILE, f"{TASK_DIR}/*.safetensors"],
                                   library_name="gift_cl", library_version=gift_cl_version())
    except Exception as err:  # noqa: BLE001 (offline misses, unknown repos, network and auth errors: one message)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise CheckpointError(f"{source}: no such directory, and the Hugging Face Hub could not provide it "
                              f"({type(err).__name__}: {first}). Offline (HF_HUB_OFFLINE=1) it must be in the local "
                              f"cache: download it once with huggingface_hub.snapshot_download({str(source)!r})") from None
    return Path(folder)


def read_config(directory: Path) -> dict:
    """``gift_cl_config.json``, checked: format and version first, then every field."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        hints = {"adapter_config.json": "it holds a peft adapter (load it with peft: PeftModel.from_pretrained)",
                 "config_resolved.yaml": "it is a run directory: its model is in model/, or write it with "
                                         "`gift-cl export <run dir>`"}
        hint = "".join(f"; {h}" for name, h in hints.items() if (Path(directory) / name).is_file())
        raise CheckpointError(f"{directory}: not a gift_cl model directory ({CONFIG_NAME} missing){hint}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {path.stat().st_size} bytes; a gift_cl model config is far smaller")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({type(err).__name__}: {str(err)[:200]})") from None
    return check_config(doc, path)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def check_config(doc: Any, path: Path) -> dict:
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got a {type(doc).__name__}")
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gift_cl model config (format {doc.get('format')!r}, expected {FORMAT!r})")
    version = doc.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: format_version={version!r}: expected an integer >= 1")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer gift_cl ({doc.get('gift_cl_version')!r}) in format version "
                              f"{version}; this gift_cl ({gift_cl_version()}) reads format version {FORMAT_VERSION}: "
                              f"upgrade gift_cl")
    expected = {"format", "format_version", "gift_cl_version", "layout", "protocol", "method", "backbone", "tasks",
                "results"}
    if set(doc) != expected:
        raise CheckpointError(f"{path}: fields {sorted(set(doc) ^ expected)} missing or unknown; format version "
                              f"{FORMAT_VERSION} has exactly {sorted(expected)}")
    if doc["layout"] not in LAYOUTS:
        raise CheckpointError(f"{path}: layout={doc['layout']!r}: expected one of {LAYOUTS}")
    if doc["protocol"] is not None and doc["protocol"] not in PROTOCOLS:
        raise CheckpointError(f"{path}: protocol={doc['protocol']!r}: expected one of {tuple(PROTOCOLS)} or null")
    if not isinstance(doc["gift_cl_version"], str) or not isinstance(doc["method"], dict) \
            or not (doc["results"] is None or isinstance(doc["results"], dict)):
        raise CheckpointError(f"{path}: gift_cl_version (string), method (object), results (object or null) expected")
    bb = doc["backbone"]
    keys = {"architecture", "num_features", "weights_sha256", "weights_tensors", "weights_parameters", "data_config",
            "source", "pretrained_cfg"}
    if not isinstance(bb, dict) or set(bb) != keys:
        raise CheckpointError(f"{path}: backbone must hold exactly {sorted(keys)}")
    if not isinstance(bb["architecture"], str) or not re.fullmatch(r"[0-9a-f]{64}", str(bb["weights_sha256"])) \
            or not isinstance(bb["pretrained_cfg"], dict) or not all(
                isinstance(bb[k], int) and not isinstance(bb[k], bool) and bb[k] >= 0
                for k in ("num_features", "weights_tensors", "weights_parameters")):
        raise CheckpointError(f"{path}: backbone: architecture (string), weights_sha256 (64 hex digits), counts "
                              f"(integers), pretrained_cfg (object) expected")
    try:
        check_data_config(bb["data_config"], "backbone.data_config")
        check_tasks(doc["tasks"], "tasks")
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err}") from None
    if bb["source"] is not None:
        source_arguments(bb["source"], path)
    if doc["layout"] == "multitask" and doc["protocol"] == "independent":
        raise CheckpointError(f"{path}: the independent protocol keeps one model per task (layout per_task)")
    return doc


def _build(doc: dict, backbone: nn.Module, path: Path, entries: list[dict]) -> nn.Module:
    built = build_method(doc["method"], backbone, path)
    model = cast(ShareableModel, built)  # a method node: a task-aware model
    if int(model.feature_dim) != doc["backbone"]["num_features"]:
        raise CheckpointError(f"{path}: the method gives {model.feature_dim}-dimensional features, the config says "
                              f"{doc['backbone']['num_features']}")
    for entry in entries:
        model.add_task(entry["label"], entry["num_classes"])
    return built


def _read_parts(directory: Path, files: list[Path]) -> dict:
    state: dict[str, Any] = {}
    for path in files:
        part, _ = read_state_file(path, FORMAT)
        clash = sorted(set(part) & set(state))
        if clash:
            raise CheckpointError(f"{path}: holds {clash[:3]}, which another file of {directory} holds too")
        state.update(part)
    return state


def load_state(model: nn.Module, state: Mapping[str, Any], where) -> None:
    """Load a stored trainable state into ``model``: every tensor finite, every key the model's, no trainable
    key left out, and afterwards every stored tensor held exactly (same dtype and bits)."""
    bad = sorted(k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point()
                 and not bool(torch.isfinite(v).all()))
    if bad:
        raise CheckpointError(f"{where}: non-finite (NaN or inf) values in {bad[:5]}; refusing a broken model")
    state = dict(state)
    read_former_addon_keys(state)  # a model saved under the add-ons' former key prefix
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except Exception as err:  # noqa: BLE001 (size mismatches, extra state that does not fit the method)
        first = (str(err).strip().splitlines() or [type(err).__name__])
        detail = " ".join(line.strip() for line in first[:3])[:400]
        raise CheckpointError(f"{where}: does not fit the {type(model).__name__} its config describes "
                              f"({type(err).__name__}: {detail})") from None
    missing = sorted(set(missing) - cast(ShareableModel, model).frozen_state_keys())  # built by _build
    if missing or unexpected:
        raise CheckpointError(f"{where}: does not fit the {type(model).__name__} its config describes: "
                              f"missing {missing[:5]}, unexpected {sorted(unexpected)[:5]}")
    now = model.state_dict()
    for key, value in state.items():
        if torch.is_tensor(value) and (now[key].dtype != value.dtype or not torch.equal(now[key].cpu(), value)):
            raise CheckpointError(f"{where}: {key} is stored as {value.dtype}, the model holds {now[key].dtype}; "
                                  f"refusing a conversion that would change the model")


def _backbone_from_source(doc: dict, path: Path) -> nn.Module:
    from .backbones import create_backbone
    from .rng import seed_everything

    bb = doc["backbone"]
    if bb["source"] is None:
        raise BackboneError(f"{path}: the config does not say where the weights of its backbone "
                            f"({bb['architecture']}) come from; pass backbone= the timm model it was trained on")
    args, seed = source_arguments(bb["source"], path)
    seed_everything(seed)  # a randomly initialised (test) backbone is only rebuilt under its seed
    return create_backbone(num_classes=0, **args)


def _check_backbone(backbone: nn.Module, doc: dict, path: Path) -> None:
    if not isinstance(backbone, nn.Module):
        raise BackboneError(f"backbone= must be a timm model (an nn.Module), got a {type(backbone).__name__}")
    bb = doc["backbone"]
    sha, count, size = fingerprint(plain_backbone_tensors(backbone))
    if sha != bb["weights_sha256"]:
        raise BackboneError(
            f"{path}: the model was trained on another backbone: {bb['architecture']} with {bb['weights_tensors']} "
            f"tensors, {bb['weights_parameters']:,} parameters, weights SHA-256 {bb['weights_sha256'][:16]}…; the "
            f"backbone given has {count} tensors, {size:,} parameters, SHA-256 {sha[:16]}…. Pass the backbone it was "
            f"trained on (same architecture, weights and dtype)")


@contextlib.contextmanager
def _caller_rng_kept():
    """Building a model draws random numbers (initialisations that the stored state then replaces): the
    caller's random state is put back afterwards."""
    from .rng import rng_state, set_rng_state

    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


__all__ = ["CONFIG_NAME", "FORMAT", "FORMAT_VERSION", "TaskModels", "from_pretrained", "load_method", "read_config",
           "save_pretrained", "write_config", "write_task_model"]
