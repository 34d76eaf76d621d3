"""orchestration.device, the GPU path tested on CPU: device=auto, precision (bf16/fp16 autocast, the fp16 loss
scaler), TF32, torch.compile wiring, loader settings, RNG state across devices. (Submitit jobs and their requeue:
tests/test_sweep.py.)"""
import contextlib

import pytest
import torch
from torch import nn

from gift_cl.config import ConfigError
from gift_cl.orchestration.device import check_device, configure_backends, loader_kwargs, runtime
from gift_cl.orchestration.validation import validate
from gift_cl.strategies.precision import Precision, compile_backbones

from runs import PROCEDURAL, TINY, compose_cfg, run_in_process

TINY_CFG = [o for o in TINY if not o.startswith("model=")]
GIFT_2 = [*TINY_CFG, *PROCEDURAL, "strategy=gift_multitask", "benchmark.domains=[digits,signs]", "optim.epochs=1"]


def _tiny_gift():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from gift_cl.backbones import create_backbone

    cfg = compose_cfg("strategy=gift_multitask")
    backbone = create_backbone(num_classes=0, **OmegaConf.to_container(cfg.model, resolve=True))
    model = instantiate(cfg.strategy.method, backbone)
    model.add_task(0, 3)
    return model, cfg.model.image_size


# ---------------------------------------------------------------------- configuration
def test_defaults_resolve_to_todays_cpu_run():
    cfg = compose_cfg()
    assert cfg.device == "auto" and cfg.precision == "fp32" and cfg.tf32 is True
    assert cfg.compile is False and cfg.distributed is False and cfg.num_workers is None
    validate(cfg)
    env = runtime(cfg)
    if not torch.cuda.is_available():
        assert env.device == "cpu"
        assert env.loader == {"num_workers": 0}  # today's loaders: no workers, nothing pinned
    assert env.precision == "fp32" and not env.compile and env.distributed is None and env.is_main


@pytest.mark.parametrize("override,message", [
    ("device=gpu", "must be auto, cpu, cuda or cuda:N"),
    ("device=cuda:x", "must be auto, cpu, cuda or cuda:N"),
    ("precision=fp8", "precision='fp8': must be one of fp32, bf16, fp16"),
    ("compile=maybe", "compile='maybe': must be one of True, False"),
    ("tf32=sometimes", "tf32='sometimes': must be one of True, False"),
    ("num_workers=-1", "num_workers=-1"),
])
def test_validation_messages(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(compose_cfg(override))


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_asked_for_but_absent_is_one_clear_message(device, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, also on a GPU machine
    with pytest.raises(ConfigError, match="CUDA is not available on this machine.*device=auto"):
        validate(compose_cfg(f"device={device}"))


def test_cuda_index_beyond_the_machine(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    check_device("cuda:1")
    with pytest.raises(ConfigError, match=r"has 2 CUDA device\(s\)"):
        check_device("cuda:2")


def test_loader_settings_per_device(monkeypatch):
    assert loader_kwargs("cpu", None) == {"num_workers": 0}
    assert loader_kwargs("cpu", 3) == {"num_workers": 3}  # CPU: only what was asked for
    assert loader_kwargs("cuda:0", 0) == {"num_workers": 0, "pin_memory": True}
    assert loader_kwargs("cuda:0", 4) == {"num_workers": 4, "pin_memory": True, "persistent_workers": True}
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)))
    assert loader_kwargs("cuda:0", None)["num_workers"] == 8
    assert loader_kwargs("cuda:0", None, world_size=4)["num_workers"] == 3  # 16 cores / 4 ranks - 1


def test_tf32_switch_on_cuda_only():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        configure_backends("cpu", True)
        assert not torch.backends.cuda.matmul.allow_tf32  # a CPU run changes nothing
        configure_backends("cuda:0", True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        configure_backends("cuda:0", False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved


# ---------------------------------------------------------------------- precision
def test_fp32_is_no_autocast_and_no_scaler():
    amp = Precision("fp32", "cpu")
    assert isinstance(amp.autocast(), contextlib.nullcontext) and amp.scaler is None
    out = torch.randn(2, 3)
    assert amp.output(out) is out


def test_gift_delta_stays_fp32_under_bf16_autocast():
    from gift_cl.gift import GiftGenerator

    model, size = _tiny_gift()
    deltas = []
    hooks = [m.register_forward_hook(lambda m, i, o: deltas.append(o))
             for m in model.modules() if isinstance(m, GiftGenerator)]
    amp = Precision("bf16", "cpu")
    x = torch.randn(2, 3, size, size)
    with amp.autocast():
        logits = model(x, 0)
    def tensors(o):
        return [o] if torch.is_tensor(o) else [t for item in o for t in tensors(item)]

    assert deltas and all(t.dtype == torch.float32 for d in deltas for t in tensors(d))  # generator: fp32
    assert logits.dtype == torch.bfloat16  # the backbone's matmuls followed autocast
    assert amp.output(logits).dtype == torch.float32
    for h in hooks:
        h.remove()


def test_fp16_scaler_scales_backward_and_steps():
    torch.manual_seed(0)
    layer = nn.Linear(4, 2)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    amp = Precision("fp16", "cpu")
    assert amp.scaler is not None
    before = layer.weight.detach().clone()
    with amp.autocast():
        out = layer(torch.randn(8, 4))
    assert out.dtype == torch.float16
    loss = amp.output(out).pow(2).mean()
    amp.backward(loss)
    # the gradient is scaled by the loss scale (65536 to start)
    ref = torch.autograd.grad(amp.output(layer(torch.randn(8, 4))).pow(2).mean(), layer.weight)[0]
    assert layer.weight.grad.abs().max() > 1000 * ref.abs().max()
    amp.step(opt)
    assert not torch.equal(before, layer.weight) and amp.state_dict()["scale"] == 65536.0
    # an inf gradient: the step is skipped and the scale halves
    layer.weight.grad.fill_(float("inf"))
    w = layer.weight.detach().clone()
    amp.step(opt)
    assert torch.equal(w, layer.weight) and amp.state_dict()["scale"] == 32768.0
    fresh = Precision("fp16", "cpu")
    fresh.load_state_dict(amp.state_dict())
    assert fresh.state_dict()["scale"] == 32768.0


def test_bf16_on_cpu_runs_end_to_end(tmp_path):
    res = run_in_process(compose_cfg(*GIFT_2, "precision=bf16"), tmp_path)
    assert res["finished"] and len(res["accuracy_matrix"]) == 2
    assert all(0 <= a <= 1 for row in res["accuracy_matrix"] for a in row)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_fp16_on_cpu_runs_end_to_end_through_the_scaler(tmp_path, monkeypatch):
    steps = []
    original = torch.amp.GradScaler.step
    monkeypatch.setattr(torch.amp.GradScaler, "step",
                        lambda self, opt, *a, **k: steps.append(1) or original(self, opt, *a, **k))
    cfg = compose_cfg(*GIFT_2, "precision=fp16", "strategy.protocol=joint", "optim.epochs=2", "checkpoint_every=1")
    res = run_in_process(cfg, tmp_path)
    assert res["finished"] and steps  # every optimizer step went through GradScaler.step


def test_fp16_scaler_state_survives_a_mid_experience_checkpoint():
    from gift_cl.optim import OptimConfig
    from gift_cl.strategies import TaskAwareStrategy

    model, _ = _tiny_gift()
    strategy = TaskAwareStrategy(model=model, optim=OptimConfig(epochs=2, batch_size=4), precision="fp16",
                                 progress=False)
    strategy.amp.scaler.scale(torch.ones(()))
    strategy.amp.scaler.update(new_scale=1024.0)
    state = strategy.training_state(1)
    assert state["scaler"]["scale"] == 1024.0
    strategy.amp.reset()  # the next experience's fresh optimizer and scaler; a resume then loads the saved one
    strategy.amp.load_state_dict(state["scaler"])
    assert strategy.amp.state_dict()["scale"] == 1024.0
    plain = TaskAwareStrategy(model=model, optim=OptimConfig(epochs=2, batch_size=4), progress=False)
    assert "scaler" not in plain.training_state(1)  # fp32 checkpoints are as before


# ---------------------------------------------------------------------- compile
def test_compile_wiring_compiles_each_backbone_once():
    model, _ = _tiny_gift()
    keys = set(model.state_dict())
    assert compile_backbones(model) == 1
    assert compile_backbones(model) == 0  # already compiled; later calls only catch new backbones
    assert set(model.state_dict()) == keys  # in place: checkpoints keep their keys


def test_compile_true_tiny_run(tmp_path, monkeypatch):
    """compile=true end to end on CPU. The eager backend keeps this test fast on a CPU-only CI; the
    inductor default is what a GPU run uses (the wiring is the same)."""
    import torch._dynamo

    compiled = []
    original = nn.Module.compile

    def compile_eager(self, *args, **kwargs):
        compiled.append(type(self).__name__)
        return original(self, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(nn.Module, "compile", compile_eager)
    torch._dynamo.reset()
    res = run_in_process(compose_cfg(*GIFT_2, "compile=true", "benchmark.domains=[digits]"), tmp_path)
    assert res["finished"] and compiled == ["VisionTransformer"]


# ---------------------------------------------------------------------- checkpoints across devices
def test_rng_state_restores_onto_a_machine_with_fewer_gpus(monkeypatch):
    from gift_cl.rng import rng_state, set_rng_state

    state = rng_state()
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]  # saved on 2 GPUs
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((device, s)))
    set_rng_state(state)
    assert [d for d, _ in restored] == [0] and restored[0][1].device.type == "cpu"


def test_run_checkpoint_loads_onto_the_run_device(tmp_path):
    from gift_cl.checkpoint import load_run_checkpoint, save_run_checkpoint
    from gift_cl.rng import rng_state, set_rng_state

    save_run_checkpoint({"rng": rng_state(), "model": {"w": torch.ones(2)}}, tmp_path / "last.pt")
    state = load_run_checkpoint(tmp_path / "last.pt", runtime(compose_cfg()).device)
    set_rng_state(state["rng"])
    assert state["model"]["w"].device.type == runtime(compose_cfg()).device.split(":")[0]
