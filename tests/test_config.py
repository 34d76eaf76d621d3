"""gift_cl.config and the checks behind it (docs/guide/safety.md): a saved configuration instantiates only what
the shipped configs name; a backbone checkpoint that does not fit is refused; every numeric argument of a method,
generator or add-on is range-checked before anything is built; a damaged ``results.json`` stops the analysis
tools with one line naming the file and the field, and summarize.py averages only finished runs."""
import inspect
import json
import logging
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from omegaconf import OmegaConf

from gift_cl.atomic import save_safetensors
from gift_cl.backbones import BackboneError, asset_path, create_backbone
from gift_cl.config import ARGUMENT_RANGES, CONFIG_DIR, ConfigError, allowed_targets, argument_kind
from gift_cl.interpret import load_run
from gift_cl.orchestration.validation import validate

from runs import PROCEDURAL, REPO, TINY, compose_cfg, env, run_py, tiny_gift_run


def one_line_error(proc: subprocess.CompletedProcess, kind: str) -> str:
    """The process failed with exactly one ``error: <kind>: ...`` line on stderr and no traceback."""
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith(f"error: {kind}: "), proc.stderr[-3000:]
    return lines[0]


# ============================================================================ 1. saved configurations
def saved_config(tmp_path: Path, *overrides) -> tuple[Path, dict]:
    """A run directory holding only the ``config_resolved.yaml`` a run of ``overrides`` writes, as a dict to edit."""
    cfg = compose_cfg(*PROCEDURAL, "benchmark.domains=[digits,pedestrians]", *overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    return run_dir, yaml.safe_load(OmegaConf.to_yaml(cfg, resolve=True))


def write(run_dir: Path, tree: dict) -> None:
    (run_dir / "config_resolved.yaml").write_text(yaml.safe_dump(tree))


@pytest.fixture
def nothing_instantiated(monkeypatch):
    """Fails the test if Hydra is asked to instantiate anything, or a benchmark loader or a method runs."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"instantiated {args[:1]}")

    monkeypatch.setattr("hydra.utils.instantiate", refuse)
    import gift_cl.data.procedural as procedural

    monkeypatch.setattr(procedural, "load_procedural", refuse)


def _write_text_benchmark(t, marker):
    t["benchmark"] = {"_target_": "gift_cl.atomic.write_text", "text": "pwned", "path": str(marker)}


def _unknown_gift_cl_function(t, marker):
    t["strategy"]["method"] = {"_target_": "gift_cl.atomic.write_json", "obj": {}, "path": str(marker)}


def _nested_target(t, marker):
    t["benchmark"]["domains"] = {"_target_": "gift_cl.atomic.write_text", "text": "x", "path": str(marker)}


def _allowlisted_target_elsewhere(t, marker):
    t["strategy"]["method"]["config"] = {"_target_": "gift_cl.data.procedural.load_procedural"}


def _strategies_class(t, marker):
    t["strategy"]["plugins"] = [{"_target_": "gift_cl.strategies.plugins.EpochCheckpointPlugin", "every": 1, "save": None}]


def _args(t, marker):
    t["strategy"]["method"]["_args_"] = [str(marker)]


def _partial(t, marker):
    t["benchmark"]["_partial_"] = True


def _recursive(t, marker):
    t["strategy"]["method"]["_recursive_"] = False


def _env_resolver(t, marker):
    t["benchmark"]["eval_split"] = "${oc.env:HOME}"


def _create_resolver(t, marker):
    t["strategy"]["name"] = "${oc.create:{_target_: gift_cl.atomic.write_text}}"


def _interpolation_moves_a_target(t, marker):
    t["strategy"]["method"]["config"] = "${benchmark}"


def _not_an_argument(t, marker):
    t["strategy"]["method"]["path"] = str(marker)


def _wrong_type(t, marker):
    t["strategy"]["method"]["trunk"] = ["free"]


def _out_of_range(t, marker):
    t["strategy"]["method"]["config"]["num_clusters"] = 0


def _seed(t, marker):
    t["seed"] = 2**32


CRAFTED = [
    (_write_text_benchmark, "benchmark._target_='gift_cl.atomic.write_text': not a constructor"),
    (_unknown_gift_cl_function, "strategy.method._target_='gift_cl.atomic.write_json': not a constructor"),
    (_nested_target, "benchmark.domains._target_='gift_cl.atomic.write_text': nothing may be instantiated"),
    (_allowlisted_target_elsewhere, "strategy.method.config._target_='gift_cl.data.procedural.load_procedural'"),
    (_strategies_class, "strategy.plugins[0]._target_='gift_cl.strategies.plugins.EpochCheckpointPlugin'"),
    (_args, "strategy.method._args_: Hydra's _args_ is not allowed"),
    (_partial, "benchmark._partial_: Hydra's _partial_ is not allowed"),
    (_recursive, "strategy.method._recursive_: Hydra's _recursive_ is not allowed"),
    (_env_resolver, "benchmark.eval_split='${oc.env:HOME}': the resolver 'oc.env' is not allowed"),
    (_create_resolver, "the resolver 'oc.create' is not allowed"),
    (_interpolation_moves_a_target, "strategy.method.config._target_='gift_cl.data.procedural.load_procedural'"),
    (_not_an_argument, "strategy.method.path: not an argument of gift_cl.methods.GiftMethod"),
    (_wrong_type, "strategy.method.trunk=['free']: must be a string"),
    (_out_of_range, "strategy.method.config.num_clusters=0: must be an integer in [1, 4096]"),
    (_seed, "seed=4294967296: must be an integer in [0, 4294967295]"),
]


@pytest.mark.parametrize("craft,needle", CRAFTED, ids=[c.__name__.strip("_") for c, _ in CRAFTED])
def test_crafted_saved_config_is_refused_before_anything_is_called(tmp_path, nothing_instantiated, craft, needle):
    run_dir, tree = saved_config(tmp_path, "strategy=gift_multitask")
    marker = tmp_path / "pwned"
    craft(tree, marker)
    write(run_dir, tree)
    with pytest.raises(ConfigError) as err:
        load_run(run_dir)
    message = str(err.value)
    assert needle in message and str(run_dir / "config_resolved.yaml") in message, message
    assert "\n" not in message
    assert not marker.exists()


def test_crafted_saved_config_stops_the_analysis_tool_with_the_key(tmp_path):
    run_dir, tree = saved_config(tmp_path, "strategy=gift_multitask")
    marker = tmp_path / "pwned"
    _write_text_benchmark(tree, marker)
    write(run_dir, tree)
    proc = subprocess.run([sys.executable, str(REPO / "analysis" / "concept_reuse.py"), str(run_dir)], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "benchmark._target_='gift_cl.atomic.write_text'" in proc.stderr
    assert proc.stderr.startswith("error: ConfigError: ") and "Traceback" not in proc.stderr  # one line
    assert not marker.exists()


def test_allowlist_is_exactly_what_the_shipped_configs_name():
    named = set()
    for path in CONFIG_DIR.rglob("*.yaml"):
        if path.relative_to(CONFIG_DIR).parts[0] != "hydra":
            named |= set(re.findall(r"_target_:\s*(\S+)", path.read_text()))
    allowed = allowed_targets()
    assert set().union(*allowed.values()) == named
    assert allowed["strategy.method.config"] == allowed["generator"] == {"gift_cl.GiftConfig"}
    assert "gift_cl.methods.GiftMethod" in allowed["strategy.method"]
    assert "gift_cl.methods.GiftMethod" not in allowed["strategy.plugins[]"]
    assert "gift_cl.strategies.plugins.Replay" in allowed["strategy.plugins[]"]


@pytest.mark.parametrize("overrides", [("strategy=gift_multitask",), ("strategy=lora", "+addon=[gist,coeff]"),
                                       ("strategy=artihippo_gift",), ("strategy=replay",), ("strategy=ewc",)])
def test_configs_a_run_saves_are_accepted(tmp_path, overrides):
    from gift_cl.config import load_saved_config

    run_dir, tree = saved_config(tmp_path, *overrides)
    write(run_dir, tree)
    assert OmegaConf.to_container(load_saved_config(run_dir / "config_resolved.yaml")) == tree


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny finished GIFT run made in-process, with the config_resolved.yaml run.py would write."""
    return tiny_gift_run(tmp_path_factory.mktemp("runs") / "gift", "[digits,pedestrians]")


def test_a_real_run_still_loads(finished_run):
    run = load_run(finished_run)
    assert run.names == ["digits", "pedestrians"]
    assert run.task("pedestrians").concept_vectors(run.layers()[0]).ndim == 2
    assert run.results["finished"]


# ============================================================================ 2. backbone checkpoints
KW = dict(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)


def source_state(**kw) -> dict:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **{**KW, **kw}).state_dict()


def build(path: Path, **kw):
    return create_backbone("vit_tiny_patch16_224", num_classes=3, checkpoint=str(path), kwargs={**KW, **kw})


@pytest.mark.parametrize("wrap,prefix", [
    (lambda sd: {"module." + k: v for k, v in sd.items()}, "module."),
    (lambda sd: {"state_dict": {"backbone." + k: v for k, v in sd.items()}}, "backbone."),
    (lambda sd: {"model": {**{"model.module." + k: v for k, v in sd.items()}, "heads.0.weight": torch.ones(2)},
                 "epoch": 3}, "model.module."),
], ids=["module", "state_dict+backbone", "trainer"])
def test_known_wrappers_are_taken_off_and_said_in_the_log(tmp_path, caplog, wrap, prefix):
    sd = source_state()
    path = tmp_path / "w.pth"
    torch.save(wrap(sd), path)
    with caplog.at_level(logging.INFO, logger="gift_cl"):
        model = build(path)
    assert f"prefix {prefix!r} taken off" in caplog.text
    for name, p in sd.items():
        if not name.startswith("head."):
            assert torch.equal(model.state_dict()[name], p), name


def _drop_block(sd):
    return {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}


def _extra_block(sd):
    return {**sd, **{k.replace("blocks.1.", "blocks.2."): v for k, v in sd.items() if k.startswith("blocks.1.")}}


def _unknown_prefix(sd):
    return {"encoder.trunk." + k: v for k, v in sd.items()}


def _wrong_shape(sd):
    return {**sd, "norm.weight": torch.ones(32)}


def _nan(sd):
    bad = dict(sd)
    bad["blocks.0.attn.qkv.weight"] = bad["blocks.0.attn.qkv.weight"].clone()
    bad["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
    return bad


def _inf(sd):
    return {**sd, "cls_token": torch.full_like(sd["cls_token"], float("inf"))}


@pytest.mark.parametrize("damage,needle", [
    (_drop_block, r"12 backbone tensors missing: blocks\.1\.attn\.proj\.bias"),
    (_extra_block, r"12 tensors the backbone does not have: blocks\.2\.attn\.proj\.bias"),
    (_unknown_prefix, r"backbone tensors missing: .*the checkpoint has instead encoder\.trunk\.blocks"),
    (_wrong_shape, r"shapes differ \(checkpoint vs model\) for norm\.weight \(32,\) vs \(64,\)"),
    (_nan, r"non-finite \(NaN or inf\) values in 1 backbone tensors: blocks\.0\.attn\.qkv\.weight"),
    (_inf, r"non-finite \(NaN or inf\) values in 1 backbone tensors: cls_token"),
], ids=["missing", "unexpected", "unknown-prefix", "shape", "nan", "inf"])
@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_keys(tmp_path, damage, needle, suffix):
    path = tmp_path / f"w.{suffix}"
    sd = damage(source_state())
    torch.save(sd, path) if suffix == "pth" else save_safetensors(sd, path)
    with pytest.raises(BackboneError, match=needle) as err:
        build(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


class Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("content,needle", [
    (lambda m: b"", "is empty"),
    (lambda m: b"model.blocks.0.weight 1 2 3\nhello\n", "is a text file"),
    (lambda m: bytes(range(256)), "neither a PyTorch"),
    (lambda m: pickle.dumps({"w": Exploit(m)}), "a pickle that holds instructions beyond tensors"),
    ("torch", "a pickle that calls posix.system when loaded: refused"),
    ("truncated", "truncated or corrupt"),
], ids=["empty", "text", "binary", "pickle", "torch-pickle", "truncated"])
def test_an_unreadable_checkpoint_is_one_line_and_runs_no_code(tmp_path, content, needle):
    path, marker = tmp_path / "w.pth", tmp_path / "pwned"
    if content == "torch":
        torch.save({"w": Exploit(marker)}, path)
    elif content == "truncated":
        torch.save(source_state(), path)
        path.write_bytes(path.read_bytes()[:5000])
    else:
        path.write_bytes(content(marker))
    with pytest.raises(BackboneError, match=needle) as err:
        build(path)
    message = str(err.value)
    assert str(path) in message and "\n" not in message and "weights_only=False" not in message
    assert not marker.exists()


def test_timm_loader_kwargs_are_refused(tmp_path):
    with pytest.raises(BackboneError, match="model.kwargs.checkpoint_path: not allowed"):
        create_backbone("vit_tiny_patch16_224", num_classes=3, kwargs={**KW, "checkpoint_path": str(tmp_path)})


def test_shipped_backbone_resamples_to_another_image_size():
    from safetensors.torch import load_file

    from gift_cl.pretrain import ARCH, ARCH_KWARGS

    path = asset_path("vit_procedural.safetensors")
    model = create_backbone(ARCH, num_classes=4, checkpoint=path, kwargs={**ARCH_KWARGS, "img_size": 64})
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 4)
    shipped = load_file(path)
    assert model.pos_embed.shape[1] == 1 + (64 // ARCH_KWARGS["patch_size"]) ** 2
    assert torch.equal(model.blocks[0].attn.qkv.weight.detach(), shipped["blocks.0.attn.qkv.weight"].float())


def test_run_with_a_checkpoint_of_another_architecture_stops_before_any_work(tmp_path):
    path = tmp_path / "deeper.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in source_state(depth=3).items()}}, path)
    run_dir = tmp_path / "run"
    proc = run_py(*TINY, *PROCEDURAL, f"model.checkpoint={path}", f"hydra.run.dir={run_dir}", check=False)
    line = one_line_error(proc, "BackboneError")
    assert str(path) in line and "tensors the backbone does not have (after taking off 'module.')" in line
    assert "blocks.2." in line
    assert not (run_dir / "config_resolved.yaml").exists()  # refused before the run directory was written


# ============================================================================ 3. numeric arguments
@pytest.mark.parametrize("overrides,needle", [
    (["generator.num_clusters=0"], "generator.num_clusters=0: must be an integer in [1, 4096]"),
    (["generator.num_clusters=-1"], "generator.num_clusters=-1: must be an integer in [1, 4096]"),
    (["generator.mlp_ratio=0"], "generator.mlp_ratio=0: must be a number in (0, 16]"),
    (["generator.rank=0"], "generator.rank=0: must be an integer in [1, 4096]"),
    (["generator.depth=-1"], "generator.depth=-1: must be an integer in [0, 64]"),
    (["generator.num_heads=0"], "generator.num_heads=0: must be an integer in [1, 64]"),
    (["generator.rank=2.5"], "generator.rank=2.5: must be an integer"),
    (["seed=4294967296"], "seed=4294967296: must be an integer in [0, 4294967295]"),
    (["strategy=lora", "strategy.method.rank=0"], "strategy.method.rank=0: must be an integer in [1, 4096]"),
    (["strategy=lora", "strategy.method.rank=-4"], "strategy.method.rank=-4: must be an integer in [1, 4096]"),
    (["strategy=lora", "strategy.method.alpha=0"], "strategy.method.alpha=0: must be a number in (0, 1000000]"),
    (["strategy=adapter", "strategy.method.hidden=0"], "strategy.method.hidden=0"),
    (["strategy=vpt", "strategy.method.length=0"], "strategy.method.length=0"),
    (["strategy=gift", "strategy.method.anchor_weight=-1"], "strategy.method.anchor_weight=-1"),
    (["strategy=artihippo", "strategy.method.lora_rank=0"], "strategy.method.lora_rank=0"),
    (["strategy=artihippo", "strategy.method.gift.rank=0"], "strategy.method.gift.rank=0"),
    (["strategy=artihippo", "strategy.plugins.artihippo_search.population=0"],
     "strategy.plugins.artihippo_search.population=0"),
    (["strategy=replay", "strategy.plugins.replay.mem_size=0"], "strategy.plugins.replay.mem_size=0"),
    (["strategy=lwf", "strategy.plugins.lwf.temperature=0"], "strategy.plugins.lwf.temperature=0"),
    (["strategy=ewc", "strategy.plugins.ewc.ewc_lambda=-1"], "strategy.plugins.ewc.ewc_lambda=-1"),
    (["strategy=gift", "+addon=gist", "strategy.method.addons.gist.temperature=0"],
     "strategy.method.addons.gist.temperature=0"),
    (["strategy=lora", "+addon=coeff", "strategy.method.addons.coeff.dropout=1"],
     "strategy.method.addons.coeff.dropout=1: must be a number in [0, 1)"),
    (["strategy=lora", "strategy.method.rank=abc"], "strategy.method.rank='abc': must be an integer"),
])
def test_out_of_range_method_arguments_name_the_key_and_the_range(overrides, needle):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*PROCEDURAL, *overrides))
    assert needle in str(err.value)


def _numeric(param) -> bool:
    kind, _ = argument_kind(param)
    default = param.default
    return kind in ("int", "float") or (kind is None and isinstance(default, (int, float))
                                        and not isinstance(default, bool))


def test_every_numeric_argument_of_every_method_generator_and_plugin_has_a_range():
    from gift_cl.config import _import

    for slot, targets in allowed_targets().items():
        if slot == "benchmark":
            continue
        for target in targets:
            params = inspect.signature(_import(target, slot)).parameters.values()
            numeric = {p.name for p in params if _numeric(p) or p.default is inspect.Parameter.empty
                       and p.name not in ("backbone", "config")}
            assert numeric <= set(ARGUMENT_RANGES.get(target, {})), (target, numeric)


def test_run_py_stops_with_one_line(tmp_path):
    proc = run_py(*TINY, *PROCEDURAL, "generator.num_clusters=0", f"hydra.run.dir={tmp_path}", check=False)
    line = one_line_error(proc, "ConfigError")
    assert line == "error: ConfigError: generator.num_clusters=0: must be an integer in [1, 4096]"
    assert not (tmp_path / "config_resolved.yaml").exists()


# ============================================================================ 4. results.json
def result(root: Path, name: str, acc: float, finished: bool = True, seed: int = 0) -> Path:
    run = root / name
    run.mkdir(parents=True)
    res = {"schema_version": 1, "strategy": "lora", "protocol": "independent", "seed": seed,
           "overrides": ["strategy=lora", f"seed={seed}"],
           "tasks": [{"name": "digits", "num_classes": 10, "info": {"eval_split": "test"}}],
           "final_accuracy": {"digits": acc}, "average_accuracy": acc, "forgetting": None, "bwt": None,
           "task_id_accuracy": None, "wall_time_s": 10.0,
           "params": {"per_task": {"digits": 1500}, "per_task_excl_classifier": {"digits": 1000}, "shared": 0,
                      "total": 1500, "backbone": 100000},
           "finished": finished}
    (run / "results.json").write_text(json.dumps(res))
    return run / "results.json"


def tool(name: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "analysis" / f"{name}.py"), *map(str, args)], cwd=REPO,
                          env=env(), capture_output=True, text=True, timeout=120)


def _edit(change):
    def apply(path: Path) -> None:
        res = json.loads(path.read_text())
        change(res)
        path.write_text(json.dumps(res))
    return apply


DAMAGES = [
    (lambda p: p.write_text(p.read_text()[:60]), "is not valid JSON (line 1, column"),
    (lambda p: p.write_text(""), "is not valid JSON"),
    (lambda p: p.write_text("[1, 2]"), "expected a JSON object (the results schema), got a list"),
    (_edit(lambda r: r["final_accuracy"].update(digits="0.5")),
     "field 'final_accuracy.digits' must be a fraction in [0, 1]"),
    (_edit(lambda r: r.update(seed="0")), "field 'seed' must be an integer, got a string"),
    (_edit(lambda r: r["params"].pop("per_task")), "field 'params.per_task' is missing"),
    (_edit(lambda r: r.pop("finished")), "field 'finished' is missing"),
    (_edit(lambda r: r.update(tasks={"digits": 1})), "field 'tasks' must be a list, got an object"),
    (_edit(lambda r: r["tasks"][0].pop("name")), "field 'tasks[0].name' is missing"),
    (_edit(lambda r: r["tasks"][0].update(info="val")), "field 'tasks[0].info' must be an object"),
    (_edit(lambda r: r.update(overrides="seed=0")), "field 'overrides' must be a list, got a string"),
    (_edit(lambda r: r.update(average_accuracy=float("nan"))), "field 'average_accuracy' must be a fraction"),
    (_edit(lambda r: r["params"].update(shared="0")), "field 'params.shared' must be a finite number"),
    (_edit(lambda r: r.update(schema_version=3)), "schema_version 3, this tool reads 1 and 2"),
]
DAMAGE_IDS = ["truncated", "empty", "list", "string-accuracy", "string-seed", "no-per-task", "no-finished",
              "tasks-object", "task-name", "info-string", "overrides-string", "nan", "string-shared", "version"]


@pytest.mark.parametrize("damage,needle", DAMAGES, ids=DAMAGE_IDS)
def test_damaged_results_are_one_error_naming_file_and_field(tmp_path, damage, needle):
    from gift_cl.reporting import ResultsError, read_results

    bad = result(tmp_path, "bad", 0.6)
    damage(bad)
    with pytest.raises(ResultsError) as err:
        read_results(bad.parent)
    line = str(err.value)
    assert line.startswith(f"error: ResultsError: {bad}: ") and needle in line and "\n" not in line, line
    assert isinstance(err.value, SystemExit) and err.value.code == line  # a tool exits 1 printing this line


@pytest.mark.parametrize("damage,needle", [DAMAGES[i] for i in (0, 2, 3, 6)],
                         ids=[DAMAGE_IDS[i] for i in (0, 2, 3, 6)])
@pytest.mark.parametrize("name", ["summarize", "compare"])
def test_damaged_results_stop_the_tools_naming_file_and_field(tmp_path, name, damage, needle):
    result(tmp_path, "good", 0.5)
    bad = result(tmp_path, "bad", 0.6)
    damage(bad)
    line = one_line_error(tool(name, tmp_path), "ResultsError")
    assert line.startswith(f"error: ResultsError: {bad}: ") and needle in line, line


def test_summarize_averages_only_finished_runs_unless_all(tmp_path):
    result(tmp_path, "a", 0.5, seed=0)
    result(tmp_path, "b", 0.7, seed=1)
    unfinished = result(tmp_path, "c", 0.1, finished=False, seed=2).parent
    proc = tool("summarize", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "60.00 ± 14.14" in proc.stdout and "0,1 " in proc.stdout
    assert f"skipping 1 unfinished run(s): {unfinished}; --all includes them" in proc.stderr
    proc = tool("summarize", tmp_path, "--all")
    assert proc.returncode == 0, proc.stderr
    assert "43.33 ± 30.55" in proc.stdout and "0,1,2" in proc.stdout
    assert f"including 1 unfinished run(s): {unfinished}" in proc.stderr


def test_summarize_with_only_unfinished_runs_says_so(tmp_path):
    result(tmp_path, "a", 0.5, finished=False)
    proc = tool("summarize", tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "no finished results.json" in proc.stderr and "--all" in proc.stderr


def test_load_run_reads_results_through_the_schema(finished_run, tmp_path):
    import shutil

    from gift_cl.interpret import read_results

    copy = tmp_path / "copy"
    shutil.copytree(finished_run, copy)
    (copy / "results.json").write_text("[]")
    with pytest.raises(SystemExit, match=f"error: ResultsError: {copy / 'results.json'}: expected a JSON object"):
        read_results(copy)
    assert read_results(tmp_path) is None  # no results.json yet
