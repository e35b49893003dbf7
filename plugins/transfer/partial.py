"""Partial fine-tuning (Bertrand2019, sec. 3.3.3, fig. 3.7): train only the first or the last ``k``
layers of a network and freeze the rest.

A *layer* here is a convolution or linear map together with the parameters of the modules that
follow it before the next one (its normalisation, its activation), in the order the network
registers its modules - the order data flows through for sequential networks and MONAI's UNet
(down-sampling path, bottom, up-sampling path). Bertrand2019 fine-tunes "the last 7 convolutional
layers or the first 8", i.e. those after or before the first up-sampling layer, which
:func:`first_upsampling_layer` finds.
"""

from __future__ import annotations

import torch
from torch import nn

from medtune.plugins.transfer.base import TransferError, TransferLayer

ENDS = ("first", "last")

#: module types that start a new layer
LAYER_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def parameter_layers(module: nn.Module) -> list[list[tuple[str, nn.Parameter]]]:
    """``module``'s parameters grouped into layers, each a list of ``(name, parameter)``.

    A convolution or linear module opens a layer; other modules with parameters of their own
    (normalisations, PReLU) join the layer before them (or the first, if none came before).
    """
    layers: list[list[tuple[str, nn.Parameter]]] = []
    leading: list[tuple[str, nn.Parameter]] = []
    for module_name, child in module.named_modules():
        own = [(f"{module_name}.{name}" if module_name else name, p)
               for name, p in child.named_parameters(recurse=False)]
        if isinstance(child, LAYER_TYPES):
            layers.append(own)
        elif own:
            (layers[-1] if layers else leading).extend(own)
    if leading:
        if not layers:
            return [leading]
        layers[0] = leading + layers[0]
    return layers


def first_upsampling_layer(module: nn.Module) -> int:
    """How many layers come before the first transposed convolution (the first up-sampling
    layer of a U-Net); raises :class:`TransferError` if there is none."""
    modules = dict(module.named_modules())
    for index, layer in enumerate(parameter_layers(module)):
        owners = {name.rsplit(".", 1)[0] if "." in name else "" for name, _ in layer}
        if any(isinstance(modules.get(owner), nn.modules.conv._ConvTransposeNd) for owner in owners):
            return index
    raise TransferError(f"{type(module).__name__} has no transposed convolution (no up-sampling layer); "
                        "give the number of layers explicitly")


def freeze_all_but(module: nn.Module, k: int, end: str = "last") -> int:
    """Freeze every parameter of ``module`` except those of its first or last ``k`` layers.

    Args:
        module: any network; its parameters' ``requires_grad`` flags are set in place.
        k: how many layers stay trainable, 1 to the number of layers.
        end: ``"first"`` or ``"last"``.

    Returns:
        The number of trainable scalar parameters left.
    """
    if end not in ENDS:
        raise TransferError(f"partial: end must be one of {ENDS}, got {end!r}")
    layers = parameter_layers(module)
    if not layers:
        raise TransferError(f"partial: {type(module).__name__} has no parameters to fine-tune")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(layers):
        raise TransferError(f"partial: k must be an integer from 1 to {len(layers)} (the layers of "
                            f"{type(module).__name__}), got {k!r}")
    chosen = layers[:k] if end == "first" else layers[len(layers) - k:]
    trainable = {id(p) for layer in chosen for _, p in layer}
    for p in module.parameters():
        p.requires_grad_(id(p) in trainable)
    return trainable_parameters(module)


def trainable_parameters(module: nn.Module) -> int:
    """The number of scalar parameters of ``module`` that require gradients."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class PartialFineTuning(TransferLayer):
    """A network of which only the first or last ``k`` layers train; adds no parameters.

    Building it freezes the other layers of ``backbone`` (their ``requires_grad`` flags; the
    network is otherwise untouched); its forward is the backbone's.

    Args:
        backbone: the network to fine-tune partially.
        k: trainable layers, 1 to the number of layers; ``None``: split at the first
            up-sampling layer (the layers before it for ``end="first"``, after it for ``"last"``).
        end: ``"first"`` or ``"last"``.
    """

    def __init__(self, backbone: nn.Module, k: int | None = None, end: str = "last") -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TransferError(f"partial: backbone must be a torch.nn.Module, got {type(backbone).__name__}")
        if k is None:
            split = first_upsampling_layer(backbone)
            k = split if end == "first" else len(parameter_layers(backbone)) - split
        self.backbone = backbone
        self.predictor = None
        self.k = k
        self.end = end
        freeze_all_but(backbone, k, end)

    @property
    def trainable_parameters(self) -> int:
        """The number of scalar parameters left trainable."""
        return trainable_parameters(self.backbone)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.backbone(image)
