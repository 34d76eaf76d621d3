"""GPU as a first-class path, tested on CPU: device=auto, precision (bf16/fp16 autocast, the fp16 loss
scaler), TF32, torch.compile wiring, loader settings, RNG state across devices, and Hydra's submitit
launchers (a 2-job multirun through the local executor; a pre-empted job requeued by submitit continues its
run)."""
import contextlib
from pathlib import Path

import pytest
import torch
from torch import nn

from runs import PROCEDURAL, TINY, compose_cfg, results, run_in_process, run_py

from gift_cl.config import ConfigError
from orchestration.device import check_device, configure_backends, loader_kwargs, runtime
from orchestration.validation import validate
from strategies.precision import Precision, compile_backbones

TINY_CFG = [o for o in TINY if not o.startswith("model=")]
GIFT_2 = [*TINY_CFG, *PROCEDURAL, "strategy=gift_multitask", "benchmark.domains=[digits,signs]", "optim.epochs=1"]


def _tiny_gift():
    from hydra.utils import instantiate

    from gift_cl.backbones import create_backbone
    from omegaconf import OmegaConf

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
    from strategies import TaskAwareStrategy
    from gift_cl.optim import OptimConfig

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


# ---------------------------------------------------------------------- SLURM / submitit
def _require_submitit():
    try:
        import hydra_plugins.hydra_submitit_launcher  # noqa: F401
    except ImportError:
        pytest.fail("hydra-submitit-launcher is not installed: pip install -e .[slurm] "
                    "(it is also part of the dev extra)")


def test_slurm_launcher_config_composes():
    _require_submitit()
    from hydra import compose, initialize_config_dir

    from runs import REPO

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.partition=gpu"],
                      return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.timeout_min > 0 and launcher.mem_gb > 0
    assert launcher.cpus_per_task > 0
    # a timed-out or pre-empted job goes back to the queue (and continues its run: the local test below)
    assert launcher.max_num_timeout >= 1 and launcher.additional_parameters.requeue is True
    assert 0 < launcher.signal_delay_s < 60 * launcher.timeout_min


def test_submitit_local_multirun_two_jobs(tmp_path):
    _require_submitit()
    sweep = tmp_path / "sweep"
    run_py("-m", "hydra/launcher=local", *TINY, *PROCEDURAL, "benchmark.domains=[pedestrians]", "optim.epochs=1",
           "strategy=linear,lora", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}", timeout=600)
    assert results(sweep / "0")["strategy"] == "linear" and results(sweep / "1")["strategy"] == "lora"
    assert results(sweep / "0")["finished"] and results(sweep / "1")["finished"]
    assert list(Path(sweep, ".submitit").iterdir())  # the jobs went through submitit


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(c) for c in path.read_text().split()] if path.is_file() else []


def test_submitit_job_preempted_is_requeued_and_continues_its_run(tmp_path):
    """A submitit job signalled with USR2 (what SLURM sends before a time limit, and on pre-emption where the
    cluster is set up so) after its first checkpoint: submitit calls the launcher's checkpoint(), which resubmits
    the job with its command line unchanged, and requeues it; the job, started again in its own directory,
    continues the run from that checkpoint (not refused as a new run there, not started afresh) and the sweep
    ends with exit status 0. Through submitit's local executor, which requeues as SLURM does."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from orchestration.loop import CHECKPOINT
    from runs import REPO, env

    _require_submitit()
    sweep = tmp_path / "sweep"
    run_dir = sweep / "0"
    proc = subprocess.Popen([sys.executable, str(REPO / "run.py"), "-m", "hydra/launcher=local", *TINY, *PROCEDURAL,
                             "strategy=linear_multitask", "benchmark.domains=[digits,pedestrians]", "optim.epochs=4",
                             "checkpoint_every=1", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=0"],
                            cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 1200
        while not (run_dir / CHECKPOINT).is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None and (run_dir / CHECKPOINT).is_file(), "the job ended before its first checkpoint"
        # the local job id is its controller's pid (submitit also leaves a folder named after its "%j" pattern)
        controller = int(next(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit()).name)
        tasks = _children(controller)  # the job's process (the controller restarts it when it is requeued)
        assert len(tasks) == 1, tasks
        assert not (run_dir / "results.json").is_file() or not results(run_dir)["finished"]
        os.kill(tasks[0], signal.SIGUSR2)
        stdout, stderr = proc.communicate(timeout=1800)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert results(run_dir)["finished"]
    job_logs = "".join(p.read_text() for p in sorted((sweep / ".submitit").rglob("*_log.*")))  # .out: INFO, .err: WARNING
    assert "this job is preempted" in job_logs and "Requeued job" in job_logs, job_logs[-3000:]
    log = (run_dir / "gift_cl.log").read_text()
    assert f"resumed from {run_dir / CHECKPOINT} at experience" in log, log[-3000:]
