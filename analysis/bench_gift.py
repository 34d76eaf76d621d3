"""GIFT speed, measured against baselines in the same run (ratios, not absolute targets).

    python analysis/bench_gift.py                  # the project's small ViT at 32 px (CPU)
    python analysis/bench_gift.py --model vit_b    # ViT-B/16 at 224 px (slow on CPU; meant for a GPU)

Reports, per configuration:
- training step time of GIFT (paca, linear), LoRA and the linear probe, as a ratio to the linear probe;
- batched generation (one call for all layers) against per-layer generation;
- eval forward with the cached ΔW against regenerating it every call, and against the merged plain model.
"""
from __future__ import annotations

import argparse
import copy
import time

import timm
import torch
import torch.nn.functional as F

from gift_cl import GiftConfig, get_gift_model
from gift_cl.injection import freeze_backbone
from gift_cl.lora import LoraModel
from gift_cl.optim import OptimConfig, build_optimizer

MODELS = {
    "small": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4), 32),
    "vit_b": ("vit_base_patch16_224", dict(), 224),
}


def timed(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def train_step_time(model, x, y, repeats):
    opt = build_optimizer(model, OptimConfig(lr=1e-3))
    model.train()

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return timed(step, repeats)


def linear_probe(model):
    freeze_backbone(model, train_head=True)
    return model


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(MODELS), default="small")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    name, kwargs, size = MODELS[a.model]
    torch.manual_seed(0)
    base = timm.create_model(name, pretrained=False, num_classes=10, **kwargs).to(a.device)
    x = torch.randn(a.batch_size, 3, size, size, device=a.device)
    y = torch.randint(0, 10, (a.batch_size,), device=a.device)

    methods = {
        "linear probe": linear_probe(copy.deepcopy(base)),
        "lora r8 proj": LoraModel(copy.deepcopy(base)),
        "gift linear r16": get_gift_model(copy.deepcopy(base), GiftConfig.linear()),
        "gift paca d'48x4": get_gift_model(copy.deepcopy(base), GiftConfig.paca()),
    }
    print(f"{name} {kwargs or ''} batch {a.batch_size} on {a.device}")
    ref = None
    print(f"{'method':<20}{'train step s':>14}{'× linear probe':>16}")
    for label, model in methods.items():
        t = train_step_time(model.to(a.device), x, y, a.repeats)
        ref = ref or t
        print(f"{label:<20}{t:>14.4f}{t / ref:>16.2f}")

    print("\nresidual generation (all target layers)")
    for label in ("gift linear r16", "gift paca d'48x4"):
        gift = methods[label]
        key = next(iter(gift.groups))
        gen, weights = gift.generators[key], gift.target_weights(key)
        with torch.no_grad():
            batched = timed(lambda: gen(weights), a.repeats)
            per_layer = timed(lambda: [gen(weights[i : i + 1]) for i in range(len(weights))], a.repeats)
        print(f"{label:<20} batched {batched * 1e3:8.2f} ms   per layer {per_layer * 1e3:8.2f} ms   "
              f"ratio {per_layer / batched:5.2f}×")

    print("\neval forward (no grad)")
    gift = methods["gift paca d'48x4"].eval()
    merged = gift.merged_copy().eval()
    with torch.no_grad():
        cached = timed(lambda: gift(x), a.repeats)
        fresh = timed(lambda: (gift._eval_cache.clear(), gift(x)), a.repeats)
        plain = timed(lambda: merged(x), a.repeats)
    print(f"merged plain model {plain * 1e3:8.2f} ms (1.00×)   cached ΔW {cached * 1e3:8.2f} ms ({cached / plain:.2f}×)   "
          f"regenerated ΔW {fresh * 1e3:8.2f} ms ({fresh / plain:.2f}×)")


if __name__ == "__main__":
    main()
