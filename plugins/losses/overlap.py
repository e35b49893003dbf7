"""The fixed-coefficient overlap losses: Dice, Tversky and Effectiveness (F-beta).

Each is a :class:`medtune.losses.OverlapLoss` with its own (TP, FP, FN) weights: (2, 1, 1) for
Dice, (1, alpha, beta) for Tversky, (1 + beta2, 1, beta2) for Effectiveness. The ``dice`` and
``tversky`` plugins agree with ``monai.losses.DiceLoss`` / ``TverskyLoss`` called with the same
arguments (docs/losses.md).
"""

from __future__ import annotations

from medtune.losses import OverlapLoss, non_negative


class DiceLoss(OverlapLoss):
    """Soft Dice loss ``1 - (2 TP + smooth_nr) / (2 TP + FP + FN + smooth_dr)``.

    Same arguments and results as ``monai.losses.DiceLoss`` (without ``other_act``,
    ``squared_pred``, ``jaccard``, ``weight``, ``soft_label``, ``ignore_index``); see
    :class:`OverlapLoss` for the arguments, targets, empty images and the NaN check.
    ``reduction="none"`` returns [N, C, 1, ...] like MONAI's DiceLoss.
    """

    def weights(self) -> tuple[float, float, float]:
        return 2.0, 1.0, 1.0


class TverskyLoss(OverlapLoss):
    """Tversky loss ``1 - (TP + smooth_nr) / (TP + alpha FP + beta FN + smooth_dr)``.

    MONAI's convention: ``alpha`` weighs the false positives, ``beta`` the false negatives
    (both >= 0; ``alpha = beta = 0.5`` is the Dice loss). Same results as
    ``monai.losses.TverskyLoss``; ``reduction="none"`` returns [N, C] like MONAI's. See
    :class:`OverlapLoss` for the other arguments.
    """

    broadcast_none = False

    def __init__(
        self,
        *,
        alpha: float = 0.5,
        beta: float = 0.5,
        **options: object,
    ) -> None:
        super().__init__(**options)
        self.alpha = non_negative("alpha", alpha, type(self).__name__)
        self.beta = non_negative("beta", beta, type(self).__name__)

    def weights(self) -> tuple[float, float, float]:
        return 1.0, self.alpha, self.beta

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, " + super().extra_repr()


class EffectivenessLoss(OverlapLoss):
    """Effectiveness (F-beta) loss ``1 - (1 + beta2) / (1 / P + beta2 / R)``.

    With precision P = TP / (TP + FP) and recall R = TP / (TP + FN) this is
    ``1 - ((1 + beta2) TP + smooth_nr) / ((1 + beta2) TP + FP + beta2 FN + smooth_dr)``;
    ``beta2`` (>= 0) weighs recall against precision, ``beta2 = 1`` is the Dice loss and
    ``beta2 = 0`` the precision loss ``1 - P``. ``reduction="none"`` returns [N, C, 1, ...] as
    the Dice loss does. See :class:`OverlapLoss` for the other arguments.
    """

    def __init__(
        self,
        *,
        beta2: float = 1.0,
        **options: object,
    ) -> None:
        super().__init__(**options)
        self.beta2 = non_negative("beta2", beta2, type(self).__name__)

    def weights(self) -> tuple[float, float, float]:
        return 1.0 + self.beta2, 1.0, self.beta2

    def extra_repr(self) -> str:
        return f"beta2={self.beta2}, " + super().extra_repr()
