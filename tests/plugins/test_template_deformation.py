"""The ``template`` deformation plugin (Bertrand2019, sec. 4.4): identity at initialisation, gradients
to both heads, a loss that decreases with training, one connected component, template choice and
clear errors on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import medtune
from medtune.kernels import warp3d
from medtune.plugins.datasets import OrganPhantom
from medtune.plugins.deformations import (
    TemplateDeformation,
    TemplateError,
    check_template,
    choose_template,
    count_components,
    safe_max_displacement,
    similarity_matrix,
)

SIZE = 32


# one torch thread (tests/conftest.py): several per process slow down many-fold on shared cores
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantom() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight 32³ organ-phantom volumes (images, float labels)."""
    data = OrganPhantom(size=8, image_size=SIZE, seed=5)
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.stack([data[i][1] for i in range(len(data))]).float()
    return images, labels


def two_blobs() -> torch.Tensor:
    two = torch.zeros(SIZE, SIZE, SIZE)
    two[2:5, 2:5, 2:5] = 1
    two[20:25, 20:25, 20:25] = 1
    return two


def test_registered_and_identity_at_initialisation(phantom):
    images, labels = phantom
    model = medtune.create("deformation", "template", template=labels[0])
    assert isinstance(model, TemplateDeformation)
    output = model(images[:3])
    assert output.segmentation.shape == (3, 1, SIZE, SIZE, SIZE)
    torch.testing.assert_close(output.segmentation, labels[:1].expand(3, -1, -1, -1, -1), rtol=0, atol=0)
    torch.testing.assert_close(output.params, torch.tensor([[0.0] * 6 + [1.0] * 3] * 3))
    assert output.displacement.abs().max() == 0
    assert output.displacement.shape == (3, 3, SIZE // 4, SIZE // 4, SIZE // 4)


def test_gradient_reaches_both_heads_and_the_encoder(phantom):
    images, labels = phantom
    model = TemplateDeformation(labels[0])
    loss = model.loss(model(images[1:3]), labels[1:3])
    loss.backward()
    assert model.global_head[-1].weight.grad.abs().sum() > 0
    assert model.field_head.weight.grad.abs().sum() > 0
    assert model.encoder[0][0].weight.grad is None or model.encoder[0][0].weight.grad.abs().sum() == 0
    # second step: the heads are no longer zero, so the gradient flows back into the shared encoder
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    model.loss(model(images[1:3]), labels[1:3]).backward()
    assert model.encoder[0][0].weight.grad.abs().sum() > 0


def test_training_decreases_the_loss_and_keeps_one_component(phantom):
    images, labels = phantom
    torch.manual_seed(0)
    model = TemplateDeformation(labels[0], width=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch, target = images[1:5], labels[1:5]
    with torch.no_grad():
        initial = float(model.loss(model(batch), target))
    for _ in range(25):
        optimizer.zero_grad()
        loss = model.loss(model(batch), target)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        output = model(images[1:])
        final = float(model.loss(model(batch), target))
    assert final < initial - 0.05
    assert output.params[:, :6].abs().max() > 0 and output.displacement.abs().max() > 0
    for volume in output.segmentation:
        assert count_components(volume[0] > 0.5) == 1


def test_strongest_allowed_deformations_keep_one_component(phantom):
    """Random fields at the no-fold bound and random poses: the thresholded output is one piece."""
    _, labels = phantom
    template = check_template(labels[2])
    generator = torch.Generator().manual_seed(1)
    count, field = 12, (SIZE // 4,) * 3
    bound = safe_max_displacement(field, 1.0)
    params = torch.cat([0.1 * torch.randn(count, 3, generator=generator),
                        0.5 * torch.randn(count, 3, generator=generator),
                        torch.exp(0.69 * (2 * torch.rand(count, 3, generator=generator) - 1))], dim=1)
    raw = bound * torch.sign(torch.randn(count, 3, *field, generator=generator))  # extreme |v| = m
    displacement = medtune.plugins.deformations.smooth_displacement(raw, "gaussian", sigma=1.0)
    warped = warp3d(template.expand(count, -1, -1, -1, -1), displacement, similarity_matrix(params),
                    size=(SIZE,) * 3)
    for volume in warped:
        assert count_components(volume[0] > 0.5) == 1
    assert count_components(two_blobs()) == 2  # the count itself tells pieces apart
    # the Jacobian of Id + u stays invertible: finite differences of u below 1/3 per axis
    spacing = 2.0 / field[0]
    assert float((displacement.diff(dim=-1).abs() / spacing).max()) < 1 / 3


def test_choose_template_is_the_label_closest_to_the_mean(phantom):
    _, labels = phantom
    template, index = choose_template(list(labels))
    mean = labels.mean(0)
    distances = ((labels - mean) ** 2).flatten(1).sum(1)
    assert index == int(torch.argmin(distances))
    torch.testing.assert_close(template[0], labels[index])


def test_bad_inputs_raise_clear_errors(phantom):
    images, labels = phantom
    with pytest.raises(TemplateError, match="binary"):
        TemplateDeformation(labels[0] * 0.5)
    with pytest.raises(TemplateError, match="one connected component"):
        TemplateDeformation(two_blobs())
    with pytest.raises(TemplateError, match="3D binary mask"):
        TemplateDeformation(torch.ones(4, 4))
    model = TemplateDeformation(labels[0])
    with pytest.raises(TemplateError, match=r"image must be \[N, 1, 32, 32, 32\]"):
        model(images[:1, :, :16])
    with pytest.raises(TemplateError, match="floating point"):
        model(images[:1].long())
    with pytest.raises(TemplateError, match="label must have"):
        model.loss(model(images[:1]), labels[:1, :, :16])
    with pytest.raises(TemplateError, match="max_displacement"):
        TemplateDeformation(labels[0], max_displacement=1.0)
    with pytest.raises(TemplateError, match="divisible"):
        TemplateDeformation(torch.as_tensor(np.pad(labels[0, 0].numpy(), ((0, 4), (0, 4), (0, 4)))))
