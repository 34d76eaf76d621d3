"""Pretrain the project's small ViT offline, on images that formulas make.

    python -m gift_cl.pretrain --samples 3000000                        # CPU: resumable, run in the background
    python -m gift_cl.pretrain --samples 30000000 --device cuda --batch-size 1024 --time-limit 530   # a GPU

Formula-driven supervised pretraining (FractalDB, VisualAtom): IFS fractals and radial-contour atoms
(``gift_cl.data.formula``, rendered in torch on the training device) with one head per label: the category
(1,000 by default) and the nuisance attributes (hue, rotation, scale, position), plus the procedural
*upstream* domains (``gift_cl.data.procedural.UPSTREAM``, 74 classes) on their own head for a quarter of
every batch. The decathlon domains and Fashion-MNIST never appear: they are the downstream tests.

Output (``--out``, default ``gift_cl/assets/vit_formula``): ``<out>.safetensors`` (the backbone without its
heads, fp16) and ``<out>.json`` (the model card: data and generator versions, samples, steps, wall time,
hardware, the upstream accuracy curve, the git commit, the input size and normalisation). Both are rewritten
every ``--checkpoint-every`` seconds, with the full training state in ``<out>.state.pt``; the same command
resumes from it (``--resume``), so a run cut off at a time limit keeps its weights and can go on.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .atomic import save_safetensors, save_torch, write_json
from .backbones import asset_path
from .checkpoint import CheckpointError
from .data import formula, procedural

# The backbone every default run uses: ViT with patch 4 at 32 px (64 tokens), width 128, 6 blocks.
ARCH = "vit_tiny_patch16_224"
ARCH_KWARGS: dict[str, Any] = dict(img_size=32, patch_size=4, embed_dim=128, depth=6, num_heads=4)


class DataConfig(TypedDict):
    image_size: int
    mean: list[float]
    std: list[float]


DATA_CONFIG: DataConfig = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
STATE_FORMAT = "gift_cl.pretrain_state"
ATTRIBUTE_WEIGHT = 0.25  # each attribute head's loss weight (the category and upstream heads weigh 1)
LAYOUT_WEIGHT = 4.0  # the layout head's BCE (mean over 64 cells, ~0.2 once learnt) against ~1-5 for the others


class PretrainModel(nn.Module):
    """The backbone (timm ViT, no classifier) and one linear head per label on its pooled [CLS] feature."""

    def __init__(self, heads: dict[str, int]):
        super().__init__()
        self.backbone = timm.create_model(ARCH, pretrained=False, num_classes=0, **ARCH_KWARGS)
        assert isinstance(self.backbone, VisionTransformer)  # create_model is typed nn.Module; ARCH is a ViT
        self.heads = nn.ModuleDict({k: nn.Linear(self.backbone.num_features, n) for k, n in heads.items()})
        for head in self.heads.values():
            assert isinstance(head, nn.Linear)  # ModuleDict iterates as nn.Module
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.backbone(x)
        return {k: head(feats) for k, head in self.heads.items()}


class UpstreamPool:
    """The procedural upstream domains as one 74-class label space, held in memory, randomly translated."""

    def __init__(self, n_per_domain: int, split: str, seed: int, size: int, device):
        images, labels, offset = [], [], 0
        for domain in procedural.UPSTREAM:
            x, y = procedural.generate(domain, n_per_domain, split=split, seed=seed, image_size=size)
            images.append(x)
            labels.append(y + offset)
            offset += procedural.DOMAINS[domain].num_classes
        self.images = torch.from_numpy(np.concatenate(images)).permute(0, 3, 1, 2).contiguous().to(device)
        self.labels = torch.from_numpy(np.concatenate(labels)).long().to(device)
        self.num_classes = offset

    def batch(self, n: int, g: torch.Generator, pad: int = 3):
        idx = torch.randint(0, len(self.labels), (n,), generator=g, device=self.labels.device)
        x = self.images[idx].float().div_(255)
        h = x.shape[-1]
        x = F.pad(x, (pad,) * 4, mode="reflect")
        dx, dy = torch.randint(0, 2 * pad + 1, (2,), generator=g, device=x.device).tolist()
        return x[:, :, dy:dy + h, dx:dx + h], self.labels[idx]


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x - 0.5) / 0.5


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=Path(__file__).parent,
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), {os.cpu_count()} CPU cores"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU: {cpu}, {torch.get_num_threads()} torch threads"


def _lr_at(step: int, total: int, warmup: int, peak: float, floor: float = 1e-6, shortened: dict | None = None) -> float:
    """Linear warm-up, then a cosine from ``peak`` to ``floor`` at ``total``. A schedule ``shortened`` at a
    step goes on from the learning rate it had there along a cosine to ``floor`` at the new end."""
    if shortened and step >= shortened["at_step"]:
        t = (step - shortened["at_step"]) / max(1, shortened["total_steps"] - shortened["at_step"])
        return floor + (shortened["lr"] - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


class Pretraining:
    """One pretraining run: its data, model, optimiser, schedule, evaluation and model card."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.out = Path(args.out)
        self.state_path = self.out.with_suffix(".state.pt")
        spec = formula.FormulaSpec(args.n_fractal, args.n_atom, args.data_seed)
        self.formula = formula.FormulaImages(spec, DATA_CONFIG["image_size"], self.device)
        size = DATA_CONFIG["image_size"]
        self.upstream = UpstreamPool(args.upstream_per_domain, "train", args.data_seed, size, self.device)
        self.upstream_test = UpstreamPool(max(1, args.val_size // 4), "test", args.data_seed, size, self.device)
        heads = {**self.formula.heads, "upstream": self.upstream.num_classes}
        torch.manual_seed(args.seed)
        self.model = PretrainModel(heads).to(self.device)
        self.forward = torch.compile(self.model) if args.compile else self.model
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.model.named_parameters():
            (no_decay if p.ndim <= 1 or name.endswith((".pos_embed", ".cls_token")) else decay).append(p)
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.999))
        self.total_steps = max(1, math.ceil(args.samples / args.batch_size))
        self.warmup = max(1, int(0.03 * self.total_steps))
        self.step, self.wall = 0, 0.0
        self.history: list[dict[str, Any]] = []
        # {"at_step", "lr", "total_steps"} once --shorten-to has cut the schedule
        self.shortened: dict[str, Any] | None = None
        # a fixed held-out formula set from its own generator: the accuracy curve is comparable across checkpoints
        g = torch.Generator(self.device).manual_seed(10_000 + args.data_seed)
        self.val_x, self.val_y = self.formula.batch(args.val_size, g)

    # --------------------------------------------------------------------------- state
    def state_dict(self) -> dict:
        return {"format": STATE_FORMAT, "model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "step": self.step, "wall": self.wall, "history": json.dumps(self.history),
                "args": json.dumps(self._identity()), "shortened": json.dumps(self.shortened)}

    def _identity(self) -> dict:
        """What must match for a resume to continue the same run."""
        a = self.args
        return {k: getattr(a, k) for k in ("samples", "batch_size", "lr", "weight_decay", "n_fractal", "n_atom",
                                             "upstream_fraction", "upstream_per_domain", "seed", "data_seed")}

    def try_resume(self) -> bool:
        if not self.state_path.is_file():
            return False
        try:
            state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        except Exception as err:  # noqa: BLE001 (torch.load's zip, pickle and I/O errors: one message)
            raise CheckpointError(f"{self.state_path}: not a readable pretraining state ({type(err).__name__}); "
                                  f"delete it to start over") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{self.state_path}: not a gift_cl pretraining state")
        saved = json.loads(state["args"])
        diff = {k: (saved.get(k), v) for k, v in self._identity().items() if saved.get(k) != v}
        if diff:
            raise CheckpointError(f"{self.state_path} was written with other settings {diff} (saved, now); "
                                  f"pass the same settings or another --out")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.step, self.wall, self.history = int(state["step"]), float(state["wall"]), json.loads(state["history"])
        self.shortened = json.loads(state.get("shortened", "null"))
        self._shorten()
        return True

    def _shorten(self) -> None:
        """``--shorten-to``: end the schedule earlier than ``--samples`` planned, from the current step on."""
        want = self.args.shorten_to
        if want is None:
            return
        steps = math.ceil(want / self.args.batch_size)
        if self.shortened is not None:
            if self.shortened["total_steps"] != steps:
                raise CheckpointError(f"{self.state_path}: the schedule was already shortened to "
                                      f"{self.shortened['total_steps']} steps; pass --shorten-to "
                                      f"{self.shortened['total_steps'] * self.args.batch_size} or leave it out")
            return
        if not self.step < steps < self.total_steps:
            raise CheckpointError(f"--shorten-to {want}: must end after the saved step {self.step} "
                                  f"({self.step * self.args.batch_size} samples) and before the planned "
                                  f"{self.total_steps * self.args.batch_size}")
        self.shortened = {"at_step": self.step, "total_steps": steps, "planned_steps": self.total_steps,
                          "lr": _lr_at(self.step, self.total_steps, self.warmup, self.args.lr)}

    # --------------------------------------------------------------------------- train
    def _batch(self, step: int):
        """The batch of a step is a function of (seed, step) only: a resumed run sees the same data."""
        g = torch.Generator(self.device).manual_seed(self.args.data_seed * 1_000_003 + step)
        n_up = int(round(self.args.batch_size * self.args.upstream_fraction))
        x, labels = self.formula.batch(self.args.batch_size - n_up, g)
        xu, yu = self.upstream.batch(n_up, g)
        labels = {k: torch.cat([v, torch.full((n_up, *v.shape[1:]), formula.IGNORE if k != "layout" else float("nan"),
                                              dtype=v.dtype, device=self.device)]) for k, v in labels.items()}
        labels["upstream"] = torch.cat([torch.full((len(x),), formula.IGNORE, dtype=torch.long, device=self.device), yu])
        return _normalise(torch.cat([x, xu])), labels

    def loss(self, logits: dict, labels: dict) -> torch.Tensor:
        """Cross-entropy of every classification head (ignoring images without that label), plus the layout
        head's binary cross-entropy against the soft coverage of each grid cell."""
        total: torch.Tensor | float = 0.0
        for k, out in logits.items():
            y = labels[k]
            if k == "layout":
                keep = ~torch.isnan(y[:, 0])
                if keep.any():
                    total = total + LAYOUT_WEIGHT * F.binary_cross_entropy_with_logits(out[keep], y[keep])
            elif (y != formula.IGNORE).any():
                weight = ATTRIBUTE_WEIGHT if k in formula.ATTRIBUTE_CLASSES else 1.0
                smooth = 0.1 if k in ("category", "upstream") else 0.0
                total = total + weight * F.cross_entropy(out, y, ignore_index=formula.IGNORE, label_smoothing=smooth)
        assert isinstance(total, torch.Tensor)  # every batch labels some head (category or upstream)
        return total

    @torch.no_grad()
    def evaluate(self) -> dict:
        self.model.eval()
        acc = {}
        for _name, x, labels in (("formula", _normalise(self.val_x), self.val_y),):
            logits: dict[str, list[torch.Tensor]] = {k: [] for k in self.model.heads}
            for i in range(0, len(x), 512):
                for k, v in self.model(x[i:i + 512]).items():
                    logits[k].append(v)
            for k, y in labels.items():
                if k == "layout":  # mean absolute error of the predicted cell coverage
                    acc["layout_mae"] = round(float((torch.cat(logits[k]).sigmoid() - y).abs().mean()), 4)
                    continue
                keep = y != formula.IGNORE
                pred = torch.cat(logits[k]).argmax(-1)
                acc[k] = round(float((pred[keep] == y[keep]).float().mean()), 4)
        xu, yu = _normalise(self.upstream_test.images.float() / 255), self.upstream_test.labels
        pred = torch.cat([self.model(xu[i:i + 512])["upstream"].argmax(-1) for i in range(0, len(xu), 512)])
        acc["upstream"] = round(float((pred == yu).float().mean()), 4)
        self.model.train()
        return acc

    def save(self, final: bool = False) -> dict:
        state = {k: v.detach().half() for k, v in self.model.backbone.state_dict().items()}
        card = self.model_card(final)
        meta = {"arch": ARCH, "arch_kwargs": json.dumps(ARCH_KWARGS), "formula_version": str(formula.VERSION),
                "samples_seen": str(self.step * self.args.batch_size), "finished": str(final)}
        save_safetensors(state, self.out.with_suffix(".safetensors"), metadata=meta)
        write_json(card, self.out.with_suffix(".json"))
        if not final:
            save_torch(self.state_dict(), self.state_path)
        return card

    def model_card(self, final: bool) -> dict:
        a = self.args
        return {
            "name": self.out.stem,
            "arch": ARCH,
            "arch_kwargs": json.dumps(ARCH_KWARGS),
            "data_config": DATA_CONFIG,
            "finished": final,
            "pretraining": {
                "method": "formula-driven supervised pretraining, multi-head (category + attributes + upstream)",
                "formula": {"version": formula.VERSION, "n_fractal": a.n_fractal, "n_atom": a.n_atom,
                            "data_seed": a.data_seed, "attribute_classes": formula.ATTRIBUTE_CLASSES},
                "upstream": {"domains": procedural.UPSTREAM, "procedural_version": procedural.VERSION,
                             "n_per_domain": a.upstream_per_domain, "fraction_of_batch": a.upstream_fraction},
                "held_out": "the procedural decathlon domains and Fashion-MNIST (downstream tests) never appear",
                "samples_planned": self.total_steps * a.batch_size,
                "samples_seen": self.step * a.batch_size,
                "steps": self.step,
                "batch_size": a.batch_size,
                "optimizer": {"name": "AdamW", "lr": a.lr, "weight_decay": a.weight_decay, "betas": [0.9, 0.999],
                              "schedule": self._schedule_text()},
                "seed": a.seed,
                "wall_time_s": round(self.wall, 1),
                "hardware": _hardware(self.device),
                "torch": torch.__version__,
                "timm": timm.__version__,
                "git_commit": _git_commit(),
                "command": "python -m gift_cl.pretrain " + " ".join(sys.argv[1:]),
            },
            "accuracy_curve": self.history,
        }

    def _schedule_text(self) -> str:
        if not self.shortened:
            return f"linear warm-up {self.warmup} steps, cosine to 1e-6 at step {self.total_steps}"
        cut = self.shortened
        return (f"linear warm-up {self.warmup} steps, cosine to 1e-6 at step {cut['planned_steps']}; shortened at "
                f"step {cut['at_step']} (lr {cut['lr']:.3g}): cosine from there to 1e-6 at step {cut['total_steps']}")

    def run(self) -> dict:
        a = self.args
        resumed = self.try_resume()
        if a.shorten_to is not None and not resumed:
            raise CheckpointError("--shorten-to cuts the schedule of a saved run: use it with --resume")
        if self.shortened:
            self.total_steps = self.shortened["total_steps"]
        print(f"pretrain: {'resuming at step ' + str(self.step) if resumed else 'starting'}; "
              f"{self.total_steps} steps of {a.batch_size} on {_hardware(self.device)}", flush=True)
        self.model.train()
        start = time.time()
        wall0 = self.wall
        last_save = last_print = time.time()
        eval_every = max(1, a.eval_every // a.batch_size)
        deadline = start + a.time_limit if a.time_limit else None
        stop_at = self.step + a.stop_after if a.stop_after else None
        while self.step < self.total_steps:
            lr = _lr_at(self.step, self.total_steps, self.warmup, a.lr, shortened=self.shortened)
            for group in self.opt.param_groups:
                group["lr"] = lr
            x, labels = self._batch(self.step)
            loss = self.loss(self.forward(x), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"pretrain: non-finite loss at step {self.step} (lr {lr:.2e})")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            loss_value = loss.item()
            self.step += 1
            self.wall = wall0 + time.time() - start
            if self.step % eval_every == 0 or self.step == self.total_steps:
                self.history.append({"step": self.step, "samples": self.step * a.batch_size,
                                     "wall_time_s": round(self.wall, 1), "loss": round(loss_value, 4),
                                     **self.evaluate()})
                print(json.dumps(self.history[-1]), flush=True)
            now = time.time()
            if now - last_print > 30:
                rate = self.step * a.batch_size / max(self.wall, 1e-9)
                print(f"step {self.step}/{self.total_steps} loss {loss_value:.3f} lr {lr:.2e} "
                      f"{rate:.0f} img/s", flush=True)
                last_print = now
            if now - last_save > a.checkpoint_every:
                self.save()
                last_save = time.time()
            if (deadline and now > deadline) or (stop_at and self.step >= stop_at and self.step < self.total_steps):
                print(f"pretrain: stopped at step {self.step} of {self.total_steps}; state saved, run again with "
                      f"--resume to continue", flush=True)
                return self.save()
        card = self.save(final=True)
        save_torch(self.state_dict(), self.state_path)  # kept: the same command again finds the run finished
        return card


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=asset_path("vit_formula"), help="output path without suffix")
    p.add_argument("--samples", type=float, default=3e6, help="training images in all (sets the schedule)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--n-fractal", type=int, default=500)
    p.add_argument("--n-atom", type=int, default=500)
    p.add_argument("--upstream-fraction", type=float, default=0.25)
    p.add_argument("--upstream-per-domain", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0, help="initialisation")
    p.add_argument("--data-seed", type=int, default=0, help="category tables and data stream")
    p.add_argument("--val-size", type=int, default=2048)
    p.add_argument("--eval-every", type=int, default=100_000, help="samples between accuracy-curve points")
    p.add_argument("--checkpoint-every", type=float, default=60.0, help="seconds between saved checkpoints")
    p.add_argument("--time-limit", type=float, default=None, help="stop (state saved) after this many seconds")
    p.add_argument("--stop-after", type=int, default=None, help="stop (state saved) after this many steps of this call")
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward (~15 %% faster on CPU)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--resume", action="store_true", help="continue from <out>.state.pt (otherwise it must not exist)")
    p.add_argument("--shorten-to", type=float, default=None,
                   help="with --resume: end the schedule at this many samples instead of --samples; the learning "
                        "rate goes on from its current value along a cosine to 1e-6 there (the card records it)")
    a = p.parse_args(argv)
    a.samples = int(a.samples)
    a.shorten_to = None if a.shorten_to is None else int(a.shorten_to)
    if not 0 <= a.upstream_fraction < 1:
        p.error("--upstream-fraction must be in [0, 1)")
    return a


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    state = Path(args.out).with_suffix(".state.pt")
    if state.exists() and not args.resume:
        sys.exit(f"error: {state} exists: pass --resume to continue that run, or another --out")
    card = Pretraining(args).run()
    last = card["accuracy_curve"][-1] if card["accuracy_curve"] else {}
    print(json.dumps(last), f"{card['pretraining']['wall_time_s']:.0f}s ->", Path(args.out).with_suffix(".safetensors"))


if __name__ == "__main__":
    main()
