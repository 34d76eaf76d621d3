"""Sanity table for the procedural domains: is each one learnable, yet not trivial?

For every domain, reports test accuracy against chance of
  * logistic regression on raw pixels: should be far below 100% (the class is structure, not a fixed
    pixel template; for rotation/position-jittered domains it sits near chance),
  * logistic regression on the per-image mean RGB: how much of the class is colour alone (by design
    only gabor100, flowers, signs and up_shapes carry a colour cue),
  * a small CNN trained from scratch for a few epochs on the same images: evidence that the class is
    learnable from the pixels (well above chance) without being solved instantly,
plus the generator's speed on one core.

    python analysis/procedural_sanity.py [--n-train 2000] [--n-test 500] [--size 32] [--epochs 8] [--domains a b ...]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

# one BLAS thread: the machine is shared, and the generation speed column is a one-core number
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gift_cl.data import procedural as P  # noqa: E402
from gift_cl.data.procedural.registry import _balanced_labels, _derive_seed  # noqa: E402


def generation_speed(domain: str, size: int, n: int = 500) -> float:
    """Images per second of the raw generator (no cache), single thread."""
    spec = P.DOMAINS[domain]
    rng = np.random.default_rng(_derive_seed(12345, domain, "train"))
    labels = _balanced_labels(n, spec.num_classes, rng)
    t0 = time.perf_counter()
    spec.generate(labels, rng, size)
    return n / (time.perf_counter() - t0)


def images_labels(domain: str, n: int, split: str, seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``P.generate`` without masks: (images, labels). Its annotation also allows the ``masks=True`` 3-tuple."""
    out = P.generate(domain, n, split=split, seed=seed, image_size=size)
    assert len(out) == 2, "P.generate without masks returns (images, labels)"
    return out


def linear_probe(x_tr, y_tr, x_te, y_te) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_tr)
    clf = LogisticRegression(max_iter=300, C=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter; the accuracy is what we report
        clf.fit(scaler.transform(x_tr), y_tr)
    return float((clf.predict(scaler.transform(x_te)) == y_te).mean())


def cnn_probe(x_tr, y_tr, x_te, y_te, num_classes: int, epochs: int, seed: int = 0) -> float:
    """Test accuracy of a 3-block CNN trained from scratch (Adam, batch 64, no augmentation)."""
    from torch import nn

    torch.manual_seed(seed)
    block = lambda cin, cout: [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]  # noqa: E731
    net = nn.Sequential(*block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes))
    to_t = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # noqa: E731
    xt, yt = to_t(x_tr), torch.from_numpy(y_tr)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=epochs * ((len(xt) + 63) // 64))
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(xt), generator=gen).split(64):
            loss = nn.functional.cross_entropy(net(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(b).argmax(1) for b in to_t(x_te).split(256)])
    return float((pred.numpy() == y_te).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-train", type=int, default=2000)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=8, help="CNN probe epochs (0 skips the probe)")
    ap.add_argument("--domains", nargs="*", default=P.DECATHLON + P.UPSTREAM)
    args = ap.parse_args()
    torch.set_num_threads(1)

    print(f"procedural VERSION {P.VERSION}, {args.n_train} train / {args.n_test} test at {args.size} px\n")
    header = (f"{'domain':12s} {'classes':>7s} {'grey':>5s} {'chance':>7s} {'LR pixels':>10s} {'LR meanRGB':>11s} "
              f"{'CNN':>6s} {'img/s':>7s}  mimics")
    print(header)
    print("-" * len(header))
    for d in args.domains:
        spec = P.DOMAINS[d]
        x_tr, y_tr = images_labels(d, args.n_train, "train", args.seed, args.size)
        x_te, y_te = images_labels(d, args.n_test, "test", args.seed, args.size)
        pix = lambda x: x.reshape(len(x), -1).astype(np.float32) / 255.0  # noqa: E731
        rgb = lambda x: x.reshape(len(x), -1, 3).mean(axis=1).astype(np.float32) / 255.0  # noqa: E731
        acc_pix = linear_probe(pix(x_tr), y_tr, pix(x_te), y_te)
        acc_rgb = linear_probe(rgb(x_tr), y_tr, rgb(x_te), y_te)
        acc_cnn = cnn_probe(x_tr, y_tr, x_te, y_te, spec.num_classes, args.epochs) if args.epochs else float("nan")
        speed = generation_speed(d, args.size)
        print(f"{d:12s} {spec.num_classes:7d} {str(spec.grey):>5s} {1 / spec.num_classes:7.3f} {acc_pix:10.3f} "
              f"{acc_rgb:11.3f} {acc_cnn:6.3f} {speed:7.0f}  {spec.mimics}", flush=True)


if __name__ == "__main__":
    main()
