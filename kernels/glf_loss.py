"""glf_loss: the generalized overlap loss of seed 002 on top of the one-pass glf_stats kernel.

Every overlap loss medtune ships (Dice, Tversky, Effectiveness, GLF) is one ratio of the
confusion sums, per sample and class,

    loss = 1 - (w * TP + smooth_nr) / (w * TP + a * FP + b * FN + smooth_dr),

with (w, a, b) = (2, 1, 1) for Dice, (1, alpha, beta) for Tversky, (1 + beta2, 1, beta2) for
Effectiveness, and (1 + beta2, alpha_p, beta2 * alpha_n) for the GLF (see
``medtune.plugins.losses.glf`` for the algebra). The forward is one fused pass over the
prediction (activation included) and the target; the backward writes the gradient in one pass
from the saved [N, C] sums. Nothing elementwise is kept between forward and backward.
"""

from __future__ import annotations

from torch import Tensor

from medtune.kernels.glf_stats import GLFStats, glf_stats, glf_stats_reference


def overlap_ratio_loss(
    stats: GLFStats,
    tp_weight: float | Tensor,
    fp_weight: float | Tensor,
    fn_weight: float | Tensor,
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
) -> Tensor:
    """``1 - (w TP + smooth_nr) / (w TP + a FP + b FN + smooth_dr)`` per sample and class.

    With ``batch=True`` the sums are first added over the batch (MONAI's convention) and the
    result has shape [C]; otherwise [N, C].
    """
    tp, fp, fn = stats
    if batch:
        tp, fp, fn = tp.sum(0), fp.sum(0), fn.sum(0)
    numerator = tp_weight * tp + smooth_nr
    return 1.0 - numerator / (tp_weight * tp + fp_weight * fp + fn_weight * fn + smooth_dr)


def glf_loss(
    input: Tensor,
    target: Tensor,
    tp_weight: float | Tensor,
    fp_weight: float | Tensor,
    fn_weight: float | Tensor,
    activation: str = "none",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
) -> tuple[Tensor, GLFStats]:
    """Unreduced overlap loss ([N, C], or [C] with ``batch``) and the confusion sums it used.

    ``input`` holds probabilities, or logits with ``activation="sigmoid" | "softmax"``;
    ``target`` is a mask of ``input``'s shape or an integer label map (see ``glf_stats``).
    """
    stats = glf_stats(input, target, activation)
    loss = overlap_ratio_loss(stats, tp_weight, fp_weight, fn_weight, smooth_nr, smooth_dr, batch)
    return loss, stats


def glf_loss_reference(
    input: Tensor,
    target: Tensor,
    tp_weight: float | Tensor,
    fp_weight: float | Tensor,
    fn_weight: float | Tensor,
    activation: str = "none",
    smooth_nr: float = 1e-5,
    smooth_dr: float = 1e-5,
    batch: bool = False,
) -> Tensor:
    """The same loss in plain differentiable PyTorch (the ground truth of the tests)."""
    stats = glf_stats_reference(input, target, activation)
    return overlap_ratio_loss(stats, tp_weight, fp_weight, fn_weight, smooth_nr, smooth_dr, batch)

