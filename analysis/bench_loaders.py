"""Throughput of the real-benchmark loaders on realistic synthetic folders.

Writes each benchmark's on-disk format into a temporary directory at a realistic image size
(VDD: 72 px shorter side JPEGs; VTAB-1k: 400x300 JPEGs resized to 224; FGVC: 500x375 JPEGs,
Resize(256) + RandomCrop(224); 5-datasets: CIFAR-10 arrays and 28 px notMNIST PNGs at 32 px),
then prints, per loader:

* the load time per image with and without ``verify_images`` (the load-time decode check's cost), and
* images/s of a DataLoader pass (batch 32, steady state: second epoch, persistent workers)
  for ``num_workers`` 0 and 2, with and without ``cache_decoded``.

    python analysis/bench_loaders.py [--n 500] [--workers 0 2]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import tempfile
import time
from functools import partial

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from gift_cl.data.fgvc import load_fgvc
from gift_cl.data.five_datasets import load_five_datasets
from gift_cl.data.vdd import load_vdd
from gift_cl.data.vtab import load_vtab

RNG = np.random.default_rng(0)


def photo(w: int, h: int, grey: bool = False) -> Image.Image:
    """A smooth random image with mild noise: JPEG-encodes and decodes like a photo, unlike noise."""
    c = 1 if grey else 3
    low = RNG.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), c), dtype=np.uint8)
    img = np.asarray(Image.fromarray(low.squeeze(-1) if grey else low).resize((w, h), Image.Resampling.BILINEAR), np.int16)
    img = np.clip(img + RNG.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def save(img: Image.Image, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, quality=90) if path.endswith(".jpg") else img.save(path)


# ----------------------------------------------------------------------------- folder writers
def write_vdd(root: str, n: int, classes: int = 10) -> None:
    offset = 4 * 10_000_000 + 1  # dtd's category ids
    cats = [{"id": offset + k, "name": str(k)} for k in range(classes)]
    os.makedirs(os.path.join(root, "annotations"))
    for split, count in (("train", n), ("val", n // 5)):
        images, anns = [], []
        for i in range(count):
            w = int(RNG.integers(72, 120))
            rel = f"data/dtd/{split}/{i:07d}.jpg"
            save(photo(w, 72), os.path.join(root, rel))
            images.append({"id": i, "file_name": rel, "width": w, "height": 72})
            anns.append({"image_id": i, "category_id": offset + i % classes})
        with open(os.path.join(root, "annotations", f"dtd_{split}.json"), "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": cats}, f)


def write_vtab(root: str, n: int, classes: int = 10) -> None:
    task = os.path.join(root, "eurosat")
    lines: dict[str, list[str]] = {}
    for split, count in (("train800", n), ("val200", n // 5)):
        lines[split] = []
        for i in range(count):
            rel = f"images/{split}/{i:06d}.jpg"
            save(photo(400, 300), os.path.join(task, rel))
            lines[split].append(f"{rel} {i % classes}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    lines["test"] = lines["val200"]
    for split, rows in lines.items():
        with open(os.path.join(task, f"{split}.txt"), "w") as f:
            f.write("\n".join(rows) + "\n")


def write_fgvc(root: str, n: int, classes: int = 10) -> None:
    for split, count in (("train", n), ("val", n // 5), ("test", n // 5)):
        mapping = {}
        for i in range(count):
            rel = f"{i % classes + 1:03d}.class/{split}_{i:06d}.jpg"
            save(photo(500, 375), os.path.join(root, "images", rel))
            mapping[rel] = f"{i % classes + 1:03d}"
        with open(os.path.join(root, f"{split}.json"), "w") as f:
            json.dump(mapping, f)


def write_five(root: str, n: int) -> None:
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    per = n // 5
    for name, count in [(f"data_batch_{b}", per) for b in range(1, 6)] + [("test_batch", per)]:
        data = np.stack([np.asarray(photo(32, 32)) for _ in range(count)]).transpose(0, 3, 1, 2).reshape(count, -1)
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump({"data": data, "labels": [i % 10 for i in range(count)]}, f)
    for split, count in (("train", n), ("test", n // 5)):
        for i in range(count):
            letter = "ABCDEFGHIJ"[i % 10]
            save(photo(28, 28, grey=True), os.path.join(root, "notMNIST", split, letter, f"{i:06d}.png"))


# ----------------------------------------------------------------------------- measurements
def load_time(load, n_images: int, **kwargs) -> float:
    """Milliseconds per listed image spent in the loader call itself."""
    t = time.perf_counter()
    load(**kwargs)
    return 1000 * (time.perf_counter() - t) / n_images


def images_per_s(dataset, workers: int, batch_size: int = 32) -> float:
    """Steady-state DataLoader throughput: time the second epoch (worker start-up excluded)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        persistent_workers=workers > 0)
    for _ in range(2):  # the second epoch is timed: workers are warm
        t = time.perf_counter()
        n = sum(len(y) for _, y in loader)
        dt = time.perf_counter() - t
    return n / dt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="training images per benchmark")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("gift_cl.data").setLevel(logging.ERROR)  # "N classes, official has M" is expected here
    with tempfile.TemporaryDirectory() as tmp:
        cases = {
            "vdd (native 64 px)": (write_vdd, lambda r, **k: load_vdd(r, domains=["dtd"], transform="native", **k)),
            "vdd (resize 224)": (write_vdd, lambda r, **k: load_vdd(r, domains=["dtd"], transform="resize", **k)),
            "vtab (400x300 -> 224)": (write_vtab, lambda r, **k: load_vtab(r, "eurosat", **k)),
            "fgvc (500x375 -> 224 crop)": (write_fgvc, lambda r, **k: load_fgvc(r, "cub", **k)),
            "5-datasets cifar10 (32 px)": (write_five, lambda r, **k: load_five_datasets(r, order=["cifar10"], **k)),
            "5-datasets notMNIST (32 px)": (write_five, lambda r, **k: load_five_datasets(r, order=["notmnist"], **k)),
        }
        written = {}
        header = " ".join(f"{f'w={w} img/s':>10s}" for w in args.workers)
        print(f"{'loader':30s} {'load ms/img':>22s} {'cache':>6s} {header}")
        for name, (write, load) in cases.items():
            root = os.path.join(tmp, write.__name__)
            if root not in written:
                write(root, args.n)
                written[root] = True
            n_listed = int(args.n * 1.2)
            t_verify = load_time(partial(load, root), n_listed, verify_images=True)
            t_plain = load_time(partial(load, root), n_listed, verify_images=False)
            for cache in (False, True):
                task = load(root, verify_images=False, cache_decoded=cache, image_size=224)[0]
                rates = [images_per_s(task.train, w) for w in args.workers]
                timing = f"{t_plain:.3f} / {t_verify:.3f} verify" if not cache else ""
                print(f"{name:30s} {timing:>22s} {str(cache):>6s} " + " ".join(f"{r:10.0f}" for r in rates), flush=True)


if __name__ == "__main__":
    main()
