"""The ``implicit`` deformation plugin (Bertrand2019, eq. 4.3-4.6): it recovers a known similarity of
the template on a clean phantom, refines from a given G and L without folding, and rejects bad input."""

from __future__ import annotations

import math

import pytest
import torch

import medtune
from medtune.kernels import warp3d
from medtune.plugins.datasets import OrganPhantom
from medtune.plugins.deformations import (
    ImplicitDeformation,
    TemplateError,
    count_components,
    similarity_matrix,
)

SIZE = 48


# one torch thread (tests/conftest.py): several per process slow down many-fold on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def template() -> torch.Tensor:
    return OrganPhantom(size=1, image_size=SIZE, seed=3)[0][1].float()[None]


def clean_image(template: torch.Tensor, params: torch.Tensor, seed: int) -> torch.Tensor:
    """The template moved by ``params`` (label resampling), organ 1 / background 0, noise 0.02."""
    n = params.shape[0]
    generator = torch.Generator().manual_seed(seed)
    organ = warp3d(template.expand(n, -1, -1, -1, -1), None, similarity_matrix(params), mode="nearest")
    return organ + 0.02 * torch.randn(organ.shape, generator=generator)


def dice(segmentation: torch.Tensor, target: torch.Tensor) -> float:
    prediction = (segmentation > 0.5).float()
    return float(2 * (prediction * target).sum() / (prediction.sum() + target.sum()))


def test_recovers_a_random_similarity_within_one_voxel_and_two_percent(template):
    generator = torch.Generator().manual_seed(0)
    count = 2
    voxel = 2.0 / SIZE  # one voxel in normalised units
    translation = (2 * torch.rand(count, 3, generator=generator) - 1) * 3 * voxel  # up to 3 voxels
    angles = (2 * torch.rand(count, 3, generator=generator) - 1) * 0.1
    scale = 0.9 + 0.2 * torch.rand(count, 1, generator=generator)  # a similarity: one scale
    truth = torch.cat([translation, angles, scale.expand(-1, 3)], dim=1)
    image = clean_image(template, truth, seed=1)
    deformation = medtune.create("deformation", "implicit", template=template, global_iterations=100,
                                 local_iterations=0, lr=0.02, image_sigma=0.0)
    result = deformation(image)
    translation_error = ((result.params[:, :3] - truth[:, :3]).abs() / voxel).max(1).values
    assert bool((translation_error < 1.0).all()), translation_error
    # the scale of the similarity: the cube root of the determinant (per-axis scales of a small organ
    # trade off against its rotation by a few percent at this resolution)
    fitted_scale = result.params[:, 6:].prod(1) ** (1 / 3)
    scale_error = (fitted_scale / scale[:, 0] - 1).abs()
    assert bool((scale_error < 0.02).all()), scale_error
    assert result.energy[-1] < result.energy[0]
    target = (image > 0.5).float()
    assert all(dice(result.segmentation[i:i + 1], target[i:i + 1]) > 0.9 for i in range(count))


def test_refines_from_an_initial_transform_without_folding(template):
    truth = torch.tensor([[0.04, -0.03, 0.02, 0.05, 0.0, -0.05, 0.95, 1.05, 1.0]])
    image = clean_image(template, truth, seed=2)
    start = truth + torch.tensor([[0.04, 0.0, -0.04, 0.0, 0.0, 0.0, 0.03, 0.0, 0.0]])
    initial_field = 0.01 * torch.ones(1, 3, 6, 6, 6)  # any resolution; resampled to the field's
    deformation = ImplicitDeformation(template, global_iterations=20, local_iterations=20, lr=0.02,
                                      image_sigma=0.0, widths=(1.0,))
    result = deformation(image, start, initial_field)
    assert result.displacement.shape == (1, 3, SIZE // 4, SIZE // 4, SIZE // 4)
    assert result.displacement.abs().max() <= deformation.max_displacement + 1e-6
    assert count_components(result.segmentation[0, 0] > 0.5) == 1
    target = (image > 0.5).float()
    initial = ImplicitDeformation(template, global_iterations=1, lr=1e-9, widths=(1.0,))(image, start,
                                                                                         initial_field)
    assert dice(result.segmentation, target) > max(0.9, dice(initial.segmentation, target) + 0.05)
    assert result.energy[-1] < result.energy[0]


def test_bad_inputs_raise_clear_errors(template):
    with pytest.raises(TemplateError, match="binary"):
        ImplicitDeformation(template * 2)
    with pytest.raises(TemplateError, match="not both 0"):
        ImplicitDeformation(template, global_iterations=0, local_iterations=0)
    with pytest.raises(TemplateError, match="widths"):
        ImplicitDeformation(template, widths=())
    with pytest.raises(TemplateError, match="fold"):
        ImplicitDeformation(template, max_displacement=math.inf)
    deformation = ImplicitDeformation(template, global_iterations=1, local_iterations=0)
    with pytest.raises(TemplateError, match=r"image must be \[N, 1, 48, 48, 48\]"):
        deformation(torch.zeros(1, 1, 32, 32, 32))
    with pytest.raises(TemplateError, match="params must be"):
        deformation(torch.zeros(1, 1, SIZE, SIZE, SIZE), torch.zeros(1, 9))  # zero scales
    with pytest.raises(TemplateError, match="displacement must be"):
        deformation(torch.zeros(1, 1, SIZE, SIZE, SIZE), None, torch.zeros(1, 2, 4, 4, 4))
