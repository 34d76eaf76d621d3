"""Trained tasks in the two forms the wider ecosystem serves: peft LoRA adapters on the stock timm ViT, and
merged timm checkpoints.

**GIFT as peft.** Once a task is trained, GIFT's residual on a target layer is a fixed low-rank matrix,
``ΔW_t = h_t ψ_tᵀ`` with ``h_t`` (d_out × d') generated from the frozen weights and ``ψ_t`` (d_in × d') the task's
recovery: exactly a LoRA adapter of rank d' with ``B = h_t``, ``A = ψ_tᵀ`` and scaling 1 (``lora_alpha = r``).
:func:`export_peft` writes one peft adapter per task (``adapter_config.json`` + ``adapter_model.safetensors``,
the task's classifier as ``modules_to_save=["head"]``) that peft loads onto a plain ``timm.create_model(...)``;
several load side by side and serve a mixed batch through ``adapter_names`` (peft >= 0.13, the first release
whose ``modules_to_save`` follow ``adapter_names``). Whatever the generator (PaCa, linear, attention, MLP) and
whichever layers it targets. Written without importing peft.

Also exported: LoRA (``attn.proj`` or ``attn.qkv``; peft's scaling ``lora_alpha / r`` is loralib's ``alpha / r``)
and the linear probe (its heads, on a LoRA whose ``B`` is zero, so the backbone is the frozen one exactly).
Not expressible as peft adapters (:data:`NOT_PEFT` says why): BitFit, bottleneck adapters, VPT, full
fine-tuning, a shared trained backbone, ArtiHippo, and any model with an add-on (GIST, Coeff-Tuning).

Heads: one peft model holds one ``head`` shape, so every exported head has ``num_classes`` outputs (default:
the largest task's); a task's extra outputs have weight 0 and bias ``PAD_LOGIT`` (-1e9), the value gift_cl
pads mixed batches with, so its logits are the gift_cl model's, padded alike.

**Merged.** :func:`export_merged` writes each task as a plain timm state dict (``W + ΔW`` merged, the task's
head as ``head``) that ``timm.create_model(..., num_classes=C)`` loads strictly, with the same metadata as a
saved model (method, backbone, data config, task) beside it: GIFT (``merge_and_unload``), LoRA, BitFit, the
linear probe, full fine-tuning and the shared backbone.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Optional, Sequence, cast

import torch
from torch import nn

from .atomic import save_safetensors, write_json, write_text
from .backbones import _classifier_prefixes
from .checkpoint import CheckpointError
from .injection import find_linear_targets, set_submodule
from .methods import BitFit, FullFinetune, GiftMethod, LinearProbe, LoraMethod, SharedBackbone, TaskAwareModel
from .model_meta import describe_backbone, file_stem, gift_cl_version, method_node, timm_model
from .padding import PAD_LOGIT
from .pretrained import TaskModels

PEFT_MANIFEST = "gift_cl_peft.json"
MERGED_FORMAT = "gift_cl.merged"
PEFT_FORMAT = "gift_cl.peft_export"
MIN_PEFT = "0.13"  # ModulesToSaveWrapper follows adapter_names from this release on


class ExportError(CheckpointError):
    """A model that cannot be exported in the form asked for: says why, and what to use instead."""


NOT_PEFT = {
    "BitFit": "its per-task parameters are the biases of every layer: a LoRA adds x·AᵀBᵀ, never a constant, and "
              "peft's bias= option trains the base model's one shared set of biases, not one per adapter",
    "AdapterMethod": "its adapters are nonlinear bottlenecks beside each branch, s·up(GELU(down(x))): not a weight "
                     "change",
    "GistAdapterMethod": "its adapters are nonlinear bottlenecks on the residual stream, s·up(GELU(down(x))): not a "
                         "weight change",
    "VptDeep": "its prompts are extra tokens in every block, not a weight change (peft's prompt tuning is for "
               "transformers language models)",
    "FullFinetune": "every weight of a task's copy changes (embeddings, norms, [CLS], ...), not a low-rank residual "
                    "on linear layers: use the merged export",
    "SharedBackbone": "the backbone itself is trained and shared by all tasks, not a residual per task: use the "
                      "merged export",
    "ArtiHippo": "a task's architecture replaces attention projections by new experts or bypasses the attention "
                 "(skip), which is not a low-rank residual",
}
ADDONS_NOT_PEFT = "add-ons change the ViT's forward (GIST adds a token, Coeff-Tuning recombines attention maps)"


# ---------------------------------------------------------------------- per method: LoRA factors of a task
def _gift_factors(model, task: int) -> dict:
    """``{layer: (A, B, alpha)}``: ``A = ψᵀ`` (d' × d_in), ``B = h`` (d_out × d'), ``alpha = d'`` (scaling 1)."""
    gift, out = model.gift, {}
    for key, names in gift.groups.items():
        res = gift.generators[key](gift.target_weights(key), head=str(task), factored=True)
        for name, h in zip(names, res.h.unbind(0)):
            out[name] = (res.psi.t(), h, res.psi.shape[1])
    return out


def _lora_factors(model, task: int) -> dict:
    out = {}
    for name in model.targets:
        layer = model.backbone.get_submodule(name)
        adapter = layer.adapters[str(task)]
        out[name] = (adapter.lora_A, adapter.lora_B, layer.alpha)
    return out


def _probe_factors(model, task: int) -> dict:
    """A rank-1 LoRA with ``B = 0`` on the attention projections: peft needs a target; it adds exact zeros."""
    out = {}
    for name, layer in find_linear_targets(model.backbone, ["attn.proj"]):
        out[name] = (torch.zeros(1, layer.in_features), torch.zeros(layer.out_features, 1), 1)
    return out


def _factor_makers() -> dict[type, Callable]:
    return {GiftMethod: _gift_factors, LoraMethod: _lora_factors, LinearProbe: _probe_factors}


# ---------------------------------------------------------------------- per method: merged timm state of a task
def _gift_merged(model, task: int) -> dict:
    return model.gift.merged_copy(str(task)).state_dict()  # merge_and_unload on a copy


def _lora_merged(model, task: int) -> dict:
    vit = copy.deepcopy(model.backbone)
    for name in model.targets:
        set_submodule(vit, name, vit.get_submodule(name).merged(str(task)))
    return vit.state_dict()


def _bitfit_merged(model, task: int) -> dict:
    state = dict(model.backbone.state_dict())
    state.update({n: bias.detach() for n, bias in model.backbone_biases(task).items()})
    return state


def _merged_makers() -> dict[type, Callable]:
    return {GiftMethod: _gift_merged, LoraMethod: _lora_merged, BitFit: _bitfit_merged,
            LinearProbe: lambda m, t: m.backbone.state_dict(),
            FullFinetune: lambda m, t: m.backbones[str(t)].state_dict(),
            SharedBackbone: lambda m, t: m.backbone.state_dict()}


# ---------------------------------------------------------------------- the tasks of a model
def _task_models(model: nn.Module, tasks: Optional[Sequence[str]]) -> list[tuple[dict, TaskAwareModel]]:
    """``[(task entry, the model serving it)]`` for a TaskAwareModel or a TaskModels, names from the model's
    ``pretrained_config`` (``task<label>`` otherwise), restricted to ``tasks`` (names) if given."""
    config = getattr(model, "pretrained_config", None) or {}
    known = {t["label"]: t for t in config.get("tasks", [])}
    # from_pretrained's models (typed nn.Module): a TaskModels of TaskAwareModels, or a TaskAwareModel
    pairs: list[tuple[int, TaskAwareModel]]
    if isinstance(model, TaskModels):
        pairs = [(t, cast("TaskAwareModel", model.model(t))) for t in model.tasks]
    else:
        single = cast("TaskAwareModel", model)
        pairs = [(int(t), single) for t in single.classifiers]
    out = []
    for label, part in pairs:
        entry = dict(known.get(label) or {"label": label, "name": f"task{label}", "class_names": None})
        entry["num_classes"] = _classifier(part, label).out_features
        out.append((entry, part))
    if tasks is not None:
        names = [e["name"] for e, _ in out]
        unknown = [t for t in tasks if t not in names]
        if unknown:
            raise ExportError(f"no task {unknown}; tasks: {names}")
        out = [(e, m) for e, m in out if e["name"] in tasks]
    if not out:
        raise ExportError("the model has no tasks to export")
    return out


def _maker(makers: dict, part: TaskAwareModel, what: str, reasons: dict) -> Callable:
    if len(getattr(part, "model_addons", ())):
        raise ExportError(f"{type(part).__name__} with add-ons {sorted(part.model_addons)} cannot be exported as "
                          f"{what}: {ADDONS_NOT_PEFT}")
    for cls, fn in makers.items():
        if type(part) is cls:
            return fn
    name = type(part).__name__
    why = reasons.get(name, "it is not one of the methods this export knows")
    raise ExportError(f"{name} cannot be exported as {what}: {why}")


def _classifier(part: TaskAwareModel, label: int) -> nn.Linear:
    """Task ``label``'s classifier (nn.ModuleDict is typed Module; a method's classifiers are nn.Linear)."""
    return cast(nn.Linear, part.classifiers[str(label)])


def _head(part: TaskAwareModel, label: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The task's classifier padded to ``num_classes`` outputs (weight 0, bias PAD_LOGIT beyond its own)."""
    head = _classifier(part, label)
    weight = head.weight.new_zeros(num_classes, head.in_features)
    bias = head.weight.new_full((num_classes,), PAD_LOGIT)
    weight[: head.out_features] = head.weight.detach()
    bias[: head.out_features] = head.bias.detach()
    return weight, bias


def _create_model_call(model: nn.Module, backbone: dict, num_classes: int) -> dict:
    source = backbone.get("source") or {}
    return {"model_name": source.get("name") or backbone["architecture"], "kwargs": source.get("kwargs") or {},
            "num_classes": num_classes}


def _describe(part: TaskAwareModel, model: nn.Module) -> dict:
    config = getattr(model, "pretrained_config", None) or {}
    previous = config.get("backbone") or {}
    return describe_backbone(part, previous.get("source"), previous.get("data_config"))


# ---------------------------------------------------------------------- peft
@torch.no_grad()
def export_peft(model: nn.Module, directory, tasks: Optional[Sequence[str]] = None,
                num_classes: Optional[int] = None) -> dict[str, Path]:
    """One peft LoRA adapter per task under ``directory/<task>/`` (``task<label>`` where the name is no safe file
    name), a manifest (``gift_cl_peft.json``) and a
    README with the peft-only code to use them. ``model``: a TaskAwareModel or TaskModels (names from its
    ``pretrained_config``); ``tasks``: names to export (default all); ``num_classes``: the head width of the
    timm model the adapters load onto (default: the largest task's). Returns ``{task: adapter directory}``."""
    directory = Path(directory)
    pairs = _task_models(model, tasks)
    makers = _factor_makers()
    width = max(e["num_classes"] for e, _ in pairs)
    if num_classes is None:
        num_classes = width
    if num_classes < width:
        raise ExportError(f"num_classes={num_classes}: a task has {width} classes; the shared head needs at least that")
    first = pairs[0][1]
    backbone = _describe(first, model)
    head_name = _classifier_prefixes(timm_model(first))[0].rstrip(".")
    written, manifest_tasks = {}, []
    for entry, part in pairs:
        factors = _maker(makers, part, "a peft LoRA adapter", NOT_PEFT)(part, entry["label"])
        ranks = {a.shape[0] for a, _, _ in factors.values()}
        alphas = {alpha for _, _, alpha in factors.values()}
        if len(ranks) != 1 or len(alphas) != 1:
            raise ExportError(f"task {entry['name']}: layers of different ranks {sorted(ranks)} or alphas")
        rank, alpha = ranks.pop(), alphas.pop()
        tensors = {}
        for layer, (a, b, _) in factors.items():
            tensors[f"base_model.model.{layer}.lora_A.weight"] = a.detach().float()
            tensors[f"base_model.model.{layer}.lora_B.weight"] = b.detach().float()
        weight, bias = _head(part, entry["label"], num_classes)
        tensors[f"base_model.model.{head_name}.weight"] = weight
        tensors[f"base_model.model.{head_name}.bias"] = bias
        stem = file_stem(entry["label"], entry["name"])
        out = directory / stem
        save_safetensors(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
        write_json(_lora_config(backbone["architecture"], sorted(factors), rank, alpha, head_name),
                   out / "adapter_config.json")
        written[entry["name"]] = out
        manifest_tasks.append({**entry, "adapter": stem, "rank": rank, "lora_alpha": alpha,
                               "target_modules": sorted(factors)})
    call = _create_model_call(first, backbone, num_classes)
    manifest = {"format": PEFT_FORMAT, "format_version": 1, "gift_cl_version": gift_cl_version(),
                "peft_min_version": MIN_PEFT, "method": method_node(first), "backbone": backbone,
                "create_model": call, "num_classes": num_classes, "pad_logit": float(_pad()),
                "tasks": manifest_tasks}
    write_json(manifest, directory / PEFT_MANIFEST)
    write_text(_peft_readme(manifest), directory / "README.md")
    return written


def _pad() -> float:
    return PAD_LOGIT


def _lora_config(architecture: str, targets: list[str], rank: int, alpha: float, head: str) -> dict:
    """peft's LoraConfig as ``adapter_config.json`` (fields every peft >= 0.13 reads)."""
    return {"peft_type": "LORA", "task_type": None, "base_model_name_or_path": architecture, "revision": None,
            "inference_mode": True, "r": int(rank), "lora_alpha": alpha, "lora_dropout": 0.0,
            "target_modules": targets, "modules_to_save": [head], "bias": "none", "fan_in_fan_out": False,
            "init_lora_weights": True, "use_rslora": False, "use_dora": False, "layers_to_transform": None,
            "layers_pattern": None, "rank_pattern": {}, "alpha_pattern": {}}


def _peft_readme(manifest: dict) -> str:
    call = manifest["create_model"]
    data = manifest["backbone"]["data_config"]
    names = [t["adapter"] for t in manifest["tasks"]]
    rows = "\n".join(f"| {t['name']} | {t['num_classes']} | {t['rank']} |" for t in manifest["tasks"])
    kwargs = "".join(f", {k}={v!r}" for k, v in call["kwargs"].items())
    return f"""# peft LoRA adapters, one per task (exported by gift_cl {manifest['gift_cl_version']})

Base model: `timm.create_model({call['model_name']!r}{kwargs}, num_classes={call['num_classes']})` with the backbone
weights whose SHA-256 (state-dict order, classifier excluded) is `{manifest['backbone']['weights_sha256']}`.
Inputs: {data['image_size']} px, normalised with mean {data['mean']} and std {data['std']}. Every head has
{call['num_classes']} outputs; a task's outputs beyond its own classes are {manifest['pad_logit']:g}.
Needs peft >= {manifest['peft_min_version']}.

| task (adapter) | classes | rank |
|---|---|---|
{rows}

```python
import timm, torch
from peft import PeftModel

base = timm.create_model({call['model_name']!r}{kwargs}, num_classes={call['num_classes']})
# base.load_state_dict(<the backbone weights>, strict=False)   # the frozen backbone the adapters were trained on
model = PeftModel.from_pretrained(base, "{names[0]}", adapter_name="{names[0]}")
{chr(10).join(f'model.load_adapter("{n}", adapter_name="{n}")' for n in names[1:])}
model.eval()
with torch.no_grad():
    model.set_adapter("{names[0]}")
    logits = model(images)                                  # one task
    logits = model(images, adapter_names=[...])             # a mixed batch: one adapter name per image
```
"""


# ---------------------------------------------------------------------- merged
@torch.no_grad()
def export_merged(model: nn.Module, directory, tasks: Optional[Sequence[str]] = None) -> dict[str, Path]:
    """Each task as ``directory/<task>.safetensors``, a plain timm state dict with the task's ΔW merged and its
    head (``timm.create_model(..., num_classes=<task classes>)`` loads it strictly), and ``<task>.json``, the
    metadata a saved model carries (method, backbone and its fingerprint, data config, the timm call, task)."""
    directory = Path(directory)
    makers = _merged_makers()
    written = {}
    for entry, part in _task_models(model, tasks):
        state = {k: v.detach() for k, v in _maker(makers, part, "a merged timm model", {})(part, entry["label"]).items()}
        head_name = _classifier_prefixes(timm_model(part))[0].rstrip(".")
        head = _classifier(part, entry["label"])
        state[f"{head_name}.weight"], state[f"{head_name}.bias"] = head.weight.detach(), head.bias.detach()
        backbone = _describe(part, model)
        stem = file_stem(entry["label"], entry["name"])
        path = directory / f"{stem}.safetensors"
        save_safetensors(state, path, metadata={"format": "pt", "gift_cl.format": MERGED_FORMAT,
                                                "gift_cl.task": entry["name"]})
        write_json({"format": MERGED_FORMAT, "format_version": 1, "gift_cl_version": gift_cl_version(),
                    "method": method_node(part), "backbone": backbone,
                    "create_model": _create_model_call(part, backbone, entry["num_classes"]), "task": entry},
                   directory / f"{stem}.json")
        written[entry["name"]] = path
    return written


__all__ = ["ExportError", "NOT_PEFT", "export_merged", "export_peft"]
