"""Fixed convolutions (Bertrand2019, sec. 3.4 and the "Fixed Convolutions" row of table 3.1): new
convolutional layers inserted after chosen layers of a trained network, the same for every image.

Bertrand2019 adds a 3x3x3 convolution after each down-sampling and up-sampling layer of its U-Net
(6 new layers) and notes that, unlike the predicted transfer layers, fixed weights change the
features of every image alike, so they degrade the source population. Here each inserted
convolution is residual, ``F + conv(F)``, and starts at zero, so a fresh layer is the identity;
the backbone is not edited (forward hooks that exist only while this layer's ``forward`` runs).
By default the convolutions follow every block holding a strided or transposed convolution: the
down-sampling and up-sampling layers of MONAI's UNet.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medtune.plugins.transfer.base import TransferError, TransferLayer, check_spatial_dims
from medtune.plugins.transfer.intensity import module_names, output_channels


def sampling_layers(backbone: nn.Module) -> list[str]:
    """Names of the outermost blocks that hold a strided or transposed convolution (the down- and
    up-sampling layers of a U-Net), in registration order."""
    names = []
    for name, module in backbone.named_modules():
        if not isinstance(module, nn.modules.conv._ConvNd):
            continue
        transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
        if transposed or any(s > 1 for s in module.stride):
            block = name.rsplit(".", 1)[0] if "." in name else name
            if block not in names:
                names.append(block)
    # a residual block holds its strided convolution twice (main path and shortcut): keep the block
    return [name for name in names if not any(name.startswith(f"{other}.") for other in names)]


class FixedConvolutions(TransferLayer):
    """``backbone`` with a residual convolution after each of ``layers``; trained, then fixed.

    Args:
        backbone: the network to adapt (e.g. MONAI's UNet); not modified.
        layers: names of the sub-modules followed by a new convolution; ``None``: every
            down-sampling and up-sampling layer (:func:`sampling_layers`).
        kernel_size: side of the new convolutions' kernels (odd).
        spatial_dims: 3 for volumes, 2 for images.
    """

    def __init__(self, backbone: nn.Module, layers: Sequence[str] | None = None, kernel_size: int = 3,
                 spatial_dims: int = 3) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TransferError(f"fixed_convolutions: backbone must be a torch.nn.Module, got "
                                f"{type(backbone).__name__}")
        check_spatial_dims(spatial_dims)
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise TransferError(f"fixed_convolutions: kernel_size must be an odd positive integer, got {kernel_size!r}")
        layers = sampling_layers(backbone) if layers is None else list(layers)
        if not layers:
            raise TransferError(f"fixed_convolutions: {type(backbone).__name__} has no strided or transposed "
                                f"convolution; pass layers= from: {', '.join(module_names(backbone))}")
        modules = dict(backbone.named_modules())
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        convolutions = []
        for layer in layers:
            if layer not in modules or not layer:
                raise TransferError(f"fixed_convolutions: {type(backbone).__name__} has no sub-module {layer!r}; "
                                    f"available: {', '.join(module_names(backbone))}")
            channels = output_channels(modules[layer])
            if channels is None:
                raise TransferError(f"fixed_convolutions: cannot tell how many feature maps leave {layer!r}; "
                                    "choose another layer")
            convolution = conv(channels, channels, kernel_size, padding=kernel_size // 2)
            nn.init.zeros_(convolution.weight)
            nn.init.zeros_(convolution.bias)
            convolutions.append(convolution)
        self.backbone = backbone
        self.layers = layers
        self.predictor = nn.ModuleList(convolutions)
        self._targets = [modules[layer] for layer in layers]  # a list: not registered twice

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        def insert(convolution: nn.Conv3d | nn.Conv2d, layer: str) -> Any:
            def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
                if not isinstance(output, torch.Tensor) or output.dim() < 3 \
                        or output.shape[1] != convolution.in_channels:
                    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                    raise TransferError(f"fixed_convolutions: {layer!r} outputs {shape}, expected "
                                        f"{convolution.in_channels} channels; choose other layers=")
                return output + convolution(output)
            return hook

        handles = [target.register_forward_hook(insert(convolution, layer))
                   for target, convolution, layer in zip(self._targets, self.predictor, self.layers)]
        try:
            return self.backbone(image)
        finally:
            for handle in handles:
                handle.remove()
