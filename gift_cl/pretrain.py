"""Pretrain the project's small ViT on the held-out procedural *upstream* domains.

    python -m gift_cl.pretrain                       # reproduces gift_cl/assets/vit_procedural.safetensors

The upstream domains never appear downstream, so the backbone plays the role ImageNet pretraining
plays for ViT-B: generic features that downstream fine-tuning adapts. The classes of all upstream
domains form one label space; the head is dropped from the saved checkpoint (timm re-creates it per
task), and weights are stored in fp16 to keep the shipped file small.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from .backbones import asset_path
from .checkpoint import save_safetensors, write_json
from .data import procedural

ARCH = "vit_tiny_patch16_224"
ARCH_KWARGS = dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4)


def upstream_tensors(n_per_domain: int, split: str, seed: int, image_size: int):
    images, labels, offset = [], [], 0
    for domain in procedural.UPSTREAM:
        x, y = procedural.generate(domain, n_per_domain, split=split, seed=seed, image_size=image_size)
        images.append(x)
        labels.append(y + offset)
        offset += procedural.DOMAINS[domain].num_classes
    x = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).float().div_(255).sub_(0.5).div_(0.5)
    return x, torch.from_numpy(np.concatenate(labels)).long(), offset


def augment(x: torch.Tensor, pad: int = 3) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (reflect-padded crop), batched on the tensor."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad,) * 4, mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,))
    return padded[:, :, dy : dy + h, dx : dx + w]


def evaluate(model, x, y, batch_size=512) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += (model(x[i : i + batch_size]).argmax(-1) == y[i : i + batch_size]).sum().item()
    model.train()
    return correct / len(x)


def pretrain(out: str, epochs: int, n_per_domain: int, batch_size: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    x_train, y_train, num_classes = upstream_tensors(n_per_domain, "train", seed, ARCH_KWARGS["img_size"])
    x_test, y_test, _ = upstream_tensors(max(200, n_per_domain // 10), "test", seed, ARCH_KWARGS["img_size"])
    model = timm.create_model(ARCH, pretrained=False, num_classes=num_classes, **ARCH_KWARGS)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True, drop_last=True)
    total = epochs * len(loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.1)
    t0 = time.time()
    history = []
    with tqdm(total=total, desc="pretrain upstream ViT") as bar:
        for epoch in range(epochs):
            for xb, yb in loader:
                loss = F.cross_entropy(model(augment(xb)), yb, label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
            history.append({"epoch": epoch + 1, "upstream_test_acc": evaluate(model, x_test, y_test)})
            bar.write(json.dumps(history[-1]))
    state = {k: v.half() for k, v in model.state_dict().items() if not k.startswith("head.")}
    meta = {"arch": ARCH, "arch_kwargs": json.dumps(ARCH_KWARGS), "upstream": ",".join(procedural.UPSTREAM),
            "procedural_version": str(procedural.VERSION), "epochs": str(epochs), "seed": str(seed)}
    save_safetensors(state, out, metadata=meta)
    report = {**meta, "history": history, "wall_time_s": time.time() - t0, "num_upstream_classes": num_classes}
    write_json(report, str(out).rsplit(".", 1)[0] + ".json")
    return report


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=asset_path("vit_procedural.safetensors"))
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--n-per-domain", type=int, default=5000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    report = pretrain(a.out, a.epochs, a.n_per_domain, a.batch_size, a.lr, a.seed)
    print(json.dumps(report["history"][-1]), f"{report['wall_time_s']:.0f}s ->", a.out)


if __name__ == "__main__":
    main()
