"""What the transfer layers of Bertrand2019 (sec. 3.4) share: their error type, the small network
that predicts per-image parameters from the image, and the input-shape check.

The predictor is Bertrand2019's "3-layers ConvNet" (fig. 3.8): three strided 3x3x3 convolutions
with ReLU, then a 1x1x1 convolution to the predicted parameters and a global average pool. The
last convolution starts at zero, so a freshly built transfer layer predicts exactly zero and
its layer is the identity; the wrapped network's behaviour is unchanged until it is trained.
"""

from __future__ import annotations

import torch
from torch import nn

from medtune.errors import MedtuneError


class TransferError(MedtuneError, ValueError):
    """A transfer layer got a bad argument or an input of the wrong shape."""


class ParameterPredictor(nn.Module):
    """``image [N, C, *spatial] -> [N, outputs]``: three strided convolutions, a 1x1 head, a mean.

    Args:
        outputs: number of predicted parameters per image.
        spatial_dims: 2 or 3.
        in_channels: channels of the image.
        hidden: channels of the first convolution (doubled at each of the next two).
    """

    def __init__(self, outputs: int, spatial_dims: int = 3, in_channels: int = 1, hidden: int = 8) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        for name, value in (("outputs", outputs), ("in_channels", in_channels), ("hidden", hidden)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise TransferError(f"{name} must be a positive integer, got {value!r}")
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        widths = (in_channels, hidden, 2 * hidden, 4 * hidden)
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:]):
            layers += [conv(width_in, width_out, 3, stride=2, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = conv(widths[-1], outputs, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.spatial_dims = spatial_dims

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image)).flatten(2).mean(2)


def check_spatial_dims(spatial_dims: int) -> None:
    """Raise :class:`TransferError` unless ``spatial_dims`` is 2 or 3."""
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise TransferError(f"spatial_dims must be 2 (images [N, C, H, W]) or 3 (volumes [N, C, D, H, W]), "
                            f"got {spatial_dims!r}")


def check_input(image: torch.Tensor, spatial_dims: int, in_channels: int, layer: str) -> None:
    """Raise :class:`TransferError` unless ``image`` is a floating tensor of the expected shape."""
    expected = "[N, C, D, H, W]" if spatial_dims == 3 else "[N, C, H, W]"
    if not isinstance(image, torch.Tensor) or image.dim() != spatial_dims + 2:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise TransferError(f"{layer}: expected a {spatial_dims}D input {expected}, got {shape}; build the "
                            f"layer with spatial_dims={2 if spatial_dims == 3 else 3} for the other kind")
    if image.shape[1] != in_channels:
        raise TransferError(f"{layer}: expected {in_channels} input channel(s), got {image.shape[1]}; "
                            "pass in_channels= when building the layer")
    if not image.is_floating_point():
        raise TransferError(f"{layer}: expected a floating-point input, got {image.dtype}")


class TransferLayer(nn.Module):
    """A module wrapping a ``backbone`` (left unedited) with a ``predictor`` of its own.

    Subclasses set ``self.backbone`` and ``self.predictor`` (``None`` when they add nothing).
    Transfer layers stack: ``GeometricTransfer(IntensityTransfer(unet))`` adds both predictors.
    """

    backbone: nn.Module
    predictor: nn.Module | None

    def added_parameters(self) -> list[nn.Parameter]:
        """The parameters this layer, and the transfer layers it wraps, add to the backbone."""
        own = list(self.predictor.parameters()) if self.predictor is not None else []
        inner = self.backbone.added_parameters() if isinstance(self.backbone, TransferLayer) else []
        return own + inner

    @property
    def parameters_added(self) -> int:
        """How many scalar parameters the layer adds (Bertrand2019's "# params", table 3.1)."""
        return sum(p.numel() for p in self.added_parameters())

    @property
    def base(self) -> nn.Module:
        """The innermost wrapped network (the backbone below every stacked transfer layer)."""
        return self.backbone.base if isinstance(self.backbone, TransferLayer) else self.backbone
