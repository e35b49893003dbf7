"""The geometric transfer layer (Bertrand2019, sec. 3.4.1, "Geometric Input" of table 3.1).

A small network predicts, for each image, a similarity transform ``G``: translation, rotation
and scaling along each axis (9 parameters in 3D; 5 in 2D: two translations, one angle, two
scales). The image is resampled through ``G`` (trilinear, with :func:`medtune.kernels.warp3d`)
before it enters the wrapped network, which thus sees it "projected on the adults' space"; the
network's output is resampled back through ``G⁻¹`` so the segmentation lies on the input's grid.

The predictor's raw outputs ``r`` map to bounded transforms, ``m·tanh(r/m)`` (slope 1 at 0) for
each bound ``m``: translations (normalised units) up to ``max_translation``, angles (radians) up
to ``max_rotation``, and scales ``exp(·)`` with ``|log scale|`` up to ``log(max_scale)``, so that a
large step of the optimiser cannot move the organ out of the field of view. The predictor starts
at zero, so a fresh layer applies the identity and the wrapped network's output is returned
unchanged (bit for bit: warp3d returns its input exactly for an identity transform).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medtune.kernels import warp3d
from medtune.plugins.deformations.transforms import (
    similarity_inverse,
    similarity_inverse_2d,
    similarity_matrix,
    similarity_matrix_2d,
)
from medtune.plugins.transfer.base import (
    ParameterPredictor,
    TransferError,
    TransferLayer,
    check_input,
    check_spatial_dims,
)

PADDING_MODES = ("border", "zeros")


class GeometricTransfer(TransferLayer):
    """``image -> G⁻¹(backbone(G(image)))`` with ``G`` predicted from the image.

    Args:
        backbone: the network to adapt (e.g. MONAI's UNet); not modified. Its output must have
            the input's spatial size (a segmentation network).
        spatial_dims: 3 for volumes ``[N, C, D, H, W]``, 2 for images ``[N, C, H, W]``.
        in_channels: channels of the input image.
        hidden: width of the predictor's first convolution.
        padding_mode: value outside the resampled input and output, ``"border"`` (default) or
            ``"zeros"``.
        align_corners: ``grid_sample``'s convention for both resamplings.
        max_translation: bound of each translation, in normalised units (1 = half the field).
        max_rotation: bound of each angle, in radians.
        max_scale: scales stay within ``[1 / max_scale, max_scale]``.
    """

    def __init__(self, backbone: nn.Module, spatial_dims: int = 3, in_channels: int = 1, hidden: int = 8,
                 padding_mode: str = "border", align_corners: bool = False, max_translation: float = 0.5,
                 max_rotation: float = math.pi / 4, max_scale: float = 2.0) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TransferError(f"geometric: backbone must be a torch.nn.Module, got {type(backbone).__name__}")
        check_spatial_dims(spatial_dims)
        if padding_mode not in PADDING_MODES:
            raise TransferError(f"geometric: padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        for name, value, low in (("max_translation", max_translation, 0.0), ("max_rotation", max_rotation, 0.0),
                                 ("max_scale", max_scale, 1.0)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > low):
                raise TransferError(f"geometric: {name} must be a finite number > {low:g}, got {value!r}")
        translations, rotations = (3, 3) if spatial_dims == 3 else (2, 1)
        bounds = [max_translation] * translations + [max_rotation] * rotations + [math.log(max_scale)] * translations
        self.register_buffer("bounds", torch.tensor(bounds), persistent=False)
        self.backbone = backbone
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.padding_mode = padding_mode
        self.align_corners = bool(align_corners)
        self.predictor = ParameterPredictor(9 if spatial_dims == 3 else 5, spatial_dims, in_channels, hidden)

    def transform_parameters(self, image: torch.Tensor) -> torch.Tensor:
        """The predicted similarity of each image: ``[N, 9]`` = ``(tx, ty, tz, rx, ry, rz, sx, sy, sz)``
        (2D: ``[N, 5]`` = ``(tx, ty, angle, sx, sy)``), as the transform builders take them."""
        check_input(image, self.spatial_dims, self.in_channels, "geometric")
        bounds = self.bounds.to(image.dtype)
        bounded = bounds * torch.tanh(self.predictor(image) / bounds)
        rigid = 6 if self.spatial_dims == 3 else 3
        return torch.cat([bounded[:, :rigid], bounded[:, rigid:].exp()], dim=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        params = self.transform_parameters(image)
        if self.spatial_dims == 3:
            forward_affine, inverse_affine = similarity_matrix(params), similarity_inverse(params)
        else:
            forward_affine, inverse_affine = similarity_matrix_2d(params), similarity_inverse_2d(params)
        options = {"padding_mode": self.padding_mode, "align_corners": self.align_corners}
        projected = warp3d(image, affine=forward_affine.to(image.dtype), **options)
        output = self.backbone(projected)
        if output.shape[2:] != image.shape[2:]:
            raise TransferError(f"geometric: the backbone's output has spatial size {tuple(output.shape[2:])}, "
                                f"the input {tuple(image.shape[2:])}; the layer needs a segmentation network "
                                "whose output lies on the input's grid")
        return warp3d(output, affine=inverse_affine.to(output.dtype), **options)
