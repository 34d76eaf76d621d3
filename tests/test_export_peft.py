"""GIFT tasks (and LoRA, the linear probe) as standard peft LoRA adapters on a plain timm ViT, loaded by peft
itself: the gift_cl model's logits within fp32 tolerance, one task at a time and for a mixed batch through
peft's adapter_names; the methods that are no peft adapters say why; merged timm checkpoints per task."""
import json
import subprocess
import sys

import pytest
import timm
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from gift_cl import GiftConfig
from gift_cl.export_peft import NOT_PEFT, ExportError, export_merged, export_peft
from gift_cl.methods import (
    AdapterMethod,
    ArtiHippo,
    BitFit,
    FullFinetune,
    GiftMethod,
    Gist,
    GistAdapterMethod,
    LinearProbe,
    LoraMethod,
    SharedBackbone,
    VptDeep,
)
from gift_cl.model_meta import fingerprint, plain_backbone_tensors
from gift_cl.orchestration.export import main as export_main
from gift_cl.pretrained import TaskModels, from_pretrained

from runs import env, tiny_vit

CLASSES = {0: 3, 1: 5}
X = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
MIXED = [0, 1, 1, 0, 1, 0]
# fp32: each logit is a sum over the features; the two forms round differently (W + ΔW folded, or not)
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def with_classifier(num_classes: int):
    """The test backbone with a classifier of ``num_classes`` outputs on the same weights."""
    vit = tiny_vit()
    if num_classes:
        vit.reset_classifier(num_classes)
    return vit


def trained(model, tasks=(0, 1), seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    for t in tasks:
        model.add_task(t, CLASSES[t])
    with torch.no_grad():
        for value in model.trainable_state_dict().values():
            if torch.is_tensor(value) and value.is_floating_point():
                value.add_(0.05 * torch.randn(value.shape, generator=g))
    return model.eval()


PEFT = {
    "gift_paca": lambda: GiftMethod(tiny_vit(), GiftConfig.paca(rank=16, depth=2, num_clusters=4)),
    "gift_linear": lambda: GiftMethod(tiny_vit(), GiftConfig.linear(rank=8)),
    "gift_attention_qkv_fc1": lambda: GiftMethod(tiny_vit(), GiftConfig(target_modules=("attn.qkv", "mlp.fc1"),
                                                                        rank=8, depth=1, block="attention")),
    "gift_mlp": lambda: GiftMethod(tiny_vit(), GiftConfig(rank=8, depth=1, block="mlp", num_clusters=4)),
    "lora_proj": lambda: LoraMethod(tiny_vit(), rank=8),
    "lora_qkv": lambda: LoraMethod(tiny_vit(), rank=4, alpha=2.0, target_modules=["attn.qkv"]),
    "linear": lambda: LinearProbe(tiny_vit()),
}


def peft_model(directory, names, num_classes):
    model = PeftModel.from_pretrained(with_classifier(num_classes), str(directory / names[0]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(directory / name), adapter_name=name)
    return model.eval()


@pytest.mark.parametrize("name", sorted(PEFT))
def test_tasks_load_in_peft_with_the_gift_cl_models_logits(name, tmp_path):
    model = trained(PEFT[name]())
    written = export_peft(model, tmp_path)
    assert sorted(written) == ["task0", "task1"]
    config = json.loads((tmp_path / "task0" / "adapter_config.json").read_text())
    if name.startswith("gift"):
        assert config["r"] == config["lora_alpha"] == model.gift.config.rank  # B = h, A = ψᵀ, scaling 1
        assert config["target_modules"] == sorted(model.gift.layers())
    assert config["modules_to_save"] == ["head"] and config["peft_type"] == "LORA"
    peft = peft_model(tmp_path, ["task0", "task1"], num_classes=5)
    with torch.no_grad():
        for t in (0, 1):
            peft.set_adapter(f"task{t}")
            ours = model(X, t)
            theirs = peft(X)
            torch.testing.assert_close(theirs[:, : CLASSES[t]], ours, **TOLERANCE)
            assert bool((theirs[:, CLASSES[t]:] == -1e9).all())  # the padded outputs: gift_cl's PAD_LOGIT
            print(f"{name} task {t}: max |Δlogit| = {(theirs[:, :CLASSES[t]] - ours).abs().max().item():.2e}")
        mixed = peft(X, adapter_names=[f"task{t}" for t in MIXED])
        ours = model(X, torch.tensor(MIXED))
        torch.testing.assert_close(mixed, ours, **TOLERANCE)
        print(f"{name} mixed batch: max |Δlogit| = {(mixed - ours).abs().max().item():.2e}")


def test_gift_adapters_are_its_generated_residuals(tmp_path):
    """B A = ΔW_t = h_t ψ_tᵀ of every target layer, as GIFT generates it."""
    model = trained(PEFT["gift_paca"]())
    export_peft(model, tmp_path)
    for t in (0, 1):
        weights = load_file(tmp_path / f"task{t}" / "adapter_model.safetensors")
        deltas = model.gift.delta_weights(str(t))
        for layer, delta in deltas.items():
            b, a = (weights[f"base_model.model.{layer}.lora_{k}.weight"] for k in "BA")
            torch.testing.assert_close(b @ a, delta.detach(), rtol=1e-6, atol=1e-7)


def test_one_model_per_task_exports_each_task_from_its_own_model(tmp_path):
    """The independent protocol: each task's adapter comes from its own model (its own trunk)."""
    models = {}
    for t in (0, 1):
        models[t] = trained(GiftMethod(tiny_vit(), GiftConfig.paca(rank=16, depth=2, num_clusters=4)), tasks=(t,),
                            seed=t)
    model = TaskModels(models)
    export_peft(model, tmp_path, num_classes=6)
    peft = peft_model(tmp_path, ["task0", "task1"], num_classes=6)
    with torch.no_grad():
        mixed = peft(X, adapter_names=[f"task{t}" for t in MIXED])
        torch.testing.assert_close(mixed[:, :5], model(X, torch.tensor(MIXED)), **TOLERANCE)
    with pytest.raises(ExportError, match="num_classes=4: a task has 5 classes"):
        export_peft(model, tmp_path / "x", num_classes=4)


NOT_EXPORTABLE = {
    "BitFit": lambda: BitFit(tiny_vit()),
    "AdapterMethod": lambda: AdapterMethod(tiny_vit()),
    "GistAdapterMethod": lambda: GistAdapterMethod(tiny_vit()),
    "VptDeep": lambda: VptDeep(tiny_vit(), length=2),
    "FullFinetune": lambda: FullFinetune(tiny_vit()),
    "SharedBackbone": lambda: SharedBackbone(tiny_vit()),
    "ArtiHippo": lambda: ArtiHippo(tiny_vit()),
}


@pytest.mark.parametrize("name", sorted(NOT_EXPORTABLE))
def test_methods_that_are_no_peft_adapters_say_why(name, tmp_path):
    model = NOT_EXPORTABLE[name]()
    model.add_task(0, 3)
    with pytest.raises(ExportError, match=f"{name} cannot be exported as a peft LoRA adapter: "):
        export_peft(model, tmp_path)
    assert NOT_PEFT[name] in str(pytest.raises(ExportError, export_peft, model, tmp_path).value)
    assert not any(tmp_path.iterdir())


def test_plug_ins_are_no_peft_adapters(tmp_path):
    model = trained(GiftMethod(tiny_vit(), GiftConfig.linear(rank=8), addons={"gist": Gist()}))
    with pytest.raises(ExportError, match=r"with add-ons \['gist'\] cannot be exported .*\(GIST adds a token"):
        export_peft(model, tmp_path)
    with pytest.raises(ExportError, match="with add-ons"):
        export_merged(model, tmp_path)


MERGED = {**{k: v for k, v in PEFT.items() if k in ("gift_paca", "lora_qkv", "linear")},
          "bitfit": lambda: BitFit(tiny_vit()), "finetune": lambda: FullFinetune(tiny_vit()),
          "shared_backbone": lambda: SharedBackbone(tiny_vit())}


@pytest.mark.parametrize("name", sorted(MERGED))
def test_merged_checkpoints_load_in_plain_timm_with_the_same_metadata(name, tmp_path):
    model = trained(MERGED[name]())
    written = export_merged(model, tmp_path)
    for t in (0, 1):
        plain = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2,
                                  num_heads=2, num_classes=CLASSES[t]).eval()
        plain.load_state_dict(load_file(written[f"task{t}"]), strict=True)
        with torch.no_grad():
            torch.testing.assert_close(plain(X), model(X, t), **TOLERANCE)
        meta = json.loads((tmp_path / f"task{t}.json").read_text())
        assert meta["task"]["num_classes"] == CLASSES[t] and meta["create_model"]["num_classes"] == CLASSES[t]
        assert meta["backbone"]["weights_sha256"] == fingerprint(plain_backbone_tensors(tiny_vit()))[0]
        assert meta["method"]["_target_"].endswith(type(model).__name__)
    if name.startswith("gift"):  # merge_and_unload, exactly
        merged = model.gift.merged_copy("1").state_dict()
        state = load_file(written["task1"])
        assert all(torch.equal(state[k], v) for k, v in merged.items())


def test_peft_only_inference_needs_neither_gift_cl_nor_its_run(tmp_path):
    """The README snippet: a user with timm and peft, the backbone weights and the exported adapters."""
    model = trained(PEFT["gift_paca"]())
    export_peft(model, tmp_path / "peft")
    save_file(tiny_vit().state_dict(), str(tmp_path / "backbone.safetensors"))
    torch.save(X, tmp_path / "x.pt")
    with torch.no_grad():
        torch.save(model(X, torch.tensor(MIXED)), tmp_path / "expected.pt")
    code = f"""
import sys, timm, torch
from peft import PeftModel
from safetensors.torch import load_file
base = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
                         num_classes=5)
base.load_state_dict(load_file("backbone.safetensors"), strict=False)   # the frozen backbone; heads come with the adapters
model = PeftModel.from_pretrained(base, "peft/task0", adapter_name="task0")
model.load_adapter("peft/task1", adapter_name="task1")
model.eval()
x, expected = torch.load("x.pt"), torch.load("expected.pt")
with torch.no_grad():
    logits = model(x, adapter_names={[f"task{t}" for t in MIXED]!r})
torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
assert not any(m == "gift_cl" or m.startswith("gift_cl.") for m in sys.modules), "gift_cl was imported"
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env(), "PYTHONPATH": ""},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-3000:]
    readme = (tmp_path / "peft" / "README.md").read_text()
    assert 'PeftModel.from_pretrained(base, "task0", adapter_name="task0")' in readme
    manifest = json.loads((tmp_path / "peft" / "gift_cl_peft.json").read_text())
    assert [t["adapter"] for t in manifest["tasks"]] == ["task0", "task1"] and manifest["num_classes"] == 5


def test_export_command_writes_peft_adapters_and_merged_checkpoints(tmp_path, capsys):
    model = trained(PEFT["gift_linear"]())
    model.save_pretrained(tmp_path / "model", task_names=["digits", "signs"],
                          backbone_source={"name": "vit_tiny_patch16_224", "pretrained": False, "checkpoint": None,
                                           "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2,
                                                      "num_heads": 2}, "seed": 0})
    assert export_main([str(tmp_path / "model"), "--peft", "--merged", "--tasks", "signs"]) == 0
    out = capsys.readouterr().out
    assert "peft adapters:" in out and "merged checkpoints:" in out
    assert sorted(p.name for p in (tmp_path / "model" / "peft").iterdir()) == ["README.md", "gift_cl_peft.json", "signs"]
    assert (tmp_path / "model" / "merged" / "signs.safetensors").is_file()
    manifest = json.loads((tmp_path / "model" / "peft" / "gift_cl_peft.json").read_text())
    assert manifest["create_model"] == {"model_name": "vit_tiny_patch16_224", "num_classes": 5, "kwargs": {
        "img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}}
    loaded = from_pretrained(tmp_path / "model")  # the backbone rebuilt from the recorded source
    peft = PeftModel.from_pretrained(with_classifier(5), str(tmp_path / "model" / "peft" / "signs")).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft(X), loaded(X, 1), **TOLERANCE)
    with pytest.raises(SystemExit) as exit_:
        export_main([str(tmp_path / "model"), "--peft", "--tasks", "nope"])
    assert exit_.value.code == 1 and capsys.readouterr().err.strip().splitlines() == [
        "error: ExportError: no task ['nope']; tasks: ['digits', 'signs']"]
