"""The GPU path on a real GPU (issue 20): deselected by default; ``pytest -m gpu`` runs them, and there they FAIL
(never skip) when CUDA is absent. ``make gpu-check`` (analysis/gpu/check.sh) runs them on a GPU machine with the
throughput benchmark and the GPU reference run; docs/guide/gpu.md, "Checking a GPU".

Each test is small (a 2-block random ViT, procedural images, seconds on a GPU). Tolerances, stated:

- bf16/fp16 autocast runs of GIFT (paca, linear), LoRA and full fine-tuning: the run finishes (a NaN or infinite
  loss stops it with DivergenceError) and every logged training loss is finite;
- the factored residual ``x Wᵀ + b + (x ψ) hᵀ`` under bf16 autocast against the fp32 (TF32 off) result: relative
  error (Frobenius) ≤ 1e-2 forward and ≤ 3e-2 for the gradients of x, h and ψ (the dense bf16 form
  ``F.linear(x, W + h ψᵀ, b)``'s errors are printed beside them); a GIFT model's logits under bf16 within 5e-2
  relative of fp32;
- ``precision=fp32`` with TF32 off: the GPU's logits equal the CPU's within 1e-4 (absolute);
- ``compile=true`` (inductor) against eager, TF32 off: every epoch's training loss within rtol 1e-3, atol 1e-4;
- kill -9 mid-run on the GPU (2 loader workers, pinned memory), then ``resume=``: the results and per-image
  predictions equal the uninterrupted run's exactly;
- ``torchrun --nproc_per_node=1`` with NCCL: the trained heads equal the same one-rank run on gloo (CPU) within
  rtol 1e-4. A ``distributed=true`` run has its own sharded data order (docs/guide/gpu.md), so "the plain run" it
  must equal is the one-rank run on the CPU backend. One GPU cannot test 2 NCCL ranks: the 2-rank comparison
  stays tests/test_distributed.py's (gloo, CPU).
"""
import csv
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from runs import PROCEDURAL, REPO, TINY, compose_cfg, env, kill_and_resume, results, run_in_process

pytestmark = pytest.mark.gpu

TINY_CFG = [o for o in TINY if not o.startswith("model=")]
ONE_TASK = [*TINY_CFG, *PROCEDURAL, "benchmark.domains=[digits]", "device=cuda", "num_workers=0"]
METHODS = {
    "gift-paca": ["strategy=gift_multitask", "generator=paca"],
    "gift-linear": ["strategy=gift_multitask", "generator=linear"],
    "lora": ["strategy=lora_multitask"],
    "finetune": ["strategy=finetune_multitask"],
}


@pytest.fixture(autouse=True)
def _cuda():
    if not torch.cuda.is_available():
        pytest.fail(f"the gpu tests need CUDA, and torch {torch.__version__} (CUDA build {torch.version.cuda or 'none'})"
                    " sees no GPU here. They are deselected by default; run them on a GPU machine: make gpu-check",
                    pytrace=False)
    yield
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # a run may have turned it on


def _tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on


def _losses(run_dir) -> list[float]:
    with open(run_dir / "logs" / "training_results.csv") as f:
        return [float(row["training_loss"]) for row in csv.DictReader(f)]


def _model(strategy: str = "gift_multitask", seed: int = 0):
    """The tiny run's model with one 3-class task, its zero-initialised trainables (GIFT's recovery, LoRA's B)
    drawn so that the residual is not zero; eval mode, on the CPU. The same ``seed``, the same model."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from gift_cl.backbones import create_backbone

    cfg = compose_cfg(f"strategy={strategy}")
    torch.manual_seed(seed)
    backbone = create_backbone(num_classes=0, **OmegaConf.to_container(cfg.model, resolve=True))
    model = instantiate(cfg.strategy.method, backbone)
    model.add_task(0, 3)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.normal_(0, 0.05)
    return model.eval(), cfg.model.image_size


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def test_cuda_is_available():
    name = torch.cuda.get_device_name(0)
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")
    assert torch.cuda.is_bf16_supported(), f"{name} has no bf16"


# ---------------------------------------------------------------------- autocast runs
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_autocast_run_trains_with_finite_loss(method, precision, tmp_path):
    cfg = compose_cfg(*ONE_TASK, *METHODS[method], f"precision={precision}", "optim.epochs=3")
    res = run_in_process(cfg, tmp_path)
    losses = _losses(tmp_path)
    assert res["finished"] and len(losses) == 3, losses
    assert all(math.isfinite(v) for v in losses), losses
    assert 0 <= res["average_accuracy"] <= 1


def test_factored_residual_bf16_matches_fp32():
    from gift_cl.residual import factored_linear

    _tf32(False)
    torch.manual_seed(0)
    n, d_in, d_out, r = 4096, 768, 768, 48
    dev = "cuda"
    x = torch.randn(n, d_in, device=dev)
    w, b = torch.randn(d_out, d_in, device=dev) * 0.02, torch.randn(d_out, device=dev) * 0.02
    h, psi = torch.randn(d_out, r, device=dev) * 0.1, torch.randn(d_in, r, device=dev) * 0.1

    def run(fn, autocast: bool):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, h, psi)]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            y = fn(*leaves)
        g = torch.randn(y.shape, device=dev, generator=torch.Generator(dev).manual_seed(1))
        y.float().backward(g)
        return y.float(), [t.grad for t in leaves]

    factored = lambda x, h, psi: factored_linear(x, w, b, [h], [psi])  # noqa: E731
    dense = lambda x, h, psi: F.linear(x, w + F.linear(h, psi), b)  # noqa: E731
    y32, g32 = run(factored, False)
    y_ref, _ = run(dense, False)
    torch.testing.assert_close(y32, y_ref, rtol=1e-4, atol=1e-4)  # fp32: the two forms agree
    y16, g16 = run(factored, True)
    yd16, gd16 = run(dense, True)
    err, err_dense = _rel(y16, y32), _rel(yd16, y32)
    print(f"bf16 relative error: factored {err:.2e}, dense {err_dense:.2e}")
    assert err <= 1e-2, (err, err_dense)
    for name, a, ref, dref in zip(("x", "h", "psi"), g16, g32, gd16):
        e, ed = _rel(a, ref), _rel(dref, ref)
        print(f"grad {name}: factored {e:.2e}, dense {ed:.2e}")
        assert e <= 3e-2, (name, e, ed)


def test_gift_logits_bf16_close_to_fp32():
    _tf32(False)
    model, size = _model()
    model.cuda()
    x = torch.randn(8, 3, size, size, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        fp32 = model(x, 0).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(x, 0).float()
    assert _rel(bf16, fp32) <= 5e-2, _rel(bf16, fp32)


# ---------------------------------------------------------------------- fp32 on the GPU = the CPU
@pytest.mark.parametrize("strategy", ["gift_multitask", "lora_multitask"])
def test_fp32_without_tf32_matches_the_cpu(strategy):
    from gift_cl.orchestration.device import configure_backends

    model, size = _model(strategy)
    on_gpu = _model(strategy)[0].cuda()  # its own copy: nothing computed on the CPU moves along
    for (k, a), b in zip(model.state_dict().items(), on_gpu.state_dict().values()):
        assert not torch.is_tensor(a) or torch.equal(a, b.cpu()), k
    x = torch.randn(16, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cpu = model(x, 0)
        configure_backends("cuda:0", False)  # what tf32=false sets
        gpu = on_gpu(x.cuda(), 0).cpu()
    print(f"{strategy}: max |GPU - CPU| = {(gpu - cpu).abs().max():.2e}")
    torch.testing.assert_close(gpu, cpu, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------- compile
def test_compile_matches_eager_loss_trajectory(tmp_path):
    import torch._dynamo

    args = [*ONE_TASK, "strategy=gift_multitask", "tf32=false", "optim.epochs=3"]
    run_in_process(compose_cfg(*args), tmp_path / "eager")
    torch._dynamo.reset()
    res = run_in_process(compose_cfg(*args, "compile=true"), tmp_path / "compiled")
    eager, compiled = _losses(tmp_path / "eager"), _losses(tmp_path / "compiled")
    print(f"eager {eager}\ncompiled {compiled}")
    assert res["finished"] and len(compiled) == len(eager) == 3
    np.testing.assert_allclose(compiled, eager, rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------- kill -9 and resume on the GPU
def test_kill_and_resume_on_the_gpu_is_exact(tmp_path):
    args = [*TINY, *PROCEDURAL, "strategy=gift_multitask", "benchmark.domains=[digits,signs]", "optim.epochs=3",
            "checkpoint_every=1", "device=cuda", "num_workers=2"]  # pinned memory: loader_kwargs on CUDA
    _, _, reference, killed = kill_and_resume(args, tmp_path)
    with np.load(reference / "predictions.npz") as a, np.load(killed / "predictions.npz") as b:
        assert a.files == b.files
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert _losses(killed) == _losses(reference)
    # the parameters: reported (bitwise equality also needs deterministic kernels, which cuDNN's autotuner
    # does not promise across processes); the numbers above are asserted exactly
    pa = torch.load(reference / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")["model"]
    pb = torch.load(killed / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")["model"]
    diff = max(((pa[k].float() - pb[k].float()).abs().max().item() for k in pa
                if torch.is_tensor(pa[k]) and pa[k].is_floating_point()), default=0.0)
    print(f"max |parameter difference| uninterrupted vs killed and resumed: {diff:.3e}")


# ---------------------------------------------------------------------- torchrun with NCCL
def _torchrun(run_dir, *args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", str(REPO / "run.py"),
           *args, "distributed=true", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, cwd=REPO, env={**env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_torchrun_one_rank_nccl_equals_gloo(tmp_path):
    args = [*TINY, *PROCEDURAL, "strategy=linear_multitask", "strategy.protocol=joint", "tf32=false",
            "benchmark.domains=[digits,signs]", "optim.batch_size=16", "num_workers=0"]
    nccl, gloo = tmp_path / "nccl", tmp_path / "gloo"
    on_nccl = _torchrun(nccl, *args, "device=cuda")
    on_gloo = _torchrun(gloo, *args, "device=cpu")
    assert "distributed: 1 ranks, backend nccl" in on_nccl.stdout + on_nccl.stderr
    assert "distributed: 1 ranks, backend gloo" in on_gloo.stdout + on_gloo.stderr
    a = torch.load(gloo / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")["model"]
    b = torch.load(nccl / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")["model"]
    trained = [k for k in a if torch.is_tensor(a[k]) and k.startswith("classifiers")]
    assert len(trained) == 4 and a.keys() == b.keys()
    for k in trained:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")
    ra, rb = results(gloo), results(nccl)
    assert rb["finished"] and len(rb["accuracy_matrix"][0]) == 2
    print(f"average accuracy: nccl {rb['average_accuracy']}, gloo {ra['average_accuracy']}")

