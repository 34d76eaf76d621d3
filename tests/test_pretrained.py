"""save_pretrained / from_pretrained (gift_cl.pretrained): every method and add-on round-trips bit for bit, one
model for all tasks (sequential, joint) and one model per task (independent); every run writes <run_dir>/model/
in every protocol and `gift-cl export` writes it from a run's checkpoints; a Hub id loads offline from the
cache; bad input is one clear message, and nothing loaded runs code."""
import json
import os
import pickle
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from gift_cl import GiftConfig
from gift_cl.backbones import BackboneError
from gift_cl.checkpoint import CheckpointError
from gift_cl.config import safe_instantiate
from gift_cl.methods import (
    AdapterMethod,
    ArtiHippo,
    BitFit,
    CoeffTuning,
    FullFinetune,
    GiftMethod,
    Gist,
    GistAdapterMethod,
    LinearProbe,
    LoraMethod,
    SharedBackbone,
    VptDeep,
)
from gift_cl.model_meta import fingerprint, method_backbone_tensors, plain_backbone_tensors
from gift_cl.orchestration.cli import main as cli_main
from gift_cl.orchestration.export import MODEL_DIR, main as export_main
from gift_cl.pretrained import CONFIG_NAME, TaskModels, from_pretrained, save_pretrained
from gift_cl.reporting import read_predictions

from runs import compose_cfg, run_in_process, tiny_vit

D = 64


def small_gift(**kw):
    return GiftConfig.paca(rank=16, depth=2, num_clusters=4, **kw)


ARCH = {0: [("adapt", -1), ("new", None)], 1: [("reuse", 0), ("adapt", 0)]}


def artihippo(adapt, architectures=ARCH):
    def make(backbone):
        model = ArtiHippo(backbone, adapt=adapt, lora_rank=4, gift={"rank": 8})
        for task, arch in architectures.items():
            model.set_architecture(task, arch, {"note": "searched", "scores": (0.5, 1)} if task == 0 else None)
        return model
    return make


# every method and add-on once; variants only where the saved state differs (generator, trunk, ArtiHippo's adapt)
METHODS = {
    "gift_paca": lambda b: GiftMethod(b, small_gift()),
    "gift_linear_gist": lambda b: GiftMethod(b, GiftConfig.linear(rank=8), addons={"gist": Gist()}),
    "gift_shared_head_parts_anchored": lambda b: GiftMethod(b, small_gift(), trunk="anchored", per_task_clusters=False,
                                                            per_task_recovery=False),
    "gift_attention_qkv_fc1": lambda b: GiftMethod(b, GiftConfig(target_modules=("attn.qkv", "mlp.fc1"), rank=8,
                                                                 depth=1, block="attention")),
    "lora_proj": lambda b: LoraMethod(b, rank=8),
    "lora_qkv_gist": lambda b: LoraMethod(b, rank=4, target_modules=["attn.qkv"],
                                          addons={"gist": Gist(temperature=2.0)}),
    "bitfit": lambda b: BitFit(b),
    "adapter": lambda b: AdapterMethod(b, hidden=4),
    "gist_adapter_gist": lambda b: GistAdapterMethod(b, addons={"gist": Gist(dropout=0.2)}),
    "bitfit_linear": lambda b: BitFit(b, biases="linear"),
    "vpt_coeff": lambda b: VptDeep(b, length=2, addons={"coeff": CoeffTuning(dropout=0.2)}),
    "linear": lambda b: LinearProbe(b),
    "finetune": lambda b: FullFinetune(b),
    "shared_backbone": lambda b: SharedBackbone(b),
    "artihippo_lora": artihippo("lora"),
    "artihippo_gift": artihippo("gift"),
}
CLASSES = {0: 3, 1: 4}
X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
MIXED = torch.tensor([0, 1, 1, 0, 1, 0])


def trained(model, tasks=(0, 1), seed: int = 5):
    """Tasks added and every trainable tensor moved off its initialisation (zero-initialised parts included, so
    that nothing saved is trivially reproduced), prototypes and anchors stored as at the end of a task."""
    g = torch.Generator().manual_seed(seed)
    for t in tasks:
        model.add_task(t, CLASSES[t])
    with torch.no_grad():
        for value in model.trainable_state_dict().values():
            if torch.is_tensor(value) and value.is_floating_point():
                value.add_(0.05 * torch.randn(value.shape, generator=g))
    for t in tasks:
        model.end_task(t, torch.randn(D, generator=g))
    return model.eval()


def outputs(model, tasks=(0, 1)) -> dict:
    """The logits of one task's batch, or of a batch mixing ``tasks`` (every task's own forward, padded)."""
    with torch.no_grad():
        return {tasks[0]: model(X, tasks[0])} if len(tasks) == 1 else {"mixed": model(X, MIXED[: len(X)])}


def tensors(state: dict) -> dict:
    return {k: v for k, v in state.items() if torch.is_tensor(v)}


def assert_same_model(a, b):
    sa, sb = a.trainable_state_dict(), b.trainable_state_dict()
    assert tensors(sa).keys() == tensors(sb).keys()
    assert all(torch.equal(v, sb[k]) and v.dtype == sb[k].dtype for k, v in tensors(sa).items())
    assert a.prototypes.keys() == b.prototypes.keys()
    assert all(torch.equal(a.prototypes[t], b.prototypes[t]) for t in a.prototypes)


# ----------------------------------------------------------------------------- every method, bit for bit
@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_model_for_all_tasks_round_trips_bit_for_bit(name, tmp_path):
    """Sequential and joint runs: one model holding every task."""
    model = trained(METHODS[name](tiny_vit()))
    expected = outputs(model)
    save_pretrained(model, tmp_path, task_names=["digits", "signs"], class_names={1: ["a", "b", "c", "d"]})
    loaded = from_pretrained(tmp_path, backbone=tiny_vit())
    assert type(loaded) is type(model) and not loaded.training
    got = outputs(loaded)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    with torch.no_grad():
        assert torch.equal(loaded.frozen_features(X), model.frozen_features(X))
    assert_same_model(model, loaded)
    config = loaded.pretrained_config
    assert [(t["name"], t["num_classes"], t["class_names"]) for t in config["tasks"]] == [
        ("digits", 3, None), ("signs", 4, ["a", "b", "c", "d"])]
    # saving the loaded model again writes the same config and the same tensors
    save_pretrained(loaded, tmp_path / "again")
    assert json.loads((tmp_path / "again" / CONFIG_NAME).read_text()) == json.loads((tmp_path / CONFIG_NAME).read_text())
    assert_same_model(from_pretrained(tmp_path / "again", backbone=tiny_vit()), model)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_one_model_per_task_round_trips_bit_for_bit(name, tmp_path):
    """The independent protocol: each task its own model, trained alone from the same pretrained backbone."""
    models = {}
    for t in (0, 1):
        if name.startswith("artihippo"):  # a fresh model per task knows only its own architecture
            part = artihippo(name.split("_")[1], {t: ARCH[0]})(tiny_vit())
        else:
            part = METHODS[name](tiny_vit())
        models[t] = trained(part, tasks=(t,), seed=t)
    model = TaskModels(models)
    expected = outputs(model)
    save_pretrained(model, tmp_path, task_names={0: "digits", 1: "signs"}, protocol="independent")
    loaded = from_pretrained(tmp_path, backbone=tiny_vit())
    assert isinstance(loaded, TaskModels) and loaded.tasks == [0, 1]
    got = outputs(loaded)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    for t in (0, 1):
        assert_same_model(models[t], loaded.model(t))
    one = from_pretrained(tmp_path, backbone=tiny_vit(), task="signs")
    assert type(one) is type(models[1]) and one.tasks == [1]
    assert_same_model(models[1], one)
    assert sorted(p.name for p in (tmp_path / "tasks").iterdir()) == ["digits.safetensors", "signs.safetensors"]


def test_the_class_methods_load_their_own_method_only(tmp_path):
    model = trained(METHODS["gift_paca"](tiny_vit()))
    model.save_pretrained(tmp_path)
    assert torch.equal(GiftMethod.from_pretrained(tmp_path, backbone=tiny_vit())(X, 1), outputs(model, (1,))[1])
    with pytest.raises(CheckpointError, match="holds a GiftMethod, not a LoraMethod"):
        LoraMethod.from_pretrained(tmp_path, backbone=tiny_vit())


def test_the_backbone_fingerprint_is_the_plain_timm_models_for_every_method():
    """What from_pretrained checks a given backbone against: the method's frozen weights in state-dict order
    hash as the timm model they were built on, whatever the method wraps, and another seed does not."""
    plain = fingerprint(plain_backbone_tensors(tiny_vit()))[0]
    with_head = tiny_vit()
    with_head.reset_classifier(7)  # the classifier is left out
    assert fingerprint(plain_backbone_tensors(with_head))[0] == plain
    for name, make in METHODS.items():
        assert fingerprint(method_backbone_tensors(make(tiny_vit())))[0] == plain, name
    assert fingerprint(plain_backbone_tensors(tiny_vit(seed=1)))[0] != plain


def test_loading_keeps_the_callers_random_state(tmp_path):
    trained(METHODS["gift_paca"](tiny_vit())).save_pretrained(tmp_path)
    backbone = tiny_vit()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    from_pretrained(tmp_path, backbone=backbone)
    assert torch.equal(torch.rand(3), expected)


def test_a_directory_holds_only_json_safetensors_and_its_card(tmp_path):
    """What huggingface_hub.upload_folder pushes as it is: no pickles, no temporary files."""
    model = trained(METHODS["gift_paca"](tiny_vit()))
    model.save_pretrained(tmp_path, task_names=["a", "b"])
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["README.md", CONFIG_NAME, "shared.safetensors", "tasks/a.safetensors", "tasks/b.safetensors"]
    assert (tmp_path / "README.md").read_text().startswith("---\nlibrary_name: gift_cl")
    # saved into again under other names: the earlier weights go, a file gift_cl did not write stays
    (tmp_path / "tasks" / "notes.safetensors").write_bytes(b"not ours")
    model.save_pretrained(tmp_path, task_names=["a", "c"])
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["README.md", CONFIG_NAME, "shared.safetensors", "tasks/a.safetensors", "tasks/c.safetensors",
                     "tasks/notes.safetensors"]


def test_a_task_name_that_is_no_file_name_gets_its_label(tmp_path):
    model = trained(METHODS["linear"](tiny_vit()))
    model.save_pretrained(tmp_path, task_names=["../../outside", "ok"])
    assert sorted(p.name for p in (tmp_path / "tasks").iterdir()) == ["ok.safetensors", "task0.safetensors"]
    loaded = from_pretrained(tmp_path, backbone=tiny_vit())
    assert loaded.pretrained_config["tasks"][0]["name"] == "../../outside"
    assert torch.equal(outputs(loaded)["mixed"], outputs(model)["mixed"])


# ----------------------------------------------------------------------------- runs and gift-cl export
RUN = ["benchmark=procedural", "benchmark.n_train=16", "benchmark.n_test=8", "benchmark.domains=[pedestrians,digits]",
       "optim.epochs=1", "optim.batch_size=8", "threads=1"]
SMALL_GIFT = ["generator.depth=1", "generator.rank=8", "generator.num_clusters=4"]


PROTOCOLS = ["sequential", "joint", "independent"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny GIFT run per protocol, made once for this module: ``runs(protocol)`` -> (cfg, run dir, results)."""
    made = {}

    def get(protocol):
        if protocol not in made:
            run_dir = tmp_path_factory.mktemp(protocol) / "run"
            cfg = compose_cfg("strategy=gift_multitask", f"strategy.protocol={protocol}", *RUN, *SMALL_GIFT)
            results = run_in_process(cfg, run_dir)
            (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))  # as run.py does
            made[protocol] = cfg, run_dir, results
        return made[protocol]
    return get


def _run_model(cfg, run_dir, protocol):
    """The model as the run's own checkpoints hold it (what gift_cl.interpret.load_run rebuilds)."""
    from safetensors.torch import load_file

    from gift_cl.backbones import create_backbone
    from gift_cl.checkpoint import load_run_checkpoint
    from gift_cl.rng import seed_everything

    def build():
        seed_everything(cfg.seed)
        backbone = create_backbone(num_classes=0, **OmegaConf.to_container(cfg.model, resolve=True))
        return safe_instantiate(cfg.strategy.method, backbone, where="strategy.method")

    if protocol != "independent":
        state = load_run_checkpoint(run_dir / "checkpoints" / "last.pt")
        model = build()
        for t, n in sorted(state["tasks"].items()):
            model.add_task(t, n)
        model.load_state_dict(state["model"], strict=False)
        return model.eval()
    models = {}
    for i, name in enumerate(["pedestrians", "digits"]):
        model = build()
        model.add_task(i, {0: 2, 1: 10}[i])
        model.load_state_dict(load_file(run_dir / "checkpoints" / f"{name}.safetensors"), strict=False)
        models[i] = model.eval()
    return TaskModels(models)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_run_writes_its_model_and_it_reproduces_the_run(runs, protocol):
    cfg, run_dir, results = runs(protocol)
    model_dir = run_dir / MODEL_DIR
    loaded = from_pretrained(model_dir)  # the random test backbone is rebuilt from the run's seed and checked
    config = loaded.pretrained_config
    assert config["protocol"] == protocol and config["results"] == json.loads((run_dir / "results.json").read_text())
    assert config["results"]["finished"] and [t["name"] for t in config["tasks"]] == ["pedestrians", "digits"]
    assert config["backbone"]["source"]["name"] == "vit_tiny_patch16_224"
    assert config["backbone"]["data_config"] == {"image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}
    assert config["method"]["_target_"] == "gift_cl.methods.GiftMethod" and config["method"]["config"]["rank"] == 8
    reference = _run_model(cfg, run_dir, protocol)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for t in (0, 1):
            assert torch.equal(loaded(x, t), reference(x, t))
        mixed = torch.tensor([0, 1, 1, 0, 1])
        assert torch.equal(loaded(x, mixed), reference(x, mixed))
    # the run's per-image predictions, reproduced by the loaded model on the same test batches
    tasks = safe_instantiate(cfg.benchmark, where="benchmark")
    predictions = read_predictions(run_dir)
    for i, task in enumerate(tasks):
        images = torch.stack([task.test[j][0] for j in range(len(task.test))])
        with torch.no_grad():
            pred = loaded(images, i).argmax(-1).numpy()
        assert np.array_equal(pred, predictions[task.name][0]), task.name


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_gift_cl_export_writes_the_model_from_a_runs_checkpoints(runs, protocol, tmp_path, capsys):
    cfg, run_dir, _ = runs(protocol)
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / MODEL_DIR)
    assert export_main([str(copy)]) == 0
    assert f"model: {copy / MODEL_DIR}" in capsys.readouterr().out
    ours, theirs = from_pretrained(copy / MODEL_DIR), from_pretrained(run_dir / MODEL_DIR)
    with torch.no_grad():
        assert torch.equal(ours(X, MIXED), theirs(X, MIXED))
    mine, run = (json.loads((d / MODEL_DIR / CONFIG_NAME).read_text()) for d in (copy, run_dir))
    assert mine == run
    # from a saved model directory to another one
    assert export_main([str(copy / MODEL_DIR), "--out", str(tmp_path / "again")]) == 0
    with torch.no_grad():
        assert torch.equal(from_pretrained(tmp_path / "again")(X, MIXED), ours(X, MIXED))


def test_a_partly_written_independent_model_directory_is_completed_by_export(runs, tmp_path):
    """Independent runs write each task's model as it ends; the config comes last. A run that lost a task's
    file (started before this existed) gets it rebuilt from checkpoints/<task>.safetensors."""
    cfg, run_dir, _ = runs("independent")
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    (copy / MODEL_DIR / CONFIG_NAME).unlink()
    (copy / MODEL_DIR / "tasks" / "digits.safetensors").unlink()
    with pytest.raises(CheckpointError, match="not a gift_cl model directory"):
        from_pretrained(copy / MODEL_DIR)
    assert export_main([str(copy)]) == 0
    with torch.no_grad():
        assert torch.equal(from_pretrained(copy / MODEL_DIR)(X, MIXED), from_pretrained(run_dir / MODEL_DIR)(X, MIXED))


# ----------------------------------------------------------------------------- the Hugging Face Hub
def test_a_hub_id_loads_offline_from_the_local_cache(tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # tests/conftest.py: no network
    model = trained(METHODS["gift_paca"](tiny_vit()))
    saved = tmp_path / "saved"
    model.save_pretrained(saved)
    # the cache as huggingface_hub.snapshot_download leaves it after downloading the pushed folder
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--alice--gift-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(saved, repo / "snapshots" / commit)
    loaded = from_pretrained("alice/gift-tiny", backbone=tiny_vit(), cache_dir=tmp_path / "cache")
    assert torch.equal(outputs(loaded)["mixed"], outputs(model)["mixed"])
    with pytest.raises(CheckpointError, match=r"alice/other: no such directory, and the Hugging Face Hub could not "
                                              r"provide it .*HF_HUB_OFFLINE=1"):
        from_pretrained("alice/other", backbone=tiny_vit(), cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- bad input: one clear message
@pytest.fixture
def saved(tmp_path) -> Path:
    trained(METHODS["gift_paca"](tiny_vit())).save_pretrained(tmp_path / "m", task_names=["a", "b"])
    return tmp_path / "m"


def edit_config(directory: Path, change) -> None:
    path = directory / CONFIG_NAME
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_another_backbone_is_refused_by_name(saved):
    with pytest.raises(BackboneError, match=r"trained on another backbone: vit_tiny_patch16_224 with 30 tensors, "
                                            r"113,600 parameters"):
        from_pretrained(saved, backbone=tiny_vit(seed=1))
    with pytest.raises(BackboneError, match="trained on another backbone"):
        from_pretrained(saved, backbone=tiny_vit().half())  # same weights, another dtype
    with pytest.raises(BackboneError, match="does not say where the weights of its backbone"):
        from_pretrained(saved)  # built in Python: no source recorded


@pytest.mark.parametrize("damage,message", [
    (lambda d: (d / CONFIG_NAME).unlink(), "not a gift_cl model directory .gift_cl_config.json missing"),
    (lambda d: (d / "tasks" / "b.safetensors").unlink(), r"tasks/b.safetensors: missing"),
    (lambda d: (d / "shared.safetensors").unlink(), r"shared.safetensors: missing"),
    (lambda d: edit_config(d, lambda c: c.update(format_version=2, gift_cl_version="9.0")),
     r"written by a newer gift_cl \('9.0'\) in format version 2; this gift_cl .* reads format version 1: upgrade"),
    (lambda d: edit_config(d, lambda c: c.update(format="something.else")), "not a gift_cl model config"),
    (lambda d: edit_config(d, lambda c: c.update(extra=1)), r"fields \['extra'\] missing or unknown"),
    (lambda d: edit_config(d, lambda c: c["method"].update(_target_="os.system")),
     r"method: strategy.method._target_='os.system': not a constructor a configuration may name here"),
    (lambda d: edit_config(d, lambda c: c["method"].update(_target_="gift_cl.pretrain.main")),
     "not a constructor a configuration may name here"),
    (lambda d: edit_config(d, lambda c: c["method"].update(_args_=["x"])), "Hydra's _args_ is not allowed"),
    (lambda d: edit_config(d, lambda c: c["method"]["config"].update(rank=0)), r"rank=0: must be an integer in"),
    (lambda d: edit_config(d, lambda c: c["method"].update(trunk={"_target_": "builtins.eval"})),
     "nothing may be instantiated at strategy.method.trunk"),
    (lambda d: edit_config(d, lambda c: c["tasks"][1].update(num_classes=7)), "does not fit the GiftMethod"),
    (lambda d: edit_config(d, lambda c: c["tasks"][1].update(name="a")), "a task name appears twice"),
    (lambda d: edit_config(d, lambda c: c["backbone"]["source"] is None and c["backbone"].update(source={
        "name": "vit_tiny_patch16_224", "kwargs": {"pretrained_cfg_overlay": {"file": "/etc/passwd"}},
        "pretrained": False, "checkpoint": None, "seed": 0})), None),
    (lambda d: (d / CONFIG_NAME).write_text('{"format": "gift_cl.pretrained", "format_version": NaN}'),
     "not valid JSON"),
    (lambda d: (d / CONFIG_NAME).write_text("[1, 2]"), "expected a JSON object, got a list"),
])
def test_a_broken_or_crafted_directory_is_one_clear_message(saved, damage, message):
    damage(saved)
    if message is None:  # the crafted backbone source: model.kwargs that load weights are refused
        with pytest.raises(BackboneError, match="model.kwargs.pretrained_cfg_overlay: not allowed"):
            from_pretrained(saved)
        return
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(saved, backbone=tiny_vit())


def _rewrite(path: Path, tensors=None, metadata=None, keep_metadata=True):
    """Write ``path`` again as safetensors: its tensors changed by ``tensors`` and its header metadata."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata()) if keep_metadata else {}
    state = tensors(state) if tensors else state
    save_file(state, str(path), metadata={**meta, **(metadata or {})})


def _a_key(state, part):
    return next(k for k in state if part in k)


@pytest.mark.parametrize("craft,message", [
    (lambda p: p.write_bytes(b"\xff" * 8 + b"{}"), "not a readable safetensors file"),
    (lambda p: p.write_bytes(struct.pack("<Q", 40) + b'{"w": {"dtype": "F32", "shape": [999999], '), "not a readable"),
    (lambda p: p.write_bytes(struct.pack("<Q", 60) + json.dumps(
        {"w": {"dtype": "F32", "shape": [1000], "data_offsets": [0, 4000]}}).encode().ljust(60) + b"\0" * 8),
     "not a readable safetensors file"),
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "not a readable safetensors file"),
    (lambda p: p.write_bytes(b""), "0 bytes, not a safetensors file"),
    (lambda p: _rewrite(p, keep_metadata=False), "a safetensors file of format None, expected 'gift_cl.pretrained'"),
    (lambda p: _rewrite(p, lambda s: {**s, "extra.weight": torch.zeros(2)}), r"unexpected \['extra.weight'\]"),
    (lambda p: _rewrite(p, lambda s: {k: v for k, v in s.items() if "recovery" not in k}), r"missing \['gift.gen"),
    (lambda p: _rewrite(p, lambda s: {k: v.double() if "classifiers" in k else v for k, v in s.items()}),
     "stored as torch.float64, the model holds torch.float32"),
    (lambda p: _rewrite(p, lambda s: {k: v[:, :3].contiguous() if "recovery" in k else v for k, v in s.items()}),
     "size mismatch"),
    (lambda p: _rewrite(p, lambda s: {k: v.fill_(float("nan")) if "classifiers" in k else v for k, v in s.items()}),
     "non-finite"),
])
def test_a_crafted_or_damaged_safetensors_file_is_one_clear_message(saved, craft, message):
    craft(saved / "tasks" / "b.safetensors")
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(saved, backbone=tiny_vit())


@pytest.mark.parametrize("skeleton,message", [
    ({"_extra_state": {"__dict__": [["prototypes", {"__eval__": "1"}]]}}, "not one this project writes"),
    ({"_extra_state": {"__tensor__": "nowhere"}}, "not one this project writes"),
    ({"_extra_state": {"__dict__": [["prototypes", {"__dict__": [[0, {"__tensor__": "_extra_state::0"}],
                                                                 [1, {"__tensor__": "_extra_state::1"}]]}]]}},
     r"does not fit the GiftMethod its config describes \(KeyError: .anchors.\)"),
    ([1, 2], "extra-state record is a list"),
])
def test_a_crafted_extra_state_is_one_clear_message(saved, skeleton, message):
    _rewrite(saved / "shared.safetensors", metadata={"gift_cl.extra_state": json.dumps(skeleton)})
    with pytest.raises(CheckpointError, match=message):
        from_pretrained(saved, backbone=tiny_vit())


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/gift_cl_pretrained_pwned",))


def test_nothing_loaded_can_run_code(saved):
    """A pickle (torch.save) posing as a task file, or as the config, is refused without being executed."""
    marker = Path("/tmp/gift_cl_pretrained_pwned")
    marker.unlink(missing_ok=True)
    torch.save({"classifiers.1.weight": _Payload()}, saved / "tasks" / "b.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file .* never a pickle"):
        from_pretrained(saved, backbone=tiny_vit())
    (saved / CONFIG_NAME).write_bytes(pickle.dumps(_Payload()))
    with pytest.raises(CheckpointError, match="not valid JSON"):
        from_pretrained(saved, backbone=tiny_vit())
    assert not marker.exists()


def test_what_cannot_be_rebuilt_is_refused_when_saving(tmp_path):
    model = trained(LoraMethod(tiny_vit(), addons={"my_gist": Gist()}))
    with pytest.raises(CheckpointError, match=r"strategy.method.addons.my_gist: the shipped configs name Gist only at "
                                              r"\['strategy.method.addons.gist'\]"):
        model.save_pretrained(tmp_path)

    class MyLora(LoraMethod):
        pass

    with pytest.raises(CheckpointError, match="MyLora is not a constructor the shipped configs name"):
        trained(MyLora(tiny_vit())).save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="has no tasks yet"):
        LinearProbe(tiny_vit()).save_pretrained(tmp_path)


def test_the_export_command_reports_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_:
        export_main([str(tmp_path / "nowhere")])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: CheckpointError: ") and "nowhere: no such directory" in err[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        export_main([str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config_resolved.yaml: not found" in err[0]
    # the console script: `gift-cl export ...` is this command, not a run
    monkeypatch.setattr(sys, "argv", ["gift-cl", "export", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as exit_:
        cli_main()
    assert exit_.value.code == 1 and "nowhere: no such directory" in capsys.readouterr().err


def test_a_model_saved_under_the_addons_former_names_loads_bit_for_bit(tmp_path):
    """A directory written when a method's add-ons were its ``plugins`` argument and their tensors
    ``model_plugins.*``: the same model, bit for bit."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    model = trained(LoraMethod(tiny_vit(), addons={"gist": Gist(dropout=0.0)}))
    expected = outputs(model)
    save_pretrained(model, tmp_path, task_names=["digits", "signs"])
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    config["method"]["plugins"] = config["method"].pop("addons")
    (tmp_path / CONFIG_NAME).write_text(json.dumps(config))
    renamed = 0
    for path in sorted(tmp_path.rglob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            metadata, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
        renamed += sum(k.startswith("model_addons.") for k in state)
        save_file({k.replace("model_addons.", "model_plugins.", 1): v for k, v in state.items()}, str(path), metadata)
    assert renamed == 2  # one Gist token per task
    loaded = from_pretrained(tmp_path, backbone=tiny_vit())
    assert sorted(loaded.model_addons) == ["gist"]
    got = outputs(loaded)
    assert all(torch.equal(got[key], expected[key]) for key in expected)
    assert_same_model(model, loaded)
