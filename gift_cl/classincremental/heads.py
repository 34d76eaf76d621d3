"""Training-free class-incremental heads on frozen features: one growing label space, no task id at test.

* :class:`PrototypeClassifier`: SimpleCIL / APER's prototype classifier (Zhou et al., "Revisiting
  Class-Incremental Learning with Pre-Trained Models"; LAMDA-PILOT ``models/simplecil.py``).
* :class:`RandomProjectionRidge`: RanPAC's random projection + ridge regression head (McDonnell et al.,
  NeurIPS 2023; github.com/RanPAC/RanPAC ``RanPAC.py``, also LAMDA-PILOT ``models/ranpac.py``).

Both take features (N, feature_dim) and GLOBAL class ids; a class id may first appear in any call. Classes
below the largest id seen that have had no data get the logit :data:`gift_cl.padding.PAD_LOGIT`, so they never
win argmax (the official code never has such gaps: its heads cover classes 0..seen-1 and every one has data).
Everything needed to resume is in ``state_dict()`` (the growing tensors as extra state: plain tensors, floats
and dicts, loadable with ``torch.load(weights_only=True)``).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..padding import PAD_LOGIT

# RanPAC's ridge grid: ``10.0**np.arange(-8, 9)`` in both RanPAC.py and PILOT's ranpac.py (1e-8 .. 1e8), made
# with numpy as there: numpy's power is not Python's (10.0**np.int64(-5) = 9.999999999999999e-06, 10.0**-5 = 1e-05).
OFFICIAL_RIDGES: tuple[float, ...] = tuple(float(r) for r in 10.0 ** np.arange(-8, 9))

# Rows of the stage's projected features formed at once when choosing the ridge (bounds the memory of H).
_CHUNK = 4096


def _check_inputs(features: Tensor, feature_dim: int, labels: Optional[Tensor] = None) -> None:
    if features.dim() != 2 or features.shape[1] != feature_dim:
        raise ValueError(f"features have dimension {tuple(features.shape[1:])} (shape {tuple(features.shape)}); "
                         f"this head was built for feature_dim={feature_dim}: expected shape (N, {feature_dim})")
    if labels is None:
        return
    if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
        raise ValueError(f"labels have shape {tuple(labels.shape)}; expected ({features.shape[0]},): one global "
                         "class id per feature row")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be integer class ids, not {labels.dtype}")
    if labels.numel() and int(labels.min()) < 0:
        raise ValueError(f"labels must be non-negative global class ids; got {int(labels.min())}")


def _logit_dtype(features: Tensor) -> torch.dtype:
    # at least float32: PAD_LOGIT (-1e9) overflows float16 / bfloat16 rounds it
    return torch.promote_types(features.dtype, torch.float32)


def _grown(t: Tensor, size: int, dim: int) -> Tensor:
    """``t`` zero-padded along ``dim`` to ``size``."""
    if t.shape[dim] >= size:
        return t
    shape = list(t.shape)
    shape[dim] = size - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


class PrototypeClassifier(nn.Module):
    """Cosine similarity to class means (SimpleCIL; APER's classifier).

    PILOT's ``simplecil.py`` (``Learner.replace_fc``) extracts the frozen features of the current stage's
    training data and overwrites row ``c`` of a ``CosineLinear`` head with the mean feature of class ``c``, for
    the classes of that stage; ``CosineLinear.forward`` (``backbone/linears.py``) returns
    ``sigma * normalize(x) @ normalize(W).T`` with ``sigma`` initialised to 1 and, in SimpleCIL, never trained.
    So the logits are plain cosine similarities, which is what :meth:`forward` returns (APER's variants train
    ``sigma`` on the first stage; a positive scale does not change the argmax).

    Differences: sums and counts accumulate in float64 over every :meth:`update` (PILOT: a float32 mean of
    one stage's features), so per-batch updates equal one update on all the data, and a class whose data is
    split over stages gets the mean of all of it (PILOT would keep only its last stage's mean; in the usual
    disjoint-class protocol the two agree).
    """

    def __init__(self, feature_dim: int):
        super().__init__()
        if feature_dim <= 0:
            raise ValueError(f"feature_dim must be positive, got {feature_dim}")
        self.feature_dim = int(feature_dim)
        self._sums = torch.zeros(0, self.feature_dim, dtype=torch.float64)  # (C, d) per-class feature sums
        self._counts = torch.zeros(0, dtype=torch.int64)  # (C,) samples per class

    @property
    def num_classes(self) -> int:
        """1 + the largest class id seen, or 0 before any update."""
        return int(self._counts.numel())

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Add ``features`` (N, feature_dim) of classes ``labels`` (N,) to the class sums and counts."""
        _check_inputs(features, self.feature_dim, labels)
        if labels.numel() == 0:
            return
        labels = labels.to(features.device, torch.int64)
        size = max(self.num_classes, int(labels.max()) + 1)
        self._sums = _grown(self._sums.to(features.device), size, 0)
        self._counts = _grown(self._counts.to(features.device), size, 0)
        self._sums.index_add_(0, labels, features.detach().to(torch.float64))
        self._counts += torch.bincount(labels, minlength=size)

    @property
    def prototypes(self) -> Tensor:
        """(num_classes, feature_dim) float64 class means; rows of classes without data are zero."""
        return self._sums / self._counts.clamp(min=1).unsqueeze(1).to(self._sums.dtype)

    def forward(self, features: Tensor) -> Tensor:
        """(N, num_classes) cosine similarities of ``features`` to the class means."""
        if self.num_classes == 0:
            raise RuntimeError("PrototypeClassifier has no class means yet: call update(features, labels) "
                               "before forward()")
        _check_inputs(features, self.feature_dim)
        protos = self.prototypes.to(features.device)
        logits = F.normalize(features.to(torch.float64), dim=1) @ F.normalize(protos, dim=1).T
        logits = logits.masked_fill(self._counts.to(features.device) == 0, PAD_LOGIT)
        return logits.to(_logit_dtype(features))

    def get_extra_state(self) -> dict[str, Any]:
        return {"sums": self._sums, "counts": self._counts}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        sums, counts = state["sums"], state["counts"]
        if sums.shape != (counts.numel(), self.feature_dim):
            raise ValueError(f"checkpointed class sums have shape {tuple(sums.shape)}; this head expects "
                             f"({counts.numel()}, {self.feature_dim}) (feature_dim={self.feature_dim})")
        self._sums, self._counts = sums.clone(), counts.clone()


class RandomProjectionRidge(nn.Module):
    """RanPAC: a fixed random ReLU projection of the features, then ridge regression onto one-hot targets.

    What the official code does (RanPAC.py ``Learner.setup_RP`` / ``replace_fc`` / ``optimise_ridge_parameter``;
    the same in PILOT's ``models/ranpac.py``): ``W_rand = torch.randn(feature_dim, M)`` (M=10000) once;
    for each stage, ``H = relu(X @ W_rand)`` on all of the stage's training features (in the order the loader
    gave them), ``Q += H.T @ Y`` and ``G += H.T @ H`` (Y one-hot), then λ is chosen on that stage's data only:
    fit on its first 80 % (``int(0.8 N)`` rows), score the MSE of the predictions of the last 20 % for each λ in
    ``10.0**np.arange(-8, 9)``, take the first minimum; then ``W_out = solve(G + λI, Q)`` and the logits are
    ``H @ W_out`` (RanPAC's ``CosineLinear`` with ``use_RP``: a plain linear map, times ``sigma``, which is 1
    unless a first-stage PETL run trained it; a positive scale leaves the argmax alone).

    Differences:

    * G, Q, the projection H used to fit and predict, and every solve are float64 (the official code: float32,
      solved on the CPU). With M = 10000 and N < M, ``G + λI`` at small λ is ill-conditioned: float32 can
      pick a different λ or return a solution dominated by rounding. Float64 costs twice the memory (0.8 GB
      for G at M = 10000); on well-conditioned data the two agree to float32 rounding.
    * W is drawn from a ``torch.Generator`` seeded by ``seed`` (official: the global RNG), as float32 like
      ``torch.randn``; it is a buffer, so it is checkpointed.
    * Y has one column per class seen so far (official: every class of the benchmark, known in advance). The
      extra columns are zero in Q, so their weights and predictions are exactly zero: the MSE differs by a
      constant factor and the chosen λ is the same.
    * The stage's raw features are held until :meth:`fit` (official: the projected H, 13x larger at d=768)
      and H is formed in chunks; they are freed by :meth:`fit`.
    * PILOT's ``ranpac.py`` feeds W_out into a cosine ``CosineLinear`` (normalising H and each class's
      weights); this follows RanPAC's own code, the unnormalised linear map of the paper.
    """

    def __init__(self, feature_dim: int, projection_dim: int = 10000, seed: int = 0,
                 ridges: Optional[Sequence[float]] = None):
        super().__init__()
        if feature_dim <= 0 or projection_dim <= 0:
            raise ValueError(f"feature_dim and projection_dim must be positive, got {feature_dim}, {projection_dim}")
        self.feature_dim, self.projection_dim, self.seed = int(feature_dim), int(projection_dim), int(seed)
        self.ridges: tuple[float, ...] = OFFICIAL_RIDGES if ridges is None else tuple(float(r) for r in ridges)
        if not self.ridges or min(self.ridges) <= 0:
            raise ValueError(f"ridges must be a non-empty list of positive numbers, got {ridges}")
        generator = torch.Generator().manual_seed(self.seed)
        self.W: Tensor
        self.register_buffer("W", torch.randn(self.feature_dim, self.projection_dim, generator=generator))
        self.ridge: Optional[float] = None  # λ chosen by the last fit()
        self._G: Optional[Tensor] = None  # (M, M) float64, allocated on the first update
        self._Q = torch.zeros(self.projection_dim, 0, dtype=torch.float64)  # (M, C)
        self._counts = torch.zeros(0, dtype=torch.int64)  # (C,)
        self._W_out: Optional[Tensor] = None  # (M, C at the last fit) float64
        self._pending: list[tuple[Tensor, Tensor]] = []  # this stage's (features, labels), until fit()

    @property
    def num_classes(self) -> int:
        """1 + the largest class id seen, or 0 before any update."""
        return int(self._counts.numel())

    @property
    def stage_open(self) -> bool:
        """Whether data was added since the last :meth:`fit` (a stage to end)."""
        return bool(self._pending)

    def project(self, features: Tensor) -> Tensor:
        """H = relu(features @ W), float64."""
        return torch.relu(features.to(torch.float64) @ self.W.to(features.device, torch.float64))

    @torch.no_grad()
    def update(self, features: Tensor, labels: Tensor) -> None:
        """Accumulate G and Q with ``features`` (N, feature_dim) of classes ``labels`` (N,) and keep them for
        the stage's λ choice; may be called once per batch. :meth:`fit` ends the stage."""
        _check_inputs(features, self.feature_dim, labels)
        if labels.numel() == 0:
            return
        device = features.device
        features, labels = features.detach(), labels.to(device, torch.int64)
        size = max(self.num_classes, int(labels.max()) + 1)
        self._Q = _grown(self._Q.to(device), size, 1)
        self._counts = _grown(self._counts.to(device), size, 0)
        if self._G is None:
            self._G = torch.zeros(self.projection_dim, self.projection_dim, dtype=torch.float64, device=device)
        self._G = self._G.to(device)
        h = self.project(features)
        self._G.addmm_(h.T, h)
        self._Q.index_add_(1, labels, h.T)  # = H.T @ one_hot(labels)
        self._counts += torch.bincount(labels, minlength=size)
        self._pending.append((features, labels))

    @torch.no_grad()
    def fit(self) -> float:
        """End the stage: choose λ on the stage's data, solve ``(G + λI) W_out = Q``, free the stage's
        features. Returns λ (also in :attr:`ridge`)."""
        if not self._pending:
            raise RuntimeError("RandomProjectionRidge.fit() has no new data: call update(features, labels) with "
                               "the stage's training features first")
        assert self._G is not None
        features = torch.cat([f for f, _ in self._pending])
        labels = torch.cat([y for _, y in self._pending])
        self.ridge = self._choose_ridge(features, labels)
        eye = torch.eye(self.projection_dim, dtype=torch.float64, device=self._G.device)
        self._W_out = torch.linalg.solve(self._G + self.ridge * eye, self._Q)
        self._pending = []
        return self.ridge

    def _choose_ridge(self, features: Tensor, labels: Tensor) -> float:
        """RanPAC's ``optimise_ridge_parameter`` on one stage's data, in its order."""
        n_fit = int(features.shape[0] * 0.8)
        m, c = self.projection_dim, self.num_classes
        g = torch.zeros(m, m, dtype=torch.float64, device=features.device)
        q = torch.zeros(m, c, dtype=torch.float64, device=features.device)
        for start in range(0, n_fit, _CHUNK):
            h = self.project(features[start:min(start + _CHUNK, n_fit)])
            g.addmm_(h.T, h)
            q.index_add_(1, labels[start:min(start + _CHUNK, n_fit)], h.T)
        h_val = self.project(features[n_fit:])
        y_val = F.one_hot(labels[n_fit:], c).to(torch.float64)
        eye = torch.eye(m, dtype=torch.float64, device=features.device)
        losses = [F.mse_loss(h_val @ torch.linalg.solve(g + ridge * eye, q), y_val).item() for ridge in self.ridges]
        return self.ridges[min(range(len(losses)), key=losses.__getitem__)]  # first minimum, as np.argmin

    def forward(self, features: Tensor) -> Tensor:
        """(N, num_classes) logits ``relu(features @ W) @ W_out``."""
        if self._W_out is None:
            why = "call update(features, labels) then fit()" if self.num_classes == 0 else "call fit() to end the stage"
            raise RuntimeError(f"RandomProjectionRidge has no fitted weights yet: {why} before forward()")
        if self._pending:
            raise RuntimeError(f"RandomProjectionRidge has {sum(len(y) for _, y in self._pending)} samples added by "
                               "update() since the last fit(): call fit() to end the stage before forward()")
        _check_inputs(features, self.feature_dim)
        logits = self.project(features) @ self._W_out.to(features.device)
        logits = logits.masked_fill(self._counts.to(features.device) == 0, PAD_LOGIT)
        return logits.to(_logit_dtype(features))

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "G": self._G, "Q": self._Q, "counts": self._counts, "W_out": self._W_out, "ridge": self.ridge,
            "pending_features": [f for f, _ in self._pending], "pending_labels": [y for _, y in self._pending],
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        q = state["Q"]
        if q.shape[0] != self.projection_dim:
            raise ValueError(f"checkpointed Q has {q.shape[0]} rows; this head has projection_dim="
                             f"{self.projection_dim}")
        self._G = None if state["G"] is None else state["G"].clone()
        self._Q, self._counts = q.clone(), state["counts"].clone()
        self._W_out = None if state["W_out"] is None else state["W_out"].clone()
        self.ridge = state["ridge"]
        self._pending = [(f.clone(), y.clone()) for f, y in zip(state["pending_features"], state["pending_labels"])]
