"""The loss contract: :class:`OverlapLoss`, the base class of a segmentation overlap loss.

An overlap loss is one ratio of the per-sample, per-class confusion sums,
``1 - (w TP + smooth_nr) / (w TP + a FP + b FN + smooth_dr)``, computed in one pass over the
prediction and the target by the fused kernel op :func:`medtune.kernels.glf_loss`. A subclass
says which weights (w, a, b) it uses (:meth:`OverlapLoss.weights`) and how ``reduction="none"``
is shaped (:attr:`OverlapLoss.broadcast_none`), and a plugin registers it under the ``loss``
kind (hook ``medtune_losses``). The base takes MONAI's arguments and gives MONAI's results; a
label-map target reaches the kernel as it is (never expanded to one-hot), and NaN/Inf is found
on the small [N, C] sums, never on the input. Targets, empty images and the finiteness check in
detail: docs/losses.md.
"""

from __future__ import annotations

import abc
import warnings

import torch
from torch import Tensor, nn

from medtune.errors import LossError
from medtune.kernels import GLFStats, glf_loss

__all__ = ["REDUCTIONS", "OverlapLoss", "non_negative"]

#: The ``reduction`` values every loss accepts.
REDUCTIONS = ("mean", "sum", "none")


def non_negative(name: str, value: float, owner: str) -> float:
    """``value`` as a float; raises :class:`LossError` unless it is finite and >= 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise LossError(f"{owner}: {name} must be a number, got {value!r}") from None
    if not number >= 0.0 or number == float("inf"):
        raise LossError(f"{owner}: {name} must be a finite number >= 0, got {value!r}")
    return number


class OverlapLoss(nn.Module, abc.ABC):
    """Base of the overlap losses: MONAI's arguments, target handling, checks and reduction.

    Subclasses say which (TP, FP, FN) weights they use (:meth:`weights`) and how
    ``reduction="none"`` shapes the result (:attr:`broadcast_none`).

    Args:
        include_background: if False, channel 0 (the background) is left out of the loss;
            ignored, with a warning, for a single-channel prediction.
        to_onehot_y: the target is a label map of class indices (MONAI's flag). Label maps are
            never expanded here; ignored, with a warning, for a single-channel prediction.
        sigmoid: apply a sigmoid to the prediction (fused into the kernel).
        softmax: apply a softmax over the channels (fused); ignored, with a warning, for a
            single-channel prediction. At most one of ``sigmoid`` and ``softmax``.
        reduction: ``"mean"`` or ``"sum"`` over samples and classes, or ``"none"``.
        smooth_nr: added to the numerator (>= 0).
        smooth_dr: added to the denominator (>= 0; 0 gives NaN for an empty target and an
            empty prediction, which the finiteness check reports).
        batch: pool the sums over the batch before the ratio (result per class).
        check_finite: raise :class:`LossError` when the prediction holds NaN/Inf.
    """

    #: ``reduction="none"`` keeps MONAI DiceLoss's broadcastable shape [N, C, 1, ...] when True,
    #: MONAI TverskyLoss's [N, C] when False.
    broadcast_none: bool = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        check_finite: bool = True,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        if sigmoid and softmax:
            raise LossError(
                f"{owner}: sigmoid=True and softmax=True are incompatible; pick the activation "
                "that matches the network output (sigmoid for independent channels, softmax for "
                "mutually exclusive classes)"
            )
        reduction = str(getattr(reduction, "value", reduction))
        if reduction not in REDUCTIONS:
            raise LossError(
                f"{owner}: reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}"
            )
        self.include_background = bool(include_background)
        self.to_onehot_y = bool(to_onehot_y)
        self.sigmoid = bool(sigmoid)
        self.softmax = bool(softmax)
        self.reduction = reduction
        self.smooth_nr = non_negative("smooth_nr", smooth_nr, owner)
        self.smooth_dr = non_negative("smooth_dr", smooth_dr, owner)
        self.batch = bool(batch)
        self.check_finite = bool(check_finite)

    @abc.abstractmethod
    def weights(self) -> tuple[float | Tensor, float | Tensor, float | Tensor]:
        """The (TP, FP, FN) weights (w, a, b) of the ratio in use now."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        """The loss of prediction ``input`` [N, C, *spatial] against ``target``.

        Returns a scalar for ``reduction="mean" | "sum"``; for ``"none"`` the per-sample,
        per-class losses ([N, C'] or, with ``batch``, [C'], where C' drops the background when
        ``include_background=False``), shaped as MONAI does (see :attr:`broadcast_none`).
        """
        loss, _ = self.unreduced(input, target)
        return self.reduce(loss, input.dim() - 2)

    def unreduced(self, input: Tensor, target: Tensor) -> tuple[Tensor, GLFStats]:
        """Per-sample, per-class losses and the confusion sums they came from.

        The loss is [N, C'] ([C'] with ``batch``); the sums are [N, C'] each and stay
        differentiable with respect to ``input``.
        """
        self._check_input(input)
        channels = input.shape[1]
        activation = self._activation(channels)
        target = self.prepare_target(input, target)
        tp_weight, fp_weight, fn_weight = self.weights()
        loss, stats = glf_loss(
            input,
            target,
            tp_weight,
            fp_weight,
            fn_weight,
            activation=activation,
            smooth_nr=self.smooth_nr,
            smooth_dr=self.smooth_dr,
            batch=self.batch,
        )
        self._check_finite(stats, loss)
        if self._drop_background(channels):
            loss = loss[..., 1:]
            stats = GLFStats(*(s[:, 1:] for s in stats))
        return loss, stats

    def reduce(self, loss: Tensor, spatial_dims: int) -> Tensor:
        """Apply :attr:`reduction` to unreduced losses of an input with ``spatial_dims`` dims."""
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        if self.broadcast_none:
            # MONAI DiceLoss: list(f.shape[0:2]) + [1] * spatial, also when batch made f [C].
            return loss.view(list(loss.shape[0:2]) + [1] * spatial_dims)
        return loss

    def activation(self, channels: int) -> str:
        """The activation the kernel applies for a prediction with ``channels`` channels."""
        if self.sigmoid:
            return "sigmoid"
        if self.softmax and channels > 1:
            return "softmax"
        return "none"

    # -- argument handling ---------------------------------------------------------------------

    def _check_input(self, input: Tensor) -> None:
        owner = type(self).__name__
        if not isinstance(input, Tensor):
            raise LossError(f"{owner}: input must be a torch.Tensor, got {type(input).__name__}")
        if not input.is_floating_point():
            raise LossError(
                f"{owner}: input must be a floating-point prediction (logits or probabilities), "
                f"got dtype {input.dtype}"
            )
        if input.dim() < 3:
            raise LossError(
                f"{owner}: input must be [N, C, *spatial] with at least one spatial dim, got "
                f"shape {tuple(input.shape)}; add the channel dim with input.unsqueeze(1)"
            )

    def _activation(self, channels: int) -> str:
        if self.softmax and channels == 1:
            warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=4)
        return self.activation(channels)

    def _drop_background(self, channels: int) -> bool:
        if self.include_background:
            return False
        if channels == 1:
            warnings.warn(
                "single channel prediction, `include_background=False` ignored.", stacklevel=4
            )
            return False
        return True

    def prepare_target(self, input: Tensor, target: Tensor) -> Tensor:
        """Validate ``target`` against prediction ``input`` and return what the kernel reads.

        A mask of ``input``'s shape or an integer label map passes unchanged; with
        ``to_onehot_y`` a floating-point label map is cast to integers. Raises
        :class:`LossError` for anything else.
        """
        owner = type(self).__name__
        if not isinstance(target, Tensor):
            raise LossError(f"{owner}: target must be a torch.Tensor, got {type(target).__name__}")
        n, channels = input.shape[:2]
        spatial = tuple(input.shape[2:])
        label_shapes = {(n, 1, *spatial), (n, *spatial)}
        shape = tuple(target.shape)
        integer = not target.is_floating_point() and not target.is_complex()
        if self.to_onehot_y:
            if channels == 1:
                warnings.warn(
                    "single channel prediction, `to_onehot_y=True` ignored.", stacklevel=4
                )
            else:
                if shape not in label_shapes:
                    raise LossError(
                        f"{owner}: to_onehot_y=True expects a label map of shape "
                        f"{(n, 1, *spatial)} or {(n, *spatial)}, got {shape}; pass a one-hot "
                        "target with to_onehot_y=False instead"
                    )
                # MONAI's one_hot casts to integers the same way; the map is not expanded.
                return target if integer else target.long()
        if shape == tuple(input.shape):
            return target
        if shape in label_shapes and integer:
            return target
        if shape in label_shapes:
            raise LossError(
                f"{owner}: target of shape {shape} looks like a label map but has dtype "
                f"{target.dtype}; set to_onehot_y=True, or pass class indices as integers "
                f"(target.long()), or a mask of the prediction's shape {tuple(input.shape)}"
            )
        raise LossError(
            f"{owner}: target shape {shape} does not fit prediction shape "
            f"{tuple(input.shape)}; expected a mask of the same shape or an integer label map "
            f"{(n, 1, *spatial)}"
        )

    def _check_finite(self, stats: GLFStats, loss: Tensor) -> None:
        if not self.check_finite or torch.compiler.is_compiling():
            return
        sums = torch.stack(tuple(stats), dim=-1)
        if not bool(torch.isfinite(sums).all()):
            bad = (~torch.isfinite(sums)).flatten(1).any(1).nonzero().flatten().tolist()
            raise LossError(
                f"{type(self).__name__}: the prediction contains NaN or Inf (the TP/FP/FN sums of "
                f"sample(s) {bad} are not finite). Check the network output and the learning "
                "rate (a diverging step is the usual cause), or pass check_finite=False to get "
                "a NaN loss instead of this error."
            )
        if not bool(torch.isfinite(loss).all()):
            raise LossError(
                f"{type(self).__name__}: the loss is not finite although the prediction is: a "
                "ratio has a zero denominator (empty target and empty prediction with "
                "smooth_dr=0); set smooth_dr > 0"
            )

    def extra_repr(self) -> str:
        return (
            f"include_background={self.include_background}, to_onehot_y={self.to_onehot_y}, "
            f"sigmoid={self.sigmoid}, softmax={self.softmax}, reduction={self.reduction!r}, "
            f"smooth_nr={self.smooth_nr}, smooth_dr={self.smooth_dr}, batch={self.batch}"
        )
