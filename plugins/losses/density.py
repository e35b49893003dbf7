"""Density-weighted regression loss: rare labels weigh more (Pourchot2022, ch. 6.3.3-6.3.5).

A regression network trained on a skewed label distribution pulls its predictions towards the
common labels. Pourchot2022 re-weights every training sample by a negative power of the label
density, estimated with SciPy's Gaussian kernel density estimator on the training labels,

    w(y) = f(y)^-alpha / mean_i f(y_i)^-alpha,

normalised so that the weights average 1 over the training set (the learning rate seen by the
optimiser is unchanged). ``alpha = 1`` is the inverse density of sec. 6.3.3, ``alpha = 0.5``
the damped version of sec. 6.3.5 (used there for a density "too narrowed around a few
points"), ``alpha = 0`` uniform weights. The density may be joint over several label columns
(sec. 6.3.5 estimates f_{BA,DA} over bone age and its difference to chronological age), which
need not be the regression targets themselves: pass them as ``density_labels``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy.special import logsumexp
from scipy.stats import gaussian_kde
from torch import Tensor, nn

from medtune.errors import LossError
from medtune.losses import REDUCTIONS

BASES = ("l1", "mse")


def _as_columns(labels: ArrayLike | Tensor, what: str) -> np.ndarray:
    """Labels as a float64 array [M, K] (a 1-D input is one column)."""
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().to(torch.float64).numpy()
    try:
        array = np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError):
        raise LossError(
            f"DensityWeightedLoss: {what} must be numeric, got {type(labels).__name__}"
        ) from None
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise LossError(
            f"DensityWeightedLoss: {what} must be [M] or [M, K] (K label columns), got shape "
            f"{array.shape}"
        )
    if not np.isfinite(array).all():
        raise LossError(
            f"DensityWeightedLoss: {what} contain NaN or Inf; drop or impute those samples first"
        )
    return array


class DensityWeightedLoss(nn.Module):
    """L1 or MSE regression loss with per-sample weights ``f(y)^-alpha`` (mean 1 on training).

    Args:
        training_labels: the labels of the whole training set, [M] or [M, K] for a joint
            density over K columns (M > K, not all equal, columns not collinear).
        alpha: damping exponent >= 0 (1: inverse density, 0.5: damped, 0: uniform).
        base: ``"l1"`` (Pourchot2022's choice) or ``"mse"``.
        reduction: ``"mean"`` or ``"sum"`` of the weighted per-sample losses, or ``"none"``
            for the [N] weighted per-sample losses.
        bandwidth: SciPy's ``bw_method`` (``"scott"``, ``"silverman"``, a number or a
            callable); ``None`` is Scott's rule.
        max_weight: cap on a weight, applied after the normalisation (the capped training
            weights then average a little below 1); ``None`` for no cap. A label so far from
            the training labels that its density underflows to 0 needs a cap.

    ``forward(input, target, density_labels=None)``: ``input`` and ``target`` are [N] or
    [N, D]; the per-sample loss is the mean of the elementwise loss over the D outputs. The
    weights are evaluated at ``density_labels`` ([N] or [N, K]), by default at ``target``
    (which then needs the K columns of the density).
    """

    def __init__(
        self,
        training_labels: ArrayLike | Tensor,
        alpha: float = 1.0,
        base: str = "l1",
        reduction: str = "mean",
        bandwidth: str | float | None = None,
        max_weight: float | None = None,
    ) -> None:
        super().__init__()
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise LossError(f"DensityWeightedLoss: alpha must be a number, got {alpha!r}") from None
        if not 0 <= alpha < math.inf:
            raise LossError(
                f"DensityWeightedLoss: alpha must be finite and >= 0 (1 = inverse density, 0.5 = "
                f"damped, 0 = uniform), got {alpha}"
            )
        if base not in BASES:
            raise LossError(f"DensityWeightedLoss: base must be 'l1' or 'mse', got {base!r}")
        reduction = str(getattr(reduction, "value", reduction))
        if reduction not in REDUCTIONS:
            raise LossError(
                f"DensityWeightedLoss: reduction must be one of {', '.join(REDUCTIONS)}, got "
                f"{reduction!r}"
            )
        if max_weight is not None and not 0 < float(max_weight) < math.inf:
            raise LossError(
                f"DensityWeightedLoss: max_weight must be > 0 or None, got {max_weight!r}"
            )
        labels = _as_columns(training_labels, "training_labels")
        count, columns = labels.shape
        if count <= columns:
            raise LossError(
                f"DensityWeightedLoss: a {columns}-dimensional Gaussian KDE needs more than "
                f"{columns} training labels, got {count}"
            )
        if np.ptp(labels, axis=0).min() == 0:
            raise LossError(
                "DensityWeightedLoss: a label column is constant over the training set, so its "
                "density is degenerate; drop that column or use an unweighted loss"
            )
        try:
            self.kde = gaussian_kde(labels.T, bw_method=bandwidth)
            log_density = self.kde.logpdf(labels.T)
        except np.linalg.LinAlgError:
            raise LossError(
                "DensityWeightedLoss: the label columns are linearly dependent (their covariance "
                "is singular); estimate the density over independent columns"
            ) from None
        except (TypeError, ValueError) as exc:
            raise LossError(
                f"DensityWeightedLoss: invalid bandwidth {bandwidth!r}: {exc}"
            ) from None
        self.alpha = alpha
        self.base = base
        self.reduction = reduction
        self.columns = columns
        self.max_weight = None if max_weight is None else float(max_weight)
        # log of mean_i f(y_i)^-alpha, so that the training weights average exactly 1
        self._log_normaliser = float(logsumexp(-alpha * log_density) - math.log(count))
        self.register_buffer(
            "training_weights", torch.from_numpy(self._weights_from_log_density(log_density))
        )

    def _weights_from_log_density(self, log_density: np.ndarray) -> np.ndarray:
        if self.alpha == 0:
            return np.ones_like(log_density)
        with np.errstate(over="ignore"):
            weights = np.exp(-self.alpha * log_density - self._log_normaliser)
        if self.max_weight is not None:
            weights = np.minimum(weights, self.max_weight)
        elif not np.isfinite(weights).all():
            raise LossError(
                "DensityWeightedLoss: some labels lie so far from the training labels that their "
                "estimated density underflows to 0 (infinite weight); pass max_weight= to cap "
                "the weights"
            )
        return weights

    def weights(self, labels: ArrayLike | Tensor) -> Tensor:
        """Normalised weights [M] (float64, CPU) of labels [M] or [M, K]."""
        array = _as_columns(labels, "labels")
        if array.shape[1] != self.columns:
            raise LossError(
                f"DensityWeightedLoss: the density was estimated over {self.columns} label "
                f"column(s) but got labels with {array.shape[1]}"
            )
        return torch.from_numpy(self._weights_from_log_density(self.kde.logpdf(array.T)))

    def forward(
        self, input: Tensor, target: Tensor, density_labels: Tensor | None = None
    ) -> Tensor:
        """Weighted regression loss of ``input`` against ``target`` (see the class docstring)."""
        if not isinstance(input, Tensor) or not isinstance(target, Tensor):
            raise LossError("DensityWeightedLoss: input and target must be torch.Tensors")
        if input.shape != target.shape:
            raise LossError(
                f"DensityWeightedLoss: input shape {tuple(input.shape)} differs from target shape "
                f"{tuple(target.shape)}"
            )
        if input.dim() not in (1, 2):
            raise LossError(
                f"DensityWeightedLoss: input must be [N] or [N, D], got shape {tuple(input.shape)}"
            )
        labels = target if density_labels is None else density_labels
        if labels.shape[0] != input.shape[0]:
            raise LossError(
                f"DensityWeightedLoss: density_labels has {labels.shape[0]} rows but the batch "
                f"has {input.shape[0]} samples"
            )
        given = 1 if labels.dim() == 1 else labels.shape[1]
        if given != self.columns:
            source = "target" if density_labels is None else "density_labels"
            raise LossError(
                f"DensityWeightedLoss: the density was estimated over {self.columns} label "
                f"column(s) but {source} has {given}; pass density_labels= with those columns"
            )
        weights = self.weights(labels).to(device=input.device, dtype=input.dtype)
        difference = input - target.to(input.dtype)
        elementwise = difference.abs() if self.base == "l1" else difference.square()
        per_sample = elementwise if elementwise.dim() == 1 else elementwise.mean(1)
        weighted = weights * per_sample
        if self.reduction == "mean":
            return weighted.mean()
        if self.reduction == "sum":
            return weighted.sum()
        return weighted

    def extra_repr(self) -> str:
        return (
            f"alpha={self.alpha}, base={self.base!r}, reduction={self.reduction!r}, "
            f"columns={self.columns}, max_weight={self.max_weight}"
        )
