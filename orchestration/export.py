"""A run's trained model as a shareable directory (:mod:`gift_cl.pretrained`): ``<run_dir>/model/``, written by
every run at its end, and ``gift-cl export`` (``python -m gift_cl.orchestration.export``), which writes it from a run's
checkpoints, and from there the peft adapters and merged checkpoints::

    gift-cl export outputs/gift_multitask/procedural/<time>                 # -> <run dir>/model/
    gift-cl export <run dir> --out shared/gift_decathlon --peft --merged    # + peft/ and merged/ inside it
    gift-cl export <model dir> --peft                                       # from a saved model directory

Sequential and joint runs hold one model (``checkpoints/last.pt``); independent runs one model per task, each
written to ``model/tasks/`` as its task ends (with its extra state) and otherwise rebuilt from the run's
``checkpoints/<task>.safetensors``. Everything read is checked: the saved configuration through
:func:`gift_cl.config.load_saved_config`, checkpoints with ``weights_only=True`` or as safetensors.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Optional, cast

from omegaconf import OmegaConf

from gift_cl.protocols import get_protocol

from .runfiles import CHECKPOINT, CHECKPOINTS_DIR, CONFIG_FILE, MODEL_DIR, RESULTS_FILE

log = logging.getLogger("gift_cl")


# ---------------------------------------------------------------------- what a run says about its model
def backbone_source(cfg) -> dict:
    model = cast("dict[str, Any]", OmegaConf.to_container(cfg.model, resolve=True))  # cfg.model: a mapping
    return {"name": model["name"], "kwargs": model.get("kwargs") or {}, "pretrained": bool(model.get("pretrained")),
            "checkpoint": model.get("checkpoint"), "seed": int(cfg.get("seed", 0))}


def data_config(cfg) -> dict:
    model = cfg.model
    return {"image_size": int(model.image_size), "mean": [float(v) for v in model.mean],
            "std": [float(v) for v in model.std]}


def _class_names(info) -> Optional[list]:
    names = (info or {}).get("class_names")
    return list(names) if isinstance(names, (list, tuple)) and all(isinstance(c, str) for c in names) else None


def run_metadata(cfg, names: list[str], infos: list, results: Optional[dict]) -> dict:
    """``save_pretrained`` keyword arguments for a run's model."""
    return {"task_names": list(names), "class_names": {i: _class_names(info) for i, info in enumerate(infos)},
            "protocol": cfg.strategy.protocol, "results": results, "backbone_source": backbone_source(cfg),
            "data_config": data_config(cfg)}


def build_model(cfg):
    """The run's method on its backbone, as the run built it (seeded first: a random test backbone is only
    rebuilt identically under the run's seed). The caller's random state is kept."""
    from gift_cl.backbones import create_backbone
    from gift_cl.config import safe_instantiate
    from gift_cl.rng import rng_state, seed_everything, set_rng_state

    state = rng_state()
    try:
        seed_everything(int(cfg.get("seed", 0)))
        backbone = create_backbone(num_classes=0, **OmegaConf.to_container(cfg.model, resolve=True))
        return safe_instantiate(cfg.strategy.method, backbone, where="strategy.method")
    finally:
        set_rng_state(state)


# ---------------------------------------------------------------------- the run loop's calls
PROJECT_PACKAGES = ("gift_cl.",)


def outside_code(model) -> Optional[str]:
    """The first class of ``model`` (the method, its model add-ons) defined outside this project, if any: a
    user's own method (its config on ``hydra.searchpath``) trains, checkpoints and resumes like any other, but
    ``model/`` is not written for it, since ``from_pretrained`` instantiates only what the shipped configs name
    (:mod:`gift_cl.config`)."""
    plugins = getattr(model, "model_addons", None) or {}
    for obj in (model, *plugins.values()):
        cls = type(obj)
        if not cls.__module__.startswith(PROJECT_PACKAGES):
            return f"{cls.__module__}.{cls.__qualname__}"
    return None


def write_task(run_dir: Path, model, label: int, name: str) -> None:
    """Independent protocol: the task's model into ``model/tasks/`` as its task ends."""
    from gift_cl.pretrained import write_task_model

    if outside_code(model) is not None:  # no model/ for a user's own method (write_run_model says so)
        return
    write_task_model(model, Path(run_dir) / MODEL_DIR, label, name)


def write_run_model(cfg, run_dir: Path, model, names: list[str], infos: list, results: dict) -> Optional[Path]:
    """``<run_dir>/model/`` at the end of a run: the in-memory model (sequential, joint), or the per-task models
    written as each task ended (independent; a task whose model is missing there is rebuilt from its
    ``checkpoints/<task>.safetensors``). None for a user's own method (:func:`outside_code`)."""
    from gift_cl.pretrained import save_pretrained

    own = outside_code(model)
    if own is not None:
        log.warning("%s is not one of gift_cl's methods or add-ons: no model/ directory written (from_pretrained "
                    "rebuilds only what the shipped configs name); the results and checkpoints are complete", own)
        return None
    out = Path(run_dir) / MODEL_DIR
    meta = run_metadata(cfg, names, infos, results)
    if not get_protocol(cfg.strategy.protocol).fresh_model_per_task:
        save_pretrained(model, out, **meta)
    else:
        _write_independent(cfg, Path(run_dir), out, names, infos, meta, reference=model)
    log.info("trained model written to %s (load it with gift_cl.pretrained.from_pretrained)", out)
    return out


def _write_independent(cfg, run_dir: Path, out: Path, names: list[str], infos: list, meta: dict, reference=None,
                       trained: Optional[int] = None) -> None:
    from gift_cl.checkpoint import CheckpointError
    from gift_cl.model_meta import task_entries
    from gift_cl.pretrained import FORMAT, load_state, task_file, write_config, write_task_model
    from gift_cl.tensorfile import read_state_file

    trained = len(names) if trained is None else trained
    own = Path(run_dir) / MODEL_DIR
    num_classes = {}
    for i, name in enumerate(names[:trained]):
        unit, ckpt = task_file(own, i, name), run_dir / CHECKPOINTS_DIR / f"{name}.safetensors"
        if unit.is_file() and own.resolve() == out.resolve():
            num_classes[i] = int(read_state_file(unit, FORMAT)[0][f"classifiers.{i}.weight"].shape[0])
            continue
        model = build_model(cfg)
        if unit.is_file():  # the run's own record of the task (extra state included), to another directory
            state, _ = read_state_file(unit, FORMAT)
            model.add_task(i, int(state[f"classifiers.{i}.weight"].shape[0]))
            load_state(model, state, unit)
        elif ckpt.is_file():  # the run's per-task checkpoint (trainable tensors only)
            from safetensors.torch import load_file

            state = load_file(str(ckpt))
            if f"classifiers.{i}.weight" not in state:
                raise CheckpointError(f"{ckpt}: holds no classifier of task {i} ({name})")
            model.add_task(i, int(state[f"classifiers.{i}.weight"].shape[0]))
            missing, unexpected = model.load_state_dict(state, strict=False)
            missing = set(missing) - model.frozen_state_keys() - {"_extra_state"}
            if missing or unexpected:
                raise CheckpointError(f"{ckpt} does not fit the run's method: missing {sorted(missing)[:5]}, "
                                      f"unexpected {sorted(unexpected)[:5]}")
        else:
            raise CheckpointError(f"{run_dir}: task {name} has neither {unit} nor {ckpt}")
        write_task_model(model, out, i, name)
        num_classes[i], reference = model.classifiers[str(i)].out_features, model
    if reference is None:
        reference = build_model(cfg)
    labels = list(range(trained))
    tasks = task_entries(labels, num_classes, dict(enumerate(names)), meta["class_names"])
    write_config(out, reference, tasks, "per_task", protocol="independent", results=meta["results"],
                 backbone_source=meta["backbone_source"], data_config=meta["data_config"])


# ---------------------------------------------------------------------- gift-cl export
def export_run(run_dir, out=None) -> Path:
    """Write a run's model (as far as it is trained) as a :mod:`gift_cl.pretrained` directory; returns it."""
    from gift_cl.checkpoint import CheckpointError, load_run_checkpoint
    from gift_cl.config import load_saved_config
    from gift_cl.pretrained import load_state, save_pretrained
    from gift_cl.reporting import read_json

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: no such directory; expected a run directory (or a model directory "
                              f"written by save_pretrained)")
    out = Path(out) if out is not None else run_dir / MODEL_DIR
    cfg = load_saved_config(run_dir / CONFIG_FILE)
    try:
        results = read_json(run_dir / RESULTS_FILE)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{run_dir / RESULTS_FILE}: not readable ({type(err).__name__}: {err})") from None
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) for t in results["tasks"]):
        raise CheckpointError(f"{run_dir}: no readable {RESULTS_FILE} with the run's tasks; a run writes it after its "
                              f"first experience (nothing to export before that)")
    names = [t["name"] for t in results["tasks"]]
    infos = [t.get("info") for t in results["tasks"]]
    meta = run_metadata(cfg, names, infos, results)
    if get_protocol(cfg.strategy.protocol).fresh_model_per_task:
        trained = len(results.get("accuracy_matrix") or [])
        if not trained:
            raise CheckpointError(f"{run_dir}: no task has finished training yet")
        _write_independent(cfg, run_dir, out, names, infos, meta, trained=trained)
        return out
    state = load_run_checkpoint(run_dir / CHECKPOINT)
    model = build_model(cfg)
    for task, num_classes in sorted(state["tasks"].items()):
        model.add_task(int(task), int(num_classes))
    load_state(model, state["model"], run_dir / CHECKPOINT)
    model.eval()
    save_pretrained(model, out, **meta)
    return out


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gift-cl export",
        description="Write a run's trained model as a directory that gift_cl.pretrained.from_pretrained and the "
                    "Hugging Face Hub read (and, on request, peft adapters and merged timm checkpoints).")
    parser.add_argument("source", help="a run directory, or a model directory written by save_pretrained")
    parser.add_argument("--out", help="where to write the model directory (default: <run dir>/model)")
    parser.add_argument("--peft", nargs="?", const="", metavar="DIR",
                        help="also one peft LoRA adapter per task (default DIR: <model dir>/peft)")
    parser.add_argument("--merged", nargs="?", const="", metavar="DIR",
                        help="also a merged timm checkpoint per task (default DIR: <model dir>/merged)")
    parser.add_argument("--tasks", help="comma-separated task names for --peft/--merged (default: all)")
    parser.add_argument("--num-classes", type=int, help="--peft: the head width of the base timm model "
                                                        "(default: the largest task's)")
    args = parser.parse_args(argv)

    from gift_cl.errors import one_line_errors
    from gift_cl.pretrained import CONFIG_NAME, from_pretrained

    with one_line_errors():
        source = Path(args.source)
        if (source / CONFIG_NAME).is_file():
            model_dir = source
            if args.out:
                model = from_pretrained(source)
                # typed nn.Module; it is a TaskAwareModel or a TaskModels, both with save_pretrained
                cast("Callable[..., Path]", model.save_pretrained)(args.out)
                model_dir = Path(args.out)
        else:
            model_dir = export_run(source, args.out)
        print(f"model: {model_dir}")
        if args.peft is not None or args.merged is not None:
            from gift_cl.export_peft import export_merged, export_peft

            model = from_pretrained(model_dir)
            tasks = args.tasks.split(",") if args.tasks else None
            if args.peft is not None:
                written = export_peft(model, Path(args.peft or model_dir / "peft"), tasks, args.num_classes)
                print(f"peft adapters: {', '.join(str(p) for p in written.values())}")
            if args.merged is not None:
                written = export_merged(model, Path(args.merged or model_dir / "merged"), tasks)
                print(f"merged checkpoints: {', '.join(str(p) for p in written.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
