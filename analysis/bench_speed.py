"""GIFT speed and memory goals, measured side by side in ONE interleaved run; prints ratios.

    python analysis/bench_speed.py                 # ViT-S/16, 224 px, batch 16, fp32 (the CPU reference)
    python analysis/bench_speed.py --quick         # a tiny ViT at 32 px: the same sections in a minute
    python analysis/bench_speed.py --model vit_base_patch16_224 --device cuda --repeats 20
    python analysis/bench_speed.py --model vit_base_patch16_224 --device cuda --precision bf16 --batch-size 64 \
        --sections train gen eval --goals gpu   # the GPU table (analysis/gpu/check.sh runs it)

Every goal is a ratio of two measurements taken in the same run, alternating between the methods round by
round (a round runs one step of every method), so a slow minute on a shared machine hits all methods alike.
Each ratio is the median over rounds of the per-round ratio; the table also gives per-method median times.
On a shared CPU, ``--threads 1`` times with the process's CPU time (``--clock cpu``), which does not count the
time the process waits for a core.

Sections:
  train   one optimiser step (forward, backward, AdamW) of: the frozen-backward floor (backbone frozen, only
          the target layers' biases and the classifier train: the backward must still reach the first target
          layer, as GIFT's does, but there is no residual), GIFT-paca and GIFT-linear (factored residual, and the
          dense ``x ΔWᵀ`` form for reference), gift_cl's LoRA r8, peft LoRA r8 and the official GIFT v2 code
          (when installed), full fine-tuning (every parameter trained), and a 10-head GIFT-paca on batches
          whose samples span 1, 4 and 10 tasks. Times are also given as training images per second.
  memory  peak memory of one step: CUDA ``max_memory_allocated``; on CPU (no allocator statistics) the bytes
          the autograd graph keeps for the backward (distinct storages saved for backward that did not exist
          before the step), which is where the methods differ.
  gen     residual generation for the 12 ViT-B/16 ``attn.proj`` layers (d = 768) in one batched call, no grad:
          the factors (h, ψ) training uses, and the dense ΔW merging uses.
  eval    the merged model (``merge_and_unload``) against plain timm inference: time ratio, and whether a stock
          timm model loaded with the merged weights returns the same logits bit for bit.
  layer   one target layer, forward + backward, dense ``x ΔWᵀ`` against factored ``(x ψ) hᵀ`` over shapes on
          both sides of ``factored_is_cheaper`` (the rule GiftModel's ``residual="auto"`` uses).

Optional baselines (``pip install -e .[bench]`` for peft and the official code's dependencies):
  peft            ``peft.LoraConfig(r=8, target_modules=[<targets>])``, the classifier trained.
  official GIFT   ``gift.gift`` from github.com/savadikarc/gift (its ``gift/`` package). Its setup.py pins
                  timm==0.9.8, so install it without dependencies (``pip install --no-deps <checkout>``) or
                  point ``--official-src`` (or ``$GIFT_OFFICIAL_SRC``) at a checkout's root.
A baseline that cannot be imported is skipped with a message.

Precision: ``--precision bf16`` runs every forward (training and eval) under ``torch.autocast(bfloat16)``, as a run
with ``precision=bf16`` does; the loss is taken in fp32, weights and optimizer state stay fp32, and GIFT's
generator runs with autocast off (as in training). TF32 is off on CUDA unless ``--tf32`` (a run's default,
``tf32=true``: the fp32 matmuls that remain, GIFT's generator among them, use TF32).

Goals: ``--goals speed`` (the default in fp32) checks the CPU time ratios (``GOALS``); ``--goals gpu`` (the default
with bf16) the GPU goals: GIFT-paca ≥ 1.0× peft LoRA r8's images/s and ≤ 1.0× its peak memory, ≥ 0.95× the frozen-backward
floor's images/s, and a 10-task mixed batch ≤ 1.2× a single-task batch's time.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import json
import os
import statistics
import sys
import time
import warnings
from typing import Callable, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
import torch.nn.functional as F
from torch import nn

from gift_cl import GiftConfig, GiftGenerator, LoraModel, get_gift_model
from gift_cl.injection import find_linear_targets
from gift_cl.residual import apply_residual, factored_linear
from gift_cl.tuner import factored_is_cheaper

MODELS = {
    "quick": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3), 32),
}
GOALS = [  # (label, numerator, denominator, target): numerator / denominator ≤ target
    ("GIFT-paca train step / frozen-backward floor", "gift-paca", "floor", 1.03),
    ("GIFT-paca train step / peft LoRA r8", "gift-paca", "peft-lora-r8", 1.00),
    ("GIFT-linear train step / official GIFT v2", "gift-linear", "official-gift-v2", 0.97),
    ("mixed batch, 4 tasks / single task", "mixed-4", "mixed-1", 1.10),
    ("mixed batch, 10 tasks / single task", "mixed-10", "mixed-1", 1.20),
]
# the GPU goals (ViT-B/16, 224 px, bf16, batch 64 on a GPU): (label, numerator, denominator, target, kind)
# kind "speed ≥": images/s ratio = denominator time / numerator time, at least target; "time ≤": time ratio, at most
GPU_GOALS = [
    ("GIFT-paca images/s / peft LoRA r8", "gift-paca", "peft-lora-r8", 1.00, "speed ≥"),
    ("GIFT-paca images/s / frozen-backward floor", "gift-paca", "floor", 0.95, "speed ≥"),
    ("mixed batch, 10 tasks / single task (time)", "mixed-10", "mixed-1", 1.20, "time ≤"),
]


# ------------------------------------------------------------------------------------------ helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter
AMP: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext  # main() sets bf16 autocast


def autocast_factory(precision: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return lambda: torch.autocast(device.type, dtype=dtype)


def interleaved(fns: dict[str, Callable[[], None]], rounds: int, warmup: int, device) -> dict[str, list[float]]:
    """Seconds per call of every function, alternating between them round by round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + rounds):
        for k, fn in fns.items():
            sync(device)
            t0 = clock()
            fn()
            sync(device)
            if r >= warmup:
                times[k].append(clock() - t0)
    return times


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> Optional[float]:
    if num not in times or den not in times or not times[num]:
        return None
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


def load_optional(module: str, src: Optional[str] = None):
    if src and src not in sys.path:
        sys.path.insert(0, src)
    try:
        return importlib.import_module(module), None
    except Exception as e:  # noqa: BLE001 - any import failure means "skip this baseline"
        return None, f"{type(e).__name__}: {e}"


# ------------------------------------------------------------------------------------------ the methods
def floor_model(base: nn.Module, targets) -> nn.Module:
    """Frozen backbone; only the target layers' biases and the classifier train. The backward reaches the
    first target layer (as GIFT's must) but computes no weight gradient beyond a bias reduction."""
    model = copy.deepcopy(base).requires_grad_(False)
    for _, m in find_linear_targets(model, targets):
        m.bias.requires_grad_(True)
    # nn.Module.__getattr__ is typed Tensor | Module; timm models (create_model's nn.Module) define get_classifier()
    model.get_classifier().requires_grad_(True)  # type: ignore[operator]
    return model


def peft_lora(base: nn.Module, targets, rank: int = 8):
    peft, why = load_optional("peft")
    if peft is None:
        return None, why
    cfg = peft.LoraConfig(r=rank, lora_alpha=1, lora_dropout=0.0, target_modules=list(targets))
    model = peft.get_peft_model(copy.deepcopy(base), cfg)
    model.base_model.model.get_classifier().requires_grad_(True)
    return model, None


def full_finetune(base: nn.Module) -> nn.Module:
    """Every parameter trained: the upper bound of the backward's and the optimizer's cost."""
    return copy.deepcopy(base).requires_grad_(True)


def official_gift(base: nn.Module, targets, src: Optional[str], rank: int = 16):
    mod, why = load_optional("gift.gift", src)
    if mod is None:
        return None, why + " (pip install --no-deps <official checkout>, or --official-src)"
    cfg = mod.GIFTConfig(rank=rank, target_modules=[t.replace(".", ":") for t in targets])
    return mod.GIFTWrapperForImageClassification(cfg, copy.deepcopy(base)), None


class Step:
    """One AdamW step of ``model`` on a fixed batch; ``forward(model, x)`` gives the logits."""

    def __init__(self, model: nn.Module, x, y, forward=None):
        self.model, self.x, self.y = model.train(), x, y
        self.forward = forward or (lambda m, x: m(x))
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=1e-4)

    def __call__(self):
        with AMP():
            logits = self.forward(self.model, self.x)
        loss = F.cross_entropy(logits.float(), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def step_memory(step: Step, device: torch.device) -> float:
    """Peak bytes of one step beyond what is allocated before it (CUDA), or the bytes saved for backward (CPU).
    One untimed step first: optimizer state and caches (GIFT's stacked frozen weights) exist before a real step."""
    step()
    step.opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    # Storages alive before the step (parameters, buffers, the input, caches such as the stacked frozen
    # weights GIFT's generator reads) cost nothing extra when the graph keeps a reference to them.
    with warnings.catch_warnings():  # isinstance() on some lazily deprecated torch objects warns
        warnings.simplefilter("ignore")
        existing = {o.untyped_storage().data_ptr() for o in gc.get_objects() if isinstance(o, torch.Tensor)}
    saved: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in existing:
            saved[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), AMP():
        logits = step.forward(step.model, step.x)
    loss = F.cross_entropy(logits.float(), step.y)
    loss.backward()
    step.opt.zero_grad(set_to_none=True)
    return float(sum(saved.values()))


# ------------------------------------------------------------------------------------------ sections
def bench_train(a, base, x, y, device):
    targets = tuple(a.targets)
    steps: dict[str, Step] = {"floor": Step(floor_model(base, targets), x, y)}
    gift = lambda cfg, **kw: get_gift_model(copy.deepcopy(base), cfg, **kw)  # noqa: E731
    paca = GiftConfig.paca(target_modules=targets)
    linear = GiftConfig.linear(target_modules=targets)
    steps["gift-paca"] = Step(gift(paca), x, y)
    steps["gift-linear"] = Step(gift(linear), x, y)
    if not a.no_dense:
        steps["gift-paca-dense"] = Step(gift(paca, residual="dense"), x, y)
        steps["gift-linear-dense"] = Step(gift(linear, residual="dense"), x, y)
    steps["lora-r8"] = Step(LoraModel(copy.deepcopy(base), rank=8, target_modules=targets), x, y)
    if not a.no_full:
        steps["full-ft"] = Step(full_finetune(base), x, y)
    skipped = {}
    model, why = peft_lora(base, targets)
    if model is None:
        skipped["peft-lora-r8"] = why
    else:
        steps["peft-lora-r8"] = Step(model, x, y)
    model, why = official_gift(base, targets, a.official_src)
    if model is None:
        skipped["official-gift-v2"] = why
    else:
        steps["official-gift-v2"] = Step(model, x, y)
    if not a.no_mixed:
        heads = [str(i) for i in range(10)]
        multi = gift(paca, heads=heads)
        b = x.shape[0]
        for k in (1, 4, 10):
            sample_head = (torch.arange(b, device=device) * k) // b  # k contiguous groups, as equal as possible
            sample_head = sample_head[torch.randperm(b, generator=torch.Generator().manual_seed(k)).to(device)]
            fwd = (lambda m, x: m(x, head="0")) if k == 1 else (
                lambda m, x, t=sample_head: m(x, head=heads, sample_head=t))
            steps[f"mixed-{k}"] = Step(multi, x, y, fwd)
    for s in steps.values():
        s.model.to(device)
    for k, why in skipped.items():
        print(f"[skip] {k}: {why}")
    times = interleaved(steps, a.repeats, a.warmup, device)
    memory = {k: step_memory(s, device) for k, s in steps.items() if not k.startswith("mixed")}
    return times, memory


def bench_generation(a, device):
    """ΔW generation for the 12 ViT-B/16 attn.proj layers (768×768), one batched call, no grad."""
    torch.manual_seed(0)
    weights = (torch.randn(12, 768, 768) * 0.02).to(device)
    gens = {"paca": GiftGenerator(GiftConfig.paca(), 768, 768), "linear": GiftGenerator(GiftConfig.linear(), 768, 768)}
    fns = {}
    for name, gen in gens.items():
        gen.to(device)
        nn.init.normal_(gen.heads["0"].recovery.weight, std=0.02)
        fns[f"{name} factors"] = lambda g=gen: g(weights, factored=True)
        fns[f"{name} dense ΔW"] = lambda g=gen: g(weights)
    with torch.no_grad():
        return interleaved(fns, a.gen_repeats, 3, device)


def bench_eval(a, base, x, device):
    """Merged GIFT against plain timm: time ratio, and bitwise equality with a stock timm model."""
    gift = get_gift_model(copy.deepcopy(base), GiftConfig.paca(target_modules=tuple(a.targets))).to(device).eval()
    torch.manual_seed(1)
    with torch.no_grad():
        for gen in gift.generators.values():
            nn.init.normal_(gen.heads["0"].recovery.weight, std=0.02)
    merged = gift.merged_copy().eval()
    stock = copy.deepcopy(base).to(device).eval()
    stock.load_state_dict(merged.state_dict())
    plain = copy.deepcopy(base).to(device).eval()
    with torch.no_grad(), AMP():
        same = torch.equal(merged(x), stock(x))
        times = interleaved({"plain timm": lambda: plain(x), "merged": lambda: merged(x),
                             "unmerged (cached factors)": lambda: gift(x)}, a.repeats, 1, device)
    return times, same


def bench_layers(a, device):
    """One GiftLinear-sized layer, forward + backward: dense x ΔWᵀ against factored (x ψ) hᵀ."""
    shapes = [(64, 64, 16), (64, 64, 32), (64, 64, 48), (64, 64, 64), (192, 192, 48), (192, 192, 96),
              (192, 192, 144), (384, 384, 48), (384, 1536, 48), (768, 768, 48), (768, 768, 192), (768, 768, 384)]
    rows = []
    for d_in, d_out, r in shapes:
        tokens = 4096 if not a.quick else 2048
        torch.manual_seed(0)
        base = nn.Linear(d_in, d_out).to(device).requires_grad_(False)
        x = torch.randn(tokens, d_in, device=device, requires_grad=True)
        h = torch.randn(d_out, r, device=device, requires_grad=True)
        psi = torch.randn(d_in, r, device=device, requires_grad=True)

        # this shape's tensors bound as defaults: each closure keeps the layer it was made for (B023)
        # dense: what a dense step pays: form ΔW (one layer's share), apply it, and back
        def dense(base=base, x=x, h=h, psi=psi):
            apply_residual(base, x, F.linear(h, psi)).sum().backward()

        def folded(base=base, x=x, h=h, psi=psi):  # one head in exact fp32: the forward runs with W + h ψᵀ
            factored_linear(x, base.weight, base.bias, [h], [psi], fold=True).sum().backward()

        def additive(base=base, x=x, h=h, psi=psi):  # mixed-task batches, TF32/bf16: F.linear(x, W, b) + (x ψ) hᵀ
            factored_linear(x, base.weight, base.bias, [h], [psi], fold=False).sum().backward()

        t = interleaved({"dense": dense, "folded": folded, "additive": additive}, max(3, a.repeats), 2, device)
        rows.append(dict(d_in=d_in, d_out=d_out, rank=r, dense_ms=1e3 * statistics.median(t["dense"]),
                         folded=paired_ratio(t, "folded", "dense"), additive=paired_ratio(t, "additive", "dense"),
                         rule_folded=factored_is_cheaper(d_in, d_out, r, True),
                         rule_additive=factored_is_cheaper(d_in, d_out, r, False)))
    return rows


# ------------------------------------------------------------------------------------------ main
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_small_patch16_224", help="a timm name (random init; no download)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="a tiny ViT at 32 px (smoke test of every section)")
    p.add_argument("--targets", nargs="+", default=["attn.proj"])
    p.add_argument("--repeats", type=int, default=5,
                   help="timed rounds per section (after warm-up rounds); 0 with --warmup 0: memory only in 'train'")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--gen-repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--clock", choices=sorted(CLOCK), default=None,
                   help="wall: perf_counter; cpu: process CPU time, robust on a shared machine but only meaningful "
                        "with --threads 1 (default: cpu with --threads 1 on CPU, else wall)")
    p.add_argument("--sections", nargs="+", default=["train", "gen", "eval", "layer"],
                   choices=["train", "gen", "eval", "layer"])
    p.add_argument("--no-dense", action="store_true", help="skip the dense-form reference runs in 'train'")
    p.add_argument("--no-mixed", action="store_true", help="skip the mixed-task batches in 'train'")
    p.add_argument("--no-full", action="store_true", help="skip full fine-tuning in 'train'")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="fp32, or the forward under torch.autocast in bf16/fp16 (loss, weights, optimizer in fp32)")
    p.add_argument("--tf32", action="store_true", help="CUDA: TF32 matmuls, as a run's tf32=true (default: off)")
    p.add_argument("--goals", choices=["speed", "gpu"], default=None,
                   help="speed: the CPU time ratios; gpu: the GPU goals (default: gpu with bf16/fp16, else speed)")
    p.add_argument("--official-src", default=os.environ.get("GIFT_OFFICIAL_SRC"),
                   help="root of a savadikarc/gift checkout (holding its gift/ package)")
    p.add_argument("--json", help="also write every measurement to this file")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    global clock, AMP
    AMP = autocast_factory(a.precision, device)
    a.goals = a.goals or ("speed" if a.precision == "fp32" else "gpu")
    a.clock = a.clock or ("cpu" if device.type == "cpu" and torch.get_num_threads() == 1 else "wall")
    clock = CLOCK[a.clock]
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = a.tf32  # off: fp32 as in the reference
        torch.backends.cudnn.allow_tf32 = a.tf32
    if a.quick:
        name, kwargs, size = MODELS["quick"]
    else:
        name, kwargs, size = a.model, dict(img_size=a.img_size), a.img_size
    torch.manual_seed(0)
    base = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).eval()
    x = torch.randn(a.batch_size, 3, size, size, device=device)
    y = torch.randint(0, 10, (a.batch_size,), device=device)
    gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"{name} {kwargs} batch {a.batch_size} {a.precision} on {gpu_name or device} "
          f"({torch.get_num_threads()} CPU threads), "
          f"targets {a.targets}, {a.clock} clock, torch {torch.__version__}, timm {timm.__version__}")
    report: dict = {"model": name, "img_size": size, "batch_size": a.batch_size, "device": str(device),
                    "gpu": gpu_name, "precision": a.precision, "tf32": a.tf32, "targets": a.targets, "clock": a.clock,
                    "threads": torch.get_num_threads(), "torch": torch.__version__, "cuda": torch.version.cuda,
                    "timm": timm.__version__}

    if "train" in a.sections:
        times, memory = bench_train(a, base, x, y, device)
        ref = "floor"
        print(f"\n== train step ({a.repeats} interleaved rounds after {a.warmup} warm-up) ==")
        print(f"{'method':<20}{'median s':>10}{'min s':>10}{'img/s':>10}{'× floor':>9}   {'memory MB':>10}{'× peft':>8}")
        mem_ref = memory.get("peft-lora-r8") or memory.get("lora-r8")
        for k, ts in times.items():
            mem = memory.get(k)
            mem_s = f"{mem / 2**20:>10.1f}{mem / mem_ref:>8.4f}" if mem is not None else ""
            t_s = (f"{statistics.median(ts):>10.4f}{min(ts):>10.4f}{a.batch_size / statistics.median(ts):>10.1f}"
                   f"{paired_ratio(times, k, ref):>9.3f}" if ts else " " * 39)
            print(f"{k:<20}{t_s}   {mem_s}")
        if "peft-lora-r8" not in memory:
            print("(memory × peft: peft absent, relative to gift_cl's lora-r8)")
        report["train_s"] = times
        report["train_images_per_s"] = {k: a.batch_size / statistics.median(ts) for k, ts in times.items() if ts}
        report["memory_bytes"] = memory
        report["memory_kind"] = "cuda max_memory_allocated" if device.type == "cuda" else "bytes saved for backward"
        if a.goals == "speed":
            goals = [(label, paired_ratio(times, n, d), target) for label, n, d, target in GOALS]
        else:
            goals = []
            for label, n, d, target, kind in GPU_GOALS:
                r = paired_ratio(times, n, d)
                goals.append((label, None if r is None else (1 / r if kind == "speed ≥" else r), target, kind))
        mem_r = memory["gift-paca"] / memory["peft-lora-r8"] if "peft-lora-r8" in memory else None
        goals.append(("GIFT-paca peak memory / peft LoRA r8", mem_r, 1.00))
    else:
        goals = []

    if "gen" in a.sections:
        gen = bench_generation(a, device)
        print(f"\n== residual generation, 12 ViT-B/16 attn.proj layers (768×768), no grad, {a.gen_repeats} rounds ==")
        for k, ts in gen.items():
            print(f"{k:<20}{statistics.median(ts) * 1e3:>9.2f} ms median {min(ts) * 1e3:>9.2f} ms min")
        report["generation_s"] = gen
        goals.append(("ΔW generation, paca, 12 ViT-B layers [ms]", statistics.median(gen["paca factors"]) * 1e3, 20.0))

    if "eval" in a.sections:
        ev, same = bench_eval(a, base, x, device)
        print("\n== eval forward, no grad ==")
        for k, ts in ev.items():
            print(f"{k:<28}{statistics.median(ts):>10.4f} s {a.batch_size / statistics.median(ts):>10.1f} img/s"
                  f"   × plain {paired_ratio(ev, k, 'plain timm'):.3f}")
        print(f"stock timm with the merged weights gives the merged model's logits bit for bit: {same}")
        report["eval_s"], report["merged_equals_stock_timm"] = ev, same
        report["eval_images_per_s"] = {k: a.batch_size / statistics.median(ts) for k, ts in ev.items()}
        goals.append(("merged inference / plain timm", paired_ratio(ev, "merged", "plain timm"), 1.02))

    if "layer" in a.sections:
        rows = bench_layers(a, device)
        print("\n== one layer, forward + backward: factored (x ψ) hᵀ time / dense x ΔWᵀ time ==")
        print(f"{'d_in':>6}{'d_out':>6}{'rank':>6}{'dense ms':>10}{'folded':>9}{'additive':>10}  rule (folded, additive)")
        agree = 0
        for row in rows:
            ok = [(row[p] < 1) == row["rule_" + p] for p in ("folded", "additive")]
            agree += sum(ok)
            rule = ", ".join("factored" if row["rule_" + p] else "dense" for p in ("folded", "additive"))
            print(f"{row['d_in']:>6}{row['d_out']:>6}{row['rank']:>6}{row['dense_ms']:>10.2f}{row['folded']:>9.3f}"
                  f"{row['additive']:>10.3f}  {rule}{'' if all(ok) else '  (disagrees with the measurement)'}")
        print(f"factored_is_cheaper agrees with the measurement in {agree}/{2 * len(rows)} cases")
        report["layers"] = rows

    if goals:
        print("\n== goals (ratio of two measurements in this run) ==")
        for label, value, target, *kind in goals:
            sense = kind[0].split()[-1] if kind else "≤"
            if value is None:
                print(f"{label:<46} {'n/a':>8}  (target {sense} {target}; not measured: a baseline missing or skipped)")
            else:
                met = value >= target if sense == "≥" else value <= target
                print(f"{label:<46} {value:>8.3f}  target {sense} {target:<5} {'met' if met else 'MISSED'}")
        report["goals"] = goals
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return report


if __name__ == "__main__":
    main()
