"""Transfer layers (Bertrand2019, sec. 3.3-3.4): identity at initialisation, gradients reach the
predictors, the wrapped backbone is left as it was, the added parameters are counted, partial
fine-tuning freezes exactly the chosen layers, and bad arguments raise clear errors."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet
from torch import nn

import medtune
from medtune.kernels import warp3d
from medtune.plugins.deformations.transforms import similarity_matrix
from medtune.plugins.transfer import (
    TRANSFER_LAYERS,
    FixedConvolutions,
    GeometricTransfer,
    IntensityTransfer,
    PartialFineTuning,
    TransferError,
    first_upsampling_layer,
    freeze_all_but,
    parameter_layers,
    sampling_layers,
    trainable_parameters,
)


def unet(spatial_dims: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return UNet(spatial_dims, 1, 1, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=0)


def volume(spatial_dims: int = 3, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 1, *[16] * spatial_dims, generator=torch.Generator().manual_seed(1))


def predictor_size(outputs: int, hidden: int = 8, spatial_dims: int = 3) -> int:
    kernel = 3**spatial_dims
    widths = (1, hidden, 2 * hidden, 4 * hidden)
    convs = sum(a * b * kernel + b for a, b in zip(widths[:-1], widths[1:]))
    return convs + 4 * hidden * outputs + outputs


def geometric_intensity(backbone: nn.Module) -> nn.Module:
    return GeometricTransfer(IntensityTransfer(backbone))


LAYERS = {
    "geometric": GeometricTransfer,
    "intensity": IntensityTransfer,
    "geometric_intensity": geometric_intensity,
    "fixed_convolutions": FixedConvolutions,
}


def test_registered_under_transfer_layer():
    assert set(TRANSFER_LAYERS) == {"geometric", "intensity", "partial", "fixed_convolutions"}
    assert set(TRANSFER_LAYERS) <= set(medtune.available("transfer_layer"))
    layer = medtune.create("transfer_layer", "geometric", backbone=unet())
    assert isinstance(layer, GeometricTransfer)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_identity_at_initialisation(name):
    backbone, x = unet(), volume()
    expected = backbone(x)
    assert torch.equal(LAYERS[name](backbone)(x), expected)


def test_identity_in_2d():
    backbone, x = unet(2), volume(2)
    expected = backbone(x)
    layer = GeometricTransfer(IntensityTransfer(backbone, spatial_dims=2), spatial_dims=2)
    assert torch.equal(layer(x), expected)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_gradients_reach_the_predictor_heads(name):
    layer = LAYERS[name](unet())
    layer(volume()).square().mean().backward()
    heads = list(layer.predictor) if name == "fixed_convolutions" else [layer.predictor.head]
    if name == "geometric_intensity":
        heads.append(layer.backbone.predictor.head)
    for head in heads:
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
        assert head.bias.grad is not None and head.bias.grad.abs().sum() > 0


def test_a_trained_predictor_changes_the_output_and_geometric_inverts_itself():
    backbone = nn.Identity()  # a "network" whose output is its input: G⁻¹(G(x)) ≈ x inside
    layer = GeometricTransfer(backbone, padding_mode="zeros")
    with torch.no_grad():
        layer.predictor.head.bias.copy_(torch.tensor([0.05, -0.03, 0.02, 0.1, 0.0, -0.1, 0.05, 0.0, -0.05]))
    axis = torch.linspace(-1, 1, 24)
    d, h, w = torch.meshgrid(axis, axis, axis, indexing="ij")
    x = torch.exp(-(d**2 + 2 * h**2 + 3 * w**2) / 0.3)[None, None]  # a smooth blob
    projected = warp3d(x, affine=similarity_matrix(layer.transform_parameters(x)))
    out = layer(x)
    one_way, round_trip = (projected - x).abs().mean(), (out - x).abs().mean()
    assert one_way > 5e-3  # the input moved
    assert round_trip < one_way / 4  # and came back, up to two trilinear interpolations


def test_geometric_parameters_are_bounded():
    layer = GeometricTransfer(unet(), max_translation=0.25, max_rotation=0.5, max_scale=1.5)
    with torch.no_grad():
        layer.predictor.head.bias.fill_(100.0)
    params = layer.transform_parameters(volume())
    expected = torch.tensor([0.25] * 3 + [0.5] * 3 + [1.5] * 3)
    assert torch.allclose(params, expected.expand_as(params))


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_backbone_is_not_modified(name):
    backbone = unet()
    before = {key: value.clone() for key, value in backbone.state_dict().items()}
    parameters = [id(p) for p in backbone.parameters()]
    layer = LAYERS[name](backbone)
    layer(volume()).mean().backward()
    assert list(backbone.state_dict()) == list(before)
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in before.items())
    assert [id(p) for p in backbone.parameters()] == parameters
    assert not backbone._forward_hooks and all(not m._forward_hooks for m in backbone.modules())
    assert layer.base is backbone


def test_parameters_added():
    backbone = unet()
    geometric = GeometricTransfer(backbone)
    assert geometric.parameters_added == predictor_size(9)
    intensity = IntensityTransfer(backbone, hidden=4)
    assert intensity.layer == "model.1.submodule.1.submodule.1.submodule" and intensity.channels == 32
    assert intensity.parameters_added == predictor_size(64, hidden=4)
    both = GeometricTransfer(IntensityTransfer(backbone))
    assert both.parameters_added == predictor_size(9) + predictor_size(64)
    total = sum(p.numel() for p in both.parameters())
    assert total == both.parameters_added + sum(p.numel() for p in backbone.parameters())
    assert GeometricTransfer(unet(2), spatial_dims=2).parameters_added == predictor_size(5, spatial_dims=2)
    assert PartialFineTuning(backbone, k=2).parameters_added == 0
    fixed = FixedConvolutions(backbone)  # after the 3 down- and 3 up-sampling layers
    assert fixed.layers == sampling_layers(backbone) == [
        "model.0", "model.1.submodule.0", "model.1.submodule.1.submodule.0",
        "model.1.submodule.1.submodule.2", "model.1.submodule.2", "model.2"]
    assert fixed.parameters_added == sum(c * c * 27 + c for c in (4, 8, 16, 8, 4, 1))


def test_intensity_at_a_chosen_layer():
    backbone, x = unet(), volume()
    layer = IntensityTransfer(backbone, layer="model.0")
    assert layer.channels == 4
    with torch.no_grad():
        layer.predictor.head.bias[:4] = 1.0  # scales 2 on the first level's feature maps
    assert not torch.allclose(layer(x), backbone(x))


def test_partial_freezes_exactly_the_chosen_layers():
    backbone = unet()
    layers = parameter_layers(backbone)
    assert len(layers) == 7 and first_upsampling_layer(backbone) == 4
    names = [[name for name, _ in layer] for layer in layers]
    assert names[0] == ["model.0.conv.weight", "model.0.conv.bias", "model.0.adn.A.weight"]
    assert names[-1] == ["model.2.conv.weight", "model.2.conv.bias"]
    for end, k in (("first", 2), ("last", 3)):
        trainable = freeze_all_but(backbone, k, end)
        chosen = layers[:k] if end == "first" else layers[-k:]
        expected = {name for layer in chosen for name, _ in layer}
        assert {n for n, p in backbone.named_parameters() if p.requires_grad} == expected
        assert trainable == trainable_parameters(backbone) == sum(p.numel() for l in chosen for _, p in l)
    partial = PartialFineTuning(backbone, end="last")  # split at the first up-sampling layer
    assert partial.k == 3 and partial.trainable_parameters == sum(p.numel() for l in layers[4:] for _, p in l)
    x = volume()
    assert torch.equal(partial(x), backbone(x))


def test_errors():
    backbone = unet()
    with pytest.raises(TransferError, match=r"no sub-module 'model\.9'.*available: model, model\.0"):
        IntensityTransfer(backbone, layer="model.9")
    with pytest.raises(TransferError, match="no SkipConnection.*pass layer= one of: 0, 1"):
        IntensityTransfer(nn.Sequential(nn.Conv3d(1, 2, 3), nn.Conv3d(2, 1, 3)))
    with pytest.raises(TransferError, match="cannot tell how many feature maps.*pass channels="):
        IntensityTransfer(nn.Sequential(nn.ReLU(), nn.Conv3d(1, 1, 3)), layer="0")
    with pytest.raises(TransferError, match=r"expected a 3D input \[N, C, D, H, W\], got \(2, 1, 16, 16\)"):
        GeometricTransfer(backbone)(volume(2))
    with pytest.raises(TransferError, match="expected 1 input channel"):
        IntensityTransfer(backbone)(torch.zeros(1, 2, 16, 16, 16))
    with pytest.raises(TransferError, match="spatial_dims must be 2"):
        GeometricTransfer(backbone, spatial_dims=4)
    with pytest.raises(TransferError, match="max_scale must be a finite number > 1"):
        GeometricTransfer(backbone, max_scale=0.5)
    with pytest.raises(TransferError, match="padding_mode must be one of"):
        GeometricTransfer(backbone, padding_mode="reflect")
    with pytest.raises(TransferError, match="outputs .* expected"):
        IntensityTransfer(backbone, channels=5)(volume())
    with pytest.raises(TransferError, match="k must be an integer from 1 to 7"):
        freeze_all_but(backbone, 8)
    with pytest.raises(TransferError, match="k must be an integer from 1 to 7"):
        PartialFineTuning(backbone, k=0)
    with pytest.raises(TransferError, match="end must be one of"):
        freeze_all_but(backbone, 1, end="middle")
    with pytest.raises(TransferError, match="no transposed convolution"):
        PartialFineTuning(nn.Sequential(nn.Conv3d(1, 1, 3)))
    with pytest.raises(TransferError, match=r"no sub-module 'down'; available: model"):
        FixedConvolutions(backbone, layers=["down"])
    with pytest.raises(TransferError, match="no strided or transposed convolution; pass layers="):
        FixedConvolutions(nn.Sequential(nn.Conv3d(1, 1, 3)))
    with pytest.raises(TransferError, match="kernel_size must be an odd positive integer"):
        FixedConvolutions(backbone, kernel_size=2)
    with pytest.raises(TransferError, match="backbone must be a torch.nn.Module"):
        GeometricTransfer("unet")
