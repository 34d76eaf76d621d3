"""Linear probes of frozen features: how much a backbone's [CLS] feature knows about a task.

    from gift_cl.probe import probe_backbones
    table = probe_backbones({"formula": vit_formula, "pixels": None}, domains, data_seeds=[0, 1, 2])

A multinomial logistic regression (scikit-learn, features standardised on the training split) is fitted on
the training images; its inverse regularisation ``C`` is chosen per task and feature on the validation split
(:data:`C_GRID`), and the chosen probe is scored on the test split. ``None`` as a backbone means raw pixels
(the image as the model receives it, flattened). Everything is a function of the data seed and the backbones.
"""
from __future__ import annotations

import warnings
from typing import Callable, Optional, cast

import numpy as np
import torch
from torch import nn

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


@torch.no_grad()
def cls_features(backbone: Optional[nn.Module], images: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """The pooled pre-logits feature (timm ``forward_head(pre_logits=True)``: [CLS] for ViTs), or pixels."""
    if backbone is None:
        return images.flatten(1).numpy().astype(np.float32)
    backbone.eval()
    # nn.Module.__getattr__ is typed Tensor | Module; on a timm model these two are methods
    forward_features = cast("Callable[[torch.Tensor], torch.Tensor]", backbone.forward_features)
    forward_head = cast("Callable[..., torch.Tensor]", backbone.forward_head)
    out = [forward_head(forward_features(images[i:i + batch_size]), pre_logits=True)
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).float().numpy()


def _to_tensor(dataset) -> tuple[torch.Tensor, np.ndarray]:
    xs, ys = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(xs), np.asarray(ys, dtype=np.int64)


def fit_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
              test: tuple[np.ndarray, np.ndarray], c_grid=C_GRID) -> dict:
    """Choose C on ``val``, score on ``test``: ``{"C", "val", "test", "test_correct"}`` (per-image 0/1)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train[0])
    xtr, xva, xte = (scaler.transform(x) for x in (train[0], val[0], test[0]))
    best = None
    for c in c_grid:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf = LogisticRegression(C=c, max_iter=500).fit(xtr, train[1])
        score = float((clf.predict(xva) == val[1]).mean())
        if best is None or score > best[0]:  # ties keep the stronger regularisation (smaller C, listed first)
            best = (score, c, clf)
    assert best is not None, "fit_probe needs a non-empty c_grid"
    score, c, clf = best
    correct = clf.predict(xte) == test[1]
    return {"C": c, "val": score, "test": float(correct.mean()), "test_correct": correct}


def probe_task(features: dict[str, Optional[nn.Module]], task_train, task_val, task_test) -> dict[str, dict]:
    """Every feature's probe on one task (train / val / test datasets yielding (image, label))."""
    splits = [_to_tensor(d) for d in (task_train, task_val, task_test)]
    out = {}
    for name, backbone in features.items():
        feats = [(cls_features(backbone, x), y) for x, y in splits]
        out[name] = fit_probe(*feats)
    return out
