"""The quality-surrogate loss (Kofler2022, outlook): a frozen DQE estimator scores a prediction.

A segmentation network's soft prediction and the image it segments go through a trained
:class:`~medtune.plugins.quality.dqe.DQE` estimator, whose predicted star rating ``r`` becomes
the loss ``weight (max_rating - r) / (max_rating - min_rating)``: 0 for a 6-star segmentation,
``weight`` for a 1-star one. The estimator is frozen - its parameters never receive gradients
and it stays in eval mode (batch-norm statistics fixed) - so only the segmentation network
learns. With ``dice_weight > 0`` the Dice loss of the same prediction is added (the surrogate
alone has no notion of the truth; combined with Dice it acts as a learned quality prior).

The prediction's channels follow the estimator's label encoding:

- ``"brats"``: logits ``[B, 3, H, W]`` of the enhancing tumour, tumour core and whole tumour,
  each through a sigmoid (targets for the Dice term: the three region masks);
- ``"tissue"``: logits ``[B, 4, H, W]`` of background, necrosis, oedema, enhancing tumour
  through a softmax, encoded as the expected tissue level ``p1/3 + 2 p2/3 + p3`` (targets for
  the Dice term: a label map of the class indices 0-3).

The image is passed as a keyword: ``loss(logits, target, image=images)``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from medtune.errors import LossError
from medtune.losses import non_negative
from medtune.plugins.losses.overlap import DiceLoss
from medtune.plugins.quality.dqe import DQE
from medtune.plugins.quality.raters import MAX_RATING, MIN_RATING

#: Prediction channels expected for each label encoding.
PREDICTION_CHANNELS = {"brats": 3, "tissue": 4}


class QualitySurrogateLoss(nn.Module):
    """``weight`` times the frozen ``estimator``'s scaled rating deficit, plus ``dice_weight``
    times the Dice loss. ``estimator`` is a :class:`DQE` or the path of a DQE checkpoint;
    ``dice_options`` go to the Dice loss (default: ``sigmoid=True`` for the BraTS encoding,
    ``softmax=True, to_onehot_y=True`` for the tissue encoding)."""

    def __init__(self, estimator: DQE | str | Path, *, weight: float = 1.0, dice_weight: float = 0.0,
                 dice_options: dict | None = None) -> None:
        super().__init__()
        if isinstance(estimator, (str, Path)):
            estimator = DQE.load(estimator)
        if not isinstance(estimator, DQE):
            raise LossError(f"quality_surrogate: estimator must be a DQE or a checkpoint path, got "
                            f"{type(estimator).__name__}")
        self.weight = non_negative("weight", weight, "quality_surrogate")
        self.dice_weight = non_negative("dice_weight", dice_weight, "quality_surrogate")
        # a plain attribute, not a submodule: the estimator's parameters stay out of the
        # segmentation optimiser and out of .train()
        self.estimator = estimator
        for parameter in estimator.network.parameters():
            parameter.requires_grad_(False)
        estimator.network.eval()
        self.channels = PREDICTION_CHANNELS[estimator.label_encoding]
        default = {"sigmoid": True} if estimator.label_encoding == "brats" else {"softmax": True, "to_onehot_y": True}
        self.dice = DiceLoss(**(default if dice_options is None else dice_options)) if self.dice_weight else None

    def encode(self, logits: Tensor) -> Tensor:
        """The soft label channels the estimator reads from prediction ``logits``."""
        if self.estimator.label_encoding == "brats":
            return torch.sigmoid(logits)
        probabilities = torch.softmax(logits, dim=1)
        levels = torch.tensor([0.0, 1 / 3, 2 / 3, 1.0], dtype=logits.dtype, device=logits.device)
        return (probabilities * levels[None, :, None, None]).sum(1, keepdim=True)

    def forward(self, input: Tensor, target: Tensor | None = None, *, image: Tensor) -> Tensor:
        """The loss of prediction logits ``input`` ``[B, channels, H, W]`` of ``image``
        ``[B, contrasts, H, W]`` (``target`` is needed only with ``dice_weight > 0``)."""
        if input.ndim != 4 or input.shape[1] != self.channels:
            raise LossError(f"quality_surrogate: expected logits [B, {self.channels}, H, W] for the "
                            f"{self.estimator.label_encoding} encoding, got {tuple(input.shape)}")
        network = self.estimator.network
        network.eval()
        if next(network.parameters()).device != input.device:
            network.to(input.device)
        rating = self.estimator.rate_soft(image.to(input.dtype), self.encode(input))
        deficit = ((MAX_RATING - rating) / (MAX_RATING - MIN_RATING)).mean()
        loss = self.weight * deficit
        if self.dice is not None:
            if target is None:
                raise LossError("quality_surrogate: dice_weight > 0 needs the target; call "
                                "loss(logits, target, image=...)")
            loss = loss + self.dice_weight * self.dice(input, target)
        return loss
