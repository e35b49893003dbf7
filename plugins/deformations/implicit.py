"""The ``implicit`` deformation plugin: implicit template deformation (Bertrand2019, sec. 4.3).

No training data: the deformation ``ψ = L ∘ G`` of a binary template ``φ0`` onto one image is
found by minimising the region energy of eq. 4.3 plus ``λ/2 ‖L − Id‖²`` (eq. 4.6) by gradient
descent (Adam) on the 9 similarity parameters of ``G`` (eq. 4.8) and a low-resolution field
``v`` with ``L = Id + K_σ * v`` (eq. 4.4-4.5): first on ``G`` alone (pose), then on both
(shape), as in Mory et al. (2012). ``v`` is bounded so that ``L`` cannot fold and the result
stays one connected component. Passing a ``template`` network's ``params`` and
``displacement`` refines its result. The energy terms, the schedule and the accuracy:
docs/deformations.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from medtune.kernels import warp3d
from medtune.plugins.deformations.template import (
    TemplateError,
    check_template,
    displacement_energy,
    safe_max_displacement,
)
from medtune.plugins.deformations.transforms import similarity_matrix, smooth_displacement


@dataclass
class ImplicitResult:
    """The solution for a batch: ``segmentation`` [N, 1, D, H, W] in [0, 1] (the binary template
    warped by ``L ∘ G`` like the ``template`` network's output; threshold at 0.5), ``params``
    [N, 9] of ``G``, ``displacement`` [N, 3, d, h, w] = ``u = K_σ * v`` in normalised units, and
    the energy after every step."""

    segmentation: Tensor
    params: Tensor
    displacement: Tensor
    energy: list[float] = field(default_factory=list)


class ImplicitDeformation:
    """``deformation(image, params=None, displacement=None) -> ImplicitResult`` (eq. 4.3-4.6).

    Args:
        template: the binary template ``φ0`` (one connected component) at the images' size.
        global_iterations: gradient steps on ``G`` alone, split evenly over ``widths`` and the
            final stage.
        local_iterations: gradient steps on ``G`` and ``v`` together afterwards (0: pose only).
        lr: Adam's initial step size (cosine-decayed to 1 % in each phase) for translations
            (normalised units), angles (radians), log-scales and ``v`` (normalised units, scaled by ``max_displacement``).
        field_stride: ``v`` has the template's size divided by this.
        sigma: ``K_σ`` of eq. 4.5, in field voxels.
        regularization: ``λ`` of eq. 4.6, on ``u`` measured in template voxels.
        image_sigma: Gaussian smoothing of the image before the region terms, in voxels.
        widths: ``ε`` of the smooth Heaviside for the coarse-to-fine global stage, in voxels.
        max_displacement: bound ``m`` on ``v``; default and upper limit the no-fold bound.
    """

    def __init__(self, template: Tensor | np.ndarray, global_iterations: int = 150,
                 local_iterations: int = 50, lr: float = 0.01, field_stride: int = 4, sigma: float = 1.0,
                 regularization: float = 0.01, image_sigma: float = 1.0,
                 widths: Sequence[float] = (4.0, 2.0, 1.0), final_width: float = 0.1,
                 max_displacement: float | None = None) -> None:
        self.template = check_template(template)
        self.size = tuple(self.template.shape[2:])
        if int(global_iterations) != global_iterations or int(local_iterations) != local_iterations \
                or global_iterations < 0 or local_iterations < 0 or global_iterations + local_iterations == 0:
            raise TemplateError(f"implicit: global_iterations and local_iterations must be integers >= 0, not "
                                f"both 0; got {global_iterations}, {local_iterations}")
        if not lr > 0 or not sigma >= 0 or not regularization >= 0 or not image_sigma >= 0:
            raise TemplateError(f"implicit: lr must be > 0 and sigma, regularization, image_sigma >= 0; got "
                                f"{lr}, {sigma}, {regularization}, {image_sigma}")
        if int(field_stride) != field_stride or field_stride < 1 or any(s % field_stride for s in self.size):
            raise TemplateError(f"implicit: field_stride must be a positive integer dividing the template's size "
                                f"{self.size}, got {field_stride}")
        widths = [float(w) for w in widths]
        if not widths or any(not w > 0 for w in widths):
            raise TemplateError(f"implicit: widths must be one or more numbers > 0 (voxels), got {widths}")
        self.global_iterations = int(global_iterations)
        self.local_iterations = int(local_iterations)
        self.lr = float(lr)
        self.field_size = tuple(s // int(field_stride) for s in self.size)
        self.sigma = float(sigma)
        self.regularization = float(regularization)
        self.image_sigma = float(image_sigma)
        self.widths = widths
        if not final_width > 0:
            raise TemplateError(f"implicit: final_width must be > 0, got {final_width}")
        self.final_width = float(final_width)
        mask = self.template[0, 0].numpy() > 0.5
        distance = ndimage.distance_transform_edt(mask) - ndimage.distance_transform_edt(~mask)
        self.implicit_template = torch.from_numpy(distance.astype(np.float32))[None, None]
        safe = safe_max_displacement(self.field_size, self.sigma)
        if max_displacement is not None and not 0 < max_displacement <= safe:
            raise TemplateError(f"implicit: max_displacement must lie in (0, {safe:.4g}] for sigma = {sigma} and a "
                                f"{self.field_size} field, or the warp may fold; got {max_displacement}")
        self.max_displacement = safe if max_displacement is None else float(max_displacement)

    def __call__(self, image: Tensor, params: Tensor | None = None,
                 displacement: Tensor | None = None) -> ImplicitResult:
        """Fit ``L ∘ G`` to each image [N, 1, D, H, W], from ``params`` [N, 9] (default identity) and
        ``displacement`` [N, 3, *] (default zero; resized to the field's resolution)."""
        image = self._check_image(image)
        n = image.shape[0]
        if params is None:
            params = image.new_tensor([0, 0, 0, 0, 0, 0, 1, 1, 1]).expand(n, 9)
        if not isinstance(params, Tensor) or params.shape != (n, 9) or not bool((params[:, 6:] > 0).all()):
            raise TemplateError(f"implicit: params must be [{n}, 9] (tx, ty, tz, rx, ry, rz, sx, sy, sz) with "
                                f"positive scales, got {_describe(params)}")
        if displacement is None:
            displacement = image.new_zeros(n, 3, *self.field_size)
        if not isinstance(displacement, Tensor) or displacement.dim() != 5 or displacement.shape[:2] != (n, 3):
            raise TemplateError(f"implicit: displacement must be [{n}, 3, d, h, w], got {_describe(displacement)}")
        with torch.no_grad():
            intensities = _standardise(image, self.image_sigma)
            if tuple(displacement.shape[2:]) != self.field_size:
                displacement = torch.nn.functional.interpolate(displacement.detach().to(image.dtype), self.field_size,
                                                               mode="trilinear", align_corners=False)
        pose = params.detach().to(image.dtype).clone()
        pose = torch.cat([pose[:, :6], pose[:, 6:].log()], dim=1).requires_grad_(True)
        v = displacement.detach().to(image.dtype).clamp(-self.max_displacement, self.max_displacement)
        v = (v / self.max_displacement).clone().requires_grad_(True)  # in units of the bound
        energies: list[float] = []
        distance = self.implicit_template.to(image.dtype)
        boundary = 2 * self.template.to(image.dtype) - 1  # zero level: the returned segmentation's boundary
        stages = [(distance, w) for w in self.widths] + [(boundary, self.final_width)]
        stage_length = math.ceil(self.global_iterations / len(stages)) if self.global_iterations else 0
        global_optimizer = torch.optim.Adam([pose], lr=self.lr)
        global_schedule = _annealing(global_optimizer, self.global_iterations)
        for step in range(self.global_iterations):
            phi, width = stages[min(step // stage_length, len(stages) - 1)]
            energies.append(self._step(global_optimizer, phi, width, intensities, pose, v, local=False))
            global_schedule.step()
        joint_optimizer = torch.optim.Adam([pose, v], lr=self.lr)
        joint_schedule = _annealing(joint_optimizer, self.local_iterations)
        for _ in range(self.local_iterations):
            energies.append(self._step(joint_optimizer, boundary, self.final_width, intensities, pose, v,
                                       local=True))
            joint_schedule.step()
        with torch.no_grad():
            final_params, u = self._transform(pose, v)
            segmentation = self._warp(self.template.to(image.dtype), final_params, u, "zeros")
        return ImplicitResult(segmentation, final_params, u, energies)

    def _step(self, optimizer: torch.optim.Optimizer, phi: Tensor, width: float, intensities: Tensor,
              pose: Tensor, v: Tensor, local: bool) -> float:
        optimizer.zero_grad(set_to_none=True)
        params, u = self._transform(pose, v)
        inside = torch.sigmoid(self._warp(phi, params, u, "border") / width)
        energy = _region_energy(inside, intensities)
        if local:
            energy = energy + 0.5 * self.regularization * displacement_energy(u, self.size)
        energy.backward()
        optimizer.step()
        with torch.no_grad():
            v.clamp_(-1.0, 1.0)
        return float(energy.detach())

    def _transform(self, pose: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        params = torch.cat([pose[:, :6], pose[:, 6:].exp()], dim=1)
        u = smooth_displacement(self.max_displacement * v, "gaussian", sigma=self.sigma)
        return params, u

    def _warp(self, volume: Tensor, params: Tensor, u: Tensor, padding_mode: str) -> Tensor:
        n = params.shape[0]
        return warp3d(volume.expand(n, -1, -1, -1, -1), u, similarity_matrix(params), compose="affine_first",
                      padding_mode=padding_mode, align_corners=False, size=self.size)

    def _check_image(self, image: Tensor) -> Tensor:
        if not isinstance(image, Tensor) or image.dim() != 5 or image.shape[1] != 1 \
                or tuple(image.shape[2:]) != self.size:
            raise TemplateError(f"implicit: image must be [N, 1, {', '.join(map(str, self.size))}] (the template's "
                                f"size), got {_describe(image)}")
        if not image.is_floating_point():
            raise TemplateError(f"implicit: image must be floating point, got {image.dtype}")
        return image.detach()


def _annealing(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Cosine decay of the step size to 1 % over ``steps``: Adam's steps are about ``lr`` in size
    whatever the gradient, so without a decay the parameters would jitter by ``lr`` at the end."""
    initial = optimizer.param_groups[0]["lr"]
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1), eta_min=0.01 * initial)


def _region_energy(inside: Tensor, intensities: Tensor) -> Tensor:
    """Chan-Vese region terms of eq. 4.3 with ``c_int``/``c_ext`` from the current segmentation."""
    with torch.no_grad():
        weight_in = inside.flatten(1).sum(1).clamp_min(1e-6)
        weight_out = (1 - inside).flatten(1).sum(1).clamp_min(1e-6)
        c_int = (inside * intensities).flatten(1).sum(1) / weight_in
        c_ext = ((1 - inside) * intensities).flatten(1).sum(1) / weight_out
        shape = (-1,) + (1,) * (intensities.dim() - 1)
        r_int = (intensities - c_int.view(shape)) ** 2
        r_ext = (intensities - c_ext.view(shape)) ** 2
    return (inside * r_int + (1 - inside) * r_ext).flatten(1).mean(1).sum()


def _standardise(image: Tensor, sigma: float) -> Tensor:
    """Each volume smoothed by ``sigma`` voxels, then to zero mean and unit variance."""
    smoothed = _blur(image, sigma)
    mean = smoothed.flatten(1).mean(1).view(-1, 1, 1, 1, 1)
    std = smoothed.flatten(1).std(1).clamp_min(1e-6).view(-1, 1, 1, 1, 1)
    return (smoothed - mean) / std


def _blur(volume: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of [N, 1, D, H, W] (replicate padding), ``sigma`` in voxels."""
    if sigma == 0:
        return volume.clone()
    channels = volume.expand(-1, 3, -1, -1, -1)  # the smoother works on 3-channel fields
    return smooth_displacement(channels.contiguous(), "gaussian", sigma=sigma)[:, :1]


def _describe(value: object) -> str:
    return f"shape {tuple(value.shape)}" if isinstance(value, Tensor) else type(value).__name__
