"""The intensity transfer layer (Bertrand2019, sec. 3.4.2, fig. 3.8): a per-image, per-feature-map
affine change of the wrapped network's features at one layer.

For an image ``I`` a small network predicts, for each of the ``n`` feature maps ``F_i`` leaving
the chosen layer, a scale ``K_i(I)`` and a bias ``b_i(I)`` (``2n`` parameters per image), and the
layer's output becomes ``K_i(I)·F_i + b_i(I)`` (a predicted 1x1x1 convolution applied to each
map, like FiLM). Bertrand2019 places it at the lowest level of the U-Net, which is the default here
for MONAI's UNet (the innermost ``SkipConnection``'s sub-module); any named sub-module of any
backbone can be chosen instead.

The backbone is not edited: the change is made by a forward hook that exists only while this
layer's ``forward`` runs, so the backbone called on its own behaves as before. Scales are
``1 + r`` and biases ``r`` for the predictor's raw outputs ``r``, which start at zero: a fresh
layer is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medtune.plugins.transfer.base import (
    ParameterPredictor,
    TransferError,
    TransferLayer,
    check_input,
    check_spatial_dims,
)


def unet_bottom(backbone: nn.Module) -> str:
    """The name of the lowest level of a MONAI-style U-Net: the innermost ``SkipConnection``'s
    ``submodule``. Raises :class:`TransferError` (listing the module names) when there is none."""
    skips = [name for name, module in backbone.named_modules() if type(module).__name__ == "SkipConnection"]
    if not skips:
        raise TransferError(f"intensity: {type(backbone).__name__} has no SkipConnection, so the bottom of a "
                            f"U-Net cannot be found; pass layer= one of: {', '.join(module_names(backbone))}")
    innermost = max(skips, key=lambda name: name.count("."))
    return f"{innermost}.submodule" if innermost else "submodule"


def module_names(backbone: nn.Module) -> list[str]:
    """The names of ``backbone``'s sub-modules, as ``layer=`` accepts them."""
    return [name for name, _ in backbone.named_modules() if name]


def output_channels(module: nn.Module) -> int | None:
    """The channels a module outputs when they can be read from it: its own ``out_channels``, else
    that of its last convolution; ``None`` if neither exists."""
    own = getattr(module, "out_channels", None)
    if isinstance(own, int):
        return own
    convolutions = [m for m in module.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return convolutions[-1].out_channels if convolutions else None


class IntensityTransfer(TransferLayer):
    """``backbone`` with the feature maps leaving ``layer`` scaled and shifted per image.

    Args:
        backbone: the network to adapt (e.g. MONAI's UNet); not modified.
        layer: name of the sub-module whose output is transformed (as in ``named_modules()``);
            ``None``: the bottom of a MONAI UNet.
        channels: feature maps leaving ``layer``; ``None``: read from the module (its
            ``out_channels`` or that of its last convolution).
        spatial_dims: 3 for volumes ``[N, C, D, H, W]``, 2 for images ``[N, C, H, W]``.
        in_channels: channels of the input image (the predictor's input).
        hidden: width of the predictor's first convolution.
    """

    def __init__(self, backbone: nn.Module, layer: str | None = None, channels: int | None = None,
                 spatial_dims: int = 3, in_channels: int = 1, hidden: int = 8) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TransferError(f"intensity: backbone must be a torch.nn.Module, got {type(backbone).__name__}")
        check_spatial_dims(spatial_dims)
        layer = unet_bottom(backbone) if layer is None else layer
        modules = dict(backbone.named_modules())
        if layer not in modules or not layer:
            raise TransferError(f"intensity: {type(backbone).__name__} has no sub-module {layer!r}; available: "
                                f"{', '.join(module_names(backbone))}")
        target = modules[layer]
        channels = output_channels(target) if channels is None else channels
        if channels is None:
            raise TransferError(f"intensity: cannot tell how many feature maps leave {layer!r} "
                                f"({type(target).__name__}); pass channels=")
        if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
            raise TransferError(f"intensity: channels must be a positive integer, got {channels!r}")
        self.backbone = backbone
        self.layer = layer
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.predictor = ParameterPredictor(2 * channels, spatial_dims, in_channels, hidden)
        self._target = [target]  # a list, so the target is not registered a second time as a child

    def intensity_parameters(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The predicted ``(scales, biases)`` of each image, each ``[N, channels]``."""
        check_input(image, self.spatial_dims, self.in_channels, "intensity")
        raw = self.predictor(image)
        return 1.0 + raw[:, :self.channels], raw[:, self.channels:]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        scales, biases = self.intensity_parameters(image)
        view = (*scales.shape, *[1] * self.spatial_dims)

        def modulate(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
            if not isinstance(output, torch.Tensor) or output.dim() != 2 + self.spatial_dims \
                    or output.shape[:2] != scales.shape:
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise TransferError(f"intensity: {self.layer!r} outputs {shape}, expected [{scales.shape[0]}, "
                                    f"{self.channels}, ...]; pass the right channels= or another layer=")
            return output * scales.view(view).to(output.dtype) + biases.view(view).to(output.dtype)

        handle = self._target[0].register_forward_hook(modulate)
        try:
            return self.backbone(image)
        finally:
            handle.remove()
