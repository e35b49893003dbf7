"""The ``template`` deformation plugin: deep template deformation (Bertrand2019, sec. 4.4).

A network looks at an image and predicts how to deform a fixed binary template ``φ0`` onto the
organ it shows: a global similarity ``G`` (9 parameters of eq. 4.8) and a local displacement
field ``L = Id + u`` (eq. 4.9). The segmentation is ``φ0 ∘ L ∘ G`` (eq. 4.7), computed in one
call of :func:`medtune.kernels.warp3d`, and the training loss is
``Dice(φ0 ∘ L ∘ G, label) + λ/2 ‖L − Id‖²`` (eq. 4.10-4.11). A fresh model returns the template
itself. The deformed template stays one connected component: ``G`` has positive scales and the
bounded, smoothed field cannot fold, so a larger ``max_displacement`` than
:func:`safe_max_displacement` is refused. :func:`choose_template` picks the training label
closest to the mean shape (sec. 4.4.3). The architecture, the bound and where it departs from
Bertrand2019: docs/deformations.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor, nn

from medtune.errors import MedtuneError
from medtune.kernels import warp3d
from medtune.plugins.deformations.transforms import gaussian_kernel1d, similarity_matrix, smooth_displacement

#: The scales of ``G`` stay in ``[1/SCALE_BOUND, SCALE_BOUND]``.
SCALE_BOUND = 2.0
#: Bound on the norm of the Jacobian of the local displacement (< 1: no folding).
JACOBIAN_BOUND = 0.9


class TemplateError(MedtuneError, ValueError):
    """A template deformation got a template, image or label of the wrong shape or content."""


@dataclass
class TemplateOutput:
    """What :class:`TemplateDeformation` returns for a batch of images.

    ``segmentation`` [N, 1, D, H, W] in [0, 1] is ``φ0 ∘ L ∘ G``; ``params`` [N, 9] are
    ``(tx, ty, tz, rx, ry, rz, sx, sy, sz)`` of ``G``; ``affine`` [N, 3, 4] is ``G`` as given to
    the warp; ``displacement`` [N, 3, d, h, w] is ``u = L − Id`` in normalised units at the
    reduced resolution.
    """

    segmentation: Tensor
    params: Tensor
    affine: Tensor
    displacement: Tensor


def count_components(mask: Tensor | np.ndarray) -> int:
    """The number of 26-connected components of a binary volume [D, H, W] (see the module docstring)."""
    volume = torch.as_tensor(mask).detach().cpu().numpy().astype(bool)
    return int(ndimage.label(volume, structure=np.ones((3,) * volume.ndim, dtype=bool))[1])


def check_template(template: Tensor | np.ndarray) -> Tensor:
    """Validate a binary template of one connected component; return it as float32 [1, 1, D, H, W].

    Accepts [D, H, W], [1, D, H, W] or [1, 1, D, H, W], boolean, integer or float holding only 0
    and 1. Raises :class:`TemplateError` otherwise (non-binary, empty, several components).
    """
    template = torch.as_tensor(template)
    while template.dim() > 3 and template.shape[0] == 1:
        template = template[0]
    if template.dim() != 3:
        raise TemplateError(f"template: expected a 3D binary mask [D, H, W] (or [1, 1, D, H, W]), got shape "
                            f"{tuple(torch.as_tensor(template).shape)}")
    values = torch.unique(template)
    if template.is_complex() or not bool(((values == 0) | (values == 1)).all()):
        shown = values[:6].tolist()
        raise TemplateError(f"template: must be binary (0 and 1 only), got values {shown}; threshold it first, "
                            "e.g. template > 0.5")
    mask = template.detach().cpu().numpy().astype(bool)
    count = ndimage.label(mask)[1]
    if count != 1:
        raise TemplateError(f"template: must be one connected component, got {count}; keep the largest "
                            "component (scipy.ndimage.label) or choose another label")
    return template.to(torch.float32)[None, None].contiguous()


def choose_template(labels: Sequence[Tensor | np.ndarray]) -> tuple[Tensor, int]:
    """Pick the label closest to the mean shape; return ``(template [1, 1, D, H, W], index)``.

    The mean shape is the voxel-wise mean of all labels (the probability of "organ" at each
    voxel); the chosen label is the one with the smallest squared distance to it, among the
    labels that form a single connected component. Remove volume ``index`` from the data the
    model is trained and evaluated on (Bertrand2019, sec. 4.4.3).
    """
    if len(labels) == 0:
        raise TemplateError("choose_template: got no labels; pass the training labels")
    masks = [torch.as_tensor(label).reshape(torch.as_tensor(label).shape[-3:]) for label in labels]
    if any(mask.shape != masks[0].shape for mask in masks):
        raise TemplateError(f"choose_template: all labels must share one shape, got "
                            f"{sorted({tuple(m.shape) for m in masks})}")
    stack = torch.stack([mask.float() for mask in masks])
    mean = stack.mean(0)
    distances = ((stack - mean) ** 2).flatten(1).sum(1)
    for index in torch.argsort(distances).tolist():
        mask = stack[index].numpy() > 0.5
        if mask.any() and ndimage.label(mask)[1] == 1:
            return check_template(stack[index] > 0.5), int(index)
    raise TemplateError("choose_template: no label is a single non-empty connected component")


def safe_max_displacement(field_size: Sequence[int], sigma: float, bound: float = JACOBIAN_BOUND) -> float:
    """The largest bound ``m`` (normalised units) on the raw field for which ``Id + K_σ * v`` cannot fold.

    ``field_size`` is the low-resolution field's ``(d, h, w)``; ``sigma`` the smoothing in field
    voxels. See the module docstring for the argument: ``3·m·TV(K_σ)/h <= bound``.
    """
    kernel = gaussian_kernel1d(float(sigma), dtype=torch.float64)
    padded = torch.cat([kernel.new_zeros(1), kernel, kernel.new_zeros(1)])
    total_variation = float((padded[1:] - padded[:-1]).abs().sum())
    spacing = 2.0 / max(int(s) for s in field_size)  # align_corners=False
    return bound * spacing / (3.0 * total_variation)


def _block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.LeakyReLU(0.1),
        nn.Conv3d(out_channels, out_channels, 3, padding=1),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.LeakyReLU(0.1),
    )


class TemplateDeformation(nn.Module):
    """The template network: image [N, 1, D, H, W] -> :class:`TemplateOutput` (eq. 4.7).

    Args:
        template: the binary template ``φ0`` (one connected component), at the images' size.
        width: channels of the first encoder level, doubled at each of the two lower levels.
        input_stride: the image is average-pooled by this factor before the encoder.
        field_stride: the local field has the template's size divided by this (4: 12³ at 48³).
        sigma: Gaussian smoothing ``K_σ`` of the field, in field voxels (eq. 4.9).
        max_displacement: bound on the raw field in normalised units; default (``None``) and
            upper limit :func:`safe_max_displacement`.
        regularization: ``λ`` of eq. 4.11, on ``u`` measured in template voxels.
        global_transform: predict ``G`` (``False``: identity ``G``, Bertrand2019's "Deformation"
            row).
        local_transform: predict ``L`` (``False``: identity ``L``).
        global_layers: ``3×3×3`` convolutions before the global head's ``1×1×1`` convolution
            (0 is Bertrand2019's head; its conclusion, sec. 4.7, proposes one or two more
            layers against the correlated parameters it observed).
    """

    def __init__(self, template: Tensor | np.ndarray, width: int = 8, input_stride: int = 2,
                 field_stride: int = 4, sigma: float = 1.0, max_displacement: float | None = None,
                 regularization: float = 0.01, global_transform: bool = True,
                 local_transform: bool = True, global_layers: int = 2) -> None:
        super().__init__()
        self.register_buffer("template", check_template(template))
        size = tuple(self.template.shape[2:])
        for name, value in (("width", width), ("input_stride", input_stride), ("field_stride", field_stride)):
            if int(value) != value or value < 1:
                raise TemplateError(f"template: {name} must be a positive integer, got {value!r}")
        if int(global_layers) != global_layers or global_layers < 0:
            raise TemplateError(f"template: global_layers must be an integer >= 0, got {global_layers!r}")
        if any(s % (input_stride * 4) or s % field_stride for s in size):
            raise TemplateError(f"template: the template's size {size} must be divisible by 4·input_stride = "
                                f"{4 * input_stride} and by field_stride = {field_stride}")
        if field_stride < input_stride or field_stride > 4 * input_stride or field_stride % input_stride:
            raise TemplateError(f"template: field_stride ({field_stride}) must be input_stride ({input_stride}) "
                                "times 1, 2 or 4")
        if not sigma >= 0 or not regularization >= 0:
            raise TemplateError(f"template: sigma and regularization must be >= 0, got {sigma}, {regularization}")
        if not (global_transform or local_transform):
            raise TemplateError("template: enable at least one of global_transform and local_transform")
        self.size = size
        self.input_stride = int(input_stride)
        self.field_size = tuple(s // field_stride for s in size)
        self.sigma = float(sigma)
        safe = safe_max_displacement(self.field_size, self.sigma)
        if max_displacement is not None and not 0 < max_displacement <= safe:
            raise TemplateError(f"template: max_displacement must lie in (0, {safe:.4g}] for sigma = {sigma} "
                                f"and a {self.field_size} field, or the warp may fold; got {max_displacement}")
        self.max_displacement = safe if max_displacement is None else float(max_displacement)
        self.regularization = float(regularization)
        self.global_transform = bool(global_transform)
        self.local_transform = bool(local_transform)

        w = int(width)
        self.encoder = nn.ModuleList([_block(4, w), _block(w, 2 * w, 2), _block(2 * w, 4 * w, 2)])
        self.global_head = nn.Sequential(
            *[layer for i in range(global_layers)
              for layer in (nn.Conv3d(4 * w + (3 if i == 0 else 0), 4 * w, 3, padding=1), nn.LeakyReLU(0.1))],
            nn.Conv3d(4 * w + (3 if global_layers == 0 else 0), 10, kernel_size=1),
        ) if self.global_transform else None
        self.levels_up = int(round(math.log2(4 * input_stride // field_stride)))  # 0, 1 or 2
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        channels = 4 * w
        # U-Net-like decoder of the local head: upsample, concatenate the encoder's skip, convolve
        for _ in range(self.levels_up if self.local_transform else 0):
            self.up.append(nn.ConvTranspose3d(channels, channels // 2, kernel_size=2, stride=2))
            self.decoder.append(_block(channels, channels // 2))
            channels //= 2
        self.field_head = nn.Conv3d(channels, 3, kernel_size=3, padding=1) if self.local_transform else None
        for head in (self.global_head[-1] if self.global_head else None, self.field_head):
            if head is not None:  # identity deformation at initialisation
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def forward(self, image: Tensor) -> TemplateOutput:
        """Deform the template onto each image of the batch [N, 1, D, H, W] (template's size)."""
        if not isinstance(image, Tensor) or image.dim() != 5 or image.shape[1] != 1 \
                or tuple(image.shape[2:]) != self.size:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise TemplateError(f"template: image must be [N, 1, {', '.join(map(str, self.size))}] (the "
                                f"template's size), got {shape}")
        if not image.is_floating_point():
            raise TemplateError(f"template: image must be floating point, got {image.dtype}")
        n = image.shape[0]
        x = nn.functional.avg_pool3d(image, self.input_stride) if self.input_stride > 1 else image
        x = torch.cat([x, _coordinates(x)], dim=1)
        features = []
        for block in self.encoder:
            x = block(x)
            features.append(x)
        deepest = features[-1]
        if self.global_transform:
            maps = self.global_head(torch.cat([deepest, _coordinates(deepest)], dim=1)).flatten(2)
            attention = torch.softmax(maps[:, 9:], dim=2)  # uniform at initialisation: average pooling
            params = _similarity_params((maps[:, :9] * attention).sum(2))
        else:
            params = _similarity_params(deepest.new_zeros(n, 9))
        affine = similarity_matrix(params)
        if self.local_transform:
            y = deepest
            for level, (up, block) in enumerate(zip(self.up, self.decoder)):
                y = block(torch.cat([up(y), features[-2 - level]], dim=1))
            raw = self.max_displacement * torch.tanh(self.field_head(y))
            displacement = smooth_displacement(raw, "gaussian", sigma=self.sigma)
        else:
            displacement = deepest.new_zeros(n, 3, *self.field_size)
        segmentation = warp3d(self.template.expand(n, -1, -1, -1, -1), displacement, affine,
                              compose="affine_first", padding_mode="zeros", align_corners=False,
                              size=self.size)
        return TemplateOutput(segmentation, params, affine, displacement)

    def loss(self, output: TemplateOutput, label: Tensor) -> Tensor:
        """``Dice(φ0 ∘ L ∘ G, label) + λ/2 ‖L − Id‖²`` (eq. 4.10-4.11), averaged over the batch.

        The Dice term is the soft Dice loss ``1 − 2|A∩B| / (|A| + |B|)`` per volume; ``‖L − Id‖²``
        is the mean squared displacement in template voxels.
        """
        if not isinstance(label, Tensor) or label.shape != output.segmentation.shape:
            shape = tuple(label.shape) if isinstance(label, Tensor) else type(label).__name__
            raise TemplateError(f"template: label must have the segmentation's shape "
                                f"{tuple(output.segmentation.shape)}, got {shape}")
        return soft_dice_loss(output.segmentation, label) + \
            0.5 * self.regularization * displacement_energy(output.displacement, self.size)


def soft_dice_loss(prediction: Tensor, label: Tensor, smooth: float = 1e-5) -> Tensor:
    """Mean over the batch of ``1 − (2 Σ p·y + s) / (Σ p + Σ y + s)`` for [N, 1, ...] tensors."""
    label = label.to(prediction.dtype)
    overlap = (prediction * label).flatten(1).sum(1)
    total = prediction.flatten(1).sum(1) + label.flatten(1).sum(1)
    return (1 - (2 * overlap + smooth) / (total + smooth)).mean()


def displacement_energy(displacement: Tensor, size: Sequence[int]) -> Tensor:
    """``‖u‖²``: mean over voxels and batch of the squared displacement, converted to voxels of ``size``.

    ``displacement`` [N, 3, d, h, w] is in normalised units, channels ``(x, y, z) = (W, H, D)``;
    ``size`` the template's ``(D, H, W)``.
    """
    half = torch.tensor([size[2], size[1], size[0]], dtype=displacement.dtype, device=displacement.device) / 2
    return ((displacement * half[None, :, None, None, None]) ** 2).sum(1).mean()


def _similarity_params(raw: Tensor) -> Tensor:
    """Map unconstrained outputs [N, 9] to ``(t, r, s)``; zeros give the identity."""
    bound = math.log(SCALE_BOUND)
    scales = torch.exp(bound * torch.tanh(raw[:, 6:] / bound))
    return torch.cat([raw[:, :6], scales], dim=1)


def _coordinates(like: Tensor) -> Tensor:
    """Normalised (x, y, z) coordinate channels [N, 3, D, H, W] matching ``like``."""
    n, _, d, h, w = like.shape
    axes = [torch.linspace(-1, 1, s, dtype=like.dtype, device=like.device) for s in (d, h, w)]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([xx, yy, zz])[None].expand(n, -1, -1, -1, -1)
