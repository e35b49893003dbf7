"""Dice, Tversky, Effectiveness and GLF losses: identities, MONAI parity, gradients, edge cases."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import medtune
import medtune.kernels as kernels
from medtune.errors import MedtuneError
from tests.conftest import backend_or_skip as shared_backend_or_skip
from medtune.plugins.losses import (
    DiceLoss,
    EffectivenessLoss,
    GLFLoss,
    LossError,
    TverskyLoss,
)

monai_losses = pytest.importorskip("monai.losses")


def random_case(
    dims: int, channels: int, seed: int = 0, batch: int = 3, size: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [N, C, *sp] (float64), an integer label map [N, 1, *sp] and its one-hot/mask.

    Sample 0 has no foreground at all (an empty target) to cover that case everywhere.
    """
    g = torch.Generator().manual_seed(seed)
    spatial = (size,) * dims
    logits = torch.randn(batch, channels, *spatial, generator=g, dtype=torch.float64) * 2
    classes = max(channels, 2)
    labels = torch.randint(0, classes, (batch, 1, *spatial), generator=g)
    labels[0] = 0
    if channels == 1:
        dense = labels.to(torch.float64)
    else:
        dense = torch.nn.functional.one_hot(labels[:, 0], channels).movedim(-1, 1).to(torch.float64)
    return logits, labels, dense


# -- the plugin path ---------------------------------------------------------------------------


def test_losses_are_registered_as_plugins() -> None:
    assert {"dice", "tversky", "effectiveness", "glf", "density_weighted"} <= set(
        medtune.available("loss")
    )
    assert isinstance(medtune.create("loss", "dice", sigmoid=True), DiceLoss)
    tversky = medtune.create("loss", "tversky", alpha=0.3, beta=0.7)
    assert isinstance(tversky, TverskyLoss) and tversky.weights() == (1.0, 0.3, 0.7)
    assert isinstance(medtune.create("loss", "effectiveness", beta2=2.0), EffectivenessLoss)
    glf = medtune.create("loss", "glf", alpha_p=0.5, alpha_n=2.0, beta2=3.0)
    assert isinstance(glf, GLFLoss)
    assert [float(w) for w in glf.weights()] == [4.0, 0.5, 6.0]


# -- identities (float64, 1e-10) ---------------------------------------------------------------


def glf_eq1(stats: kernels.GLFStats, alpha_p: float, alpha_n: float, beta2: float) -> torch.Tensor:
    """Seo2021, eq. 1 written literally: 1 - (1 + b2) / (1/P_aP + b2/R_aN)."""
    tp, fp, fn = stats
    precision = tp / (tp + alpha_p * fp)
    recall = tp / (tp + alpha_n * fn)
    return 1 - (1 + beta2) / (1 / precision + beta2 / recall)


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_glf_equals_dice_effectiveness_and_tversky(activation: str) -> None:
    logits, labels, dense = random_case(dims=2, channels=3, seed=1)
    options = {activation: True, "reduction": "none"}
    dice = DiceLoss(**options)(logits, labels)
    glf_dice = GLFLoss(alpha_p=1.0, alpha_n=1.0, beta2=1.0, **options)(logits, labels)
    torch.testing.assert_close(glf_dice, dice, atol=1e-10, rtol=0)
    for beta2 in (0.0, 0.25, 1.0, 4.0):
        effectiveness = EffectivenessLoss(beta2=beta2, **options)(logits, labels)
        glf = GLFLoss(alpha_p=1.0, alpha_n=1.0, beta2=beta2, **options)(logits, labels)
        torch.testing.assert_close(glf, effectiveness, atol=1e-10, rtol=0)
    # Any GLF is the Tversky loss with alpha = aP / (1 + b2), beta = b2 aN / (1 + b2); the
    # smoothing constants scale with 1 + b2 as well.
    smooth = 1e-5
    for alpha_p, alpha_n, beta2 in [(0.5, 2.0, 3.0), (1.7, 0.3, 0.6), (1.0, 1.0, 1.0)]:
        scale = 1 + beta2
        glf = GLFLoss(
            alpha_p=alpha_p, alpha_n=alpha_n, beta2=beta2, smooth_nr=smooth * scale,
            smooth_dr=smooth * scale, **options,
        )(logits, labels)
        tversky = TverskyLoss(
            alpha=alpha_p / scale, beta=beta2 * alpha_n / scale, smooth_nr=smooth,
            smooth_dr=smooth, **options,
        )(logits, labels)
        torch.testing.assert_close(glf.flatten(), tversky.flatten(), atol=1e-10, rtol=0)
    # eq. 1 literally (no smoothing), on samples that have a target
    stats = kernels.glf_stats(logits, labels, activation)
    for alpha_p, alpha_n, beta2 in [(0.5, 2.0, 3.0), (1.0, 1.0, 0.5)]:
        glf = GLFLoss(
            alpha_p=alpha_p, alpha_n=alpha_n, beta2=beta2, smooth_nr=0.0, smooth_dr=0.0, **options
        )(logits, labels)
        expected = glf_eq1(stats, alpha_p, alpha_n, beta2)
        torch.testing.assert_close(glf.flatten(1)[1:], expected[1:], atol=1e-10, rtol=0)


# -- agreement with MONAI ----------------------------------------------------------------------

# (to_onehot_y, include_background, batch, reduction)
OPTIONS = list(
    itertools.product([False, True], [False, True], [False, True], ["mean", "sum", "none"])
)


@pytest.mark.parametrize("name", ["dice", "tversky"])
@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("activation", ["sigmoid", "softmax", "none"])
def test_agrees_with_monai(name: str, dims: int, channels: int, activation: str) -> None:
    logits, labels, dense = random_case(dims, channels, seed=dims * 10 + channels)
    prediction = logits if activation != "none" else torch.sigmoid(logits)
    act = {"sigmoid": activation == "sigmoid", "softmax": activation == "softmax"}
    extra = {"alpha": 0.3, "beta": 0.7} if name == "tversky" else {}
    reference_class = monai_losses.DiceLoss if name == "dice" else monai_losses.TverskyLoss
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn alike about options ignored for one channel
        for to_onehot_y, include_background, batch, reduction in OPTIONS:
            kwargs = dict(
                include_background=include_background, to_onehot_y=to_onehot_y,
                reduction=reduction, batch=batch, **act, **extra,
            )
            target = labels if to_onehot_y else dense
            x_ours = prediction.clone().requires_grad_(True)
            x_ref = prediction.clone().requires_grad_(True)
            ours = medtune.create("loss", name, **kwargs)(x_ours, target)
            reference = reference_class(**kwargs)(x_ref, target)
            assert ours.shape == reference.shape, kwargs
            torch.testing.assert_close(ours, reference, atol=1e-10, rtol=1e-9, msg=str(kwargs))
            ours.sum().backward()
            reference.sum().backward()
            torch.testing.assert_close(
                x_ours.grad, x_ref.grad, atol=1e-10, rtol=1e-8, msg=str(kwargs)
            )
            if channels > 1 and not to_onehot_y:
                # an integer label map is recognised without to_onehot_y as well
                again = medtune.create("loss", name, **kwargs)(prediction, labels)
                torch.testing.assert_close(again, reference.detach(), atol=1e-10, rtol=1e-9)


def test_label_maps_reach_the_kernel_unexpanded(monkeypatch: pytest.MonkeyPatch) -> None:
    import medtune.losses as losses

    seen = []
    original = losses.glf_loss

    def spy(input, target, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((target.dtype, tuple(target.shape)))
        return original(input, target, *args, **kwargs)

    monkeypatch.setattr(losses, "glf_loss", spy)
    logits, labels, _ = random_case(dims=3, channels=4)
    DiceLoss(softmax=True, to_onehot_y=True)(logits, labels)
    DiceLoss(softmax=True, to_onehot_y=True)(logits, labels.to(torch.float32))  # MONAI casts too
    TverskyLoss(softmax=True)(logits, labels[:, 0])
    assert seen == [
        (torch.int64, tuple(labels.shape)),
        (torch.int64, tuple(labels.shape)),
        (torch.int64, tuple(labels[:, 0].shape)),
    ]


# -- gradients on every backend ----------------------------------------------------------------


def backend_or_skip(backend: str) -> None:
    shared_backend_or_skip("glf_stats", backend)


LOSS_CASES = [
    ("dice", {}),
    ("tversky", {"alpha": 0.3, "beta": 0.9}),
    ("effectiveness", {"beta2": 2.0}),
    ("glf", {"alpha_p": 0.6, "alpha_n": 1.5, "beta2": 2.5}),
]


@pytest.mark.parametrize("backend", kernels.backends("glf_stats"))
@pytest.mark.parametrize("name, extra", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_gradcheck_every_backend(backend: str, name: str, extra: dict) -> None:
    backend_or_skip(backend)
    g = torch.Generator().manual_seed(3)
    size = (3, 3) if backend == "triton" else (4, 3)
    sigmoid_x = torch.randn(2, 1, *size, generator=g, dtype=torch.float64, requires_grad=True)
    mask = (torch.rand(2, 1, *size, generator=g) > 0.5).to(torch.float64)
    softmax_x = torch.randn(2, 3, *size, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 3, (2, 1, *size), generator=g)
    cases = [
        (sigmoid_x, mask, {"sigmoid": True}),
        (softmax_x, labels, {"softmax": True, "to_onehot_y": True, "include_background": False}),
        (softmax_x, labels, {"softmax": True, "batch": True, "reduction": "sum"}),
    ]
    with kernels.use_backend(backend):
        for x, target, options in cases:
            loss = medtune.create("loss", name, **options, **extra)
            assert torch.autograd.gradcheck(lambda x: loss(x, target), (x,), eps=1e-6, atol=1e-7)


# -- empty targets -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dice", "tversky", "effectiveness", "glf"])
def test_empty_target_behaviour(name: str) -> None:
    empty = torch.zeros(2, 1, 8, 8)
    # empty prediction on an empty target: a perfect score (smooth_nr == smooth_dr)
    loss = medtune.create("loss", name, reduction="none")
    assert torch.allclose(loss(torch.zeros(2, 1, 8, 8), empty), torch.zeros(1), atol=1e-6)
    # false positives on an empty target: the loss rises towards 1 and pushes them down
    logits = torch.full((2, 1, 8, 8), -2.0, requires_grad=True)
    value = medtune.create("loss", name, sigmoid=True)(logits, empty)
    assert value.item() > 0.99
    value.backward()
    assert bool((logits.grad > 0).all())  # gradient descent lowers every logit
    # without numerator smoothing an empty target always scores 1 and gives no gradient
    logits.grad = None
    strict = medtune.create("loss", name, sigmoid=True, smooth_nr=0.0)
    value = strict(logits, empty)
    value.backward()
    assert value.item() == 1.0 and bool((logits.grad == 0).all())
    # pooled over the batch, an empty image only adds its false positives
    target = torch.zeros(2, 1, 8, 8)
    target[1, 0, 2:5, 2:5] = 1
    prediction = target.clone()
    pooled = medtune.create("loss", name, batch=True)
    assert pooled(prediction, target).item() < 1e-6
    prediction[0, 0, 0, 0] = 1.0  # one false positive in the empty image
    assert pooled(prediction, target).item() > 0


def test_zero_denominator_is_reported() -> None:
    loss = DiceLoss(smooth_dr=0.0)
    with pytest.raises(LossError, match="smooth_dr"):
        loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))


# -- non-finite predictions --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dice", "tversky", "effectiveness", "glf"])
def test_nan_or_inf_prediction_raises(name: str) -> None:
    logits, labels, dense = random_case(dims=2, channels=3)
    bad = logits.clone()
    bad[1, 0, 2, 2] = float("nan")
    with pytest.raises(LossError, match=r"NaN or Inf.*sample\(s\) \[1\]"):
        medtune.create("loss", name, sigmoid=True)(bad, dense)
    infinite = logits.clone()
    infinite[2, 1, 0, 0] = float("inf")
    with pytest.raises(LossError, match="NaN or Inf"):
        medtune.create("loss", name, softmax=True)(infinite, labels)
    with pytest.raises(LossError, match="check_finite=False"):
        medtune.create("loss", name)(infinite, dense)
    # opting out returns the NaN
    value = medtune.create("loss", name, sigmoid=True, check_finite=False)(bad, dense)
    assert torch.isnan(value)
    # a sigmoid maps infinite logits to exactly 0 / 1: valid, documented
    value = medtune.create("loss", name, sigmoid=True)(infinite, dense)
    assert torch.isfinite(value)


# -- argument errors ---------------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(LossError, match="incompatible"):
        medtune.create("loss", "dice", sigmoid=True, softmax=True)
    with pytest.raises(LossError, match="alpha must be a finite number >= 0"):
        medtune.create("loss", "tversky", alpha=-0.1)
    with pytest.raises(LossError, match="beta2"):
        medtune.create("loss", "effectiveness", beta2=float("nan"))
    with pytest.raises(LossError, match="alpha_n"):
        medtune.create("loss", "glf", alpha_n=-1)
    with pytest.raises(LossError, match="reduction"):
        medtune.create("loss", "dice", reduction="average")
    with pytest.raises(LossError, match="smooth_nr"):
        medtune.create("loss", "dice", smooth_nr=-1e-5)
    with pytest.raises(LossError, match="adaptive"):
        medtune.create("loss", "glf", adaptive="greedy")
    with pytest.raises(TypeError):
        medtune.create("loss", "dice", squared_pred=True)  # a MONAI option we do not offer
    assert issubclass(LossError, MedtuneError) and issubclass(LossError, ValueError)


def test_bad_inputs_raise_clear_errors() -> None:
    loss = DiceLoss(softmax=True)
    logits, labels, dense = random_case(dims=2, channels=3)
    with pytest.raises(LossError, match="does not fit"):
        loss(logits, dense[:, :2])
    with pytest.raises(LossError, match="to_onehot_y=True"):
        loss(logits, labels.to(torch.float64))
    with pytest.raises(LossError, match="expects a label map"):
        DiceLoss(softmax=True, to_onehot_y=True)(logits, dense)
    with pytest.raises(LossError, match="floating-point"):
        loss(labels, labels)
    with pytest.raises(LossError, match="spatial"):
        loss(logits[:, :, 0, 0], labels[:, :, 0, 0])
    with pytest.raises(MedtuneError, match="labels range"):
        loss(logits, labels + 3)


def test_options_ignored_for_one_channel_warn_like_monai() -> None:
    logits, labels, dense = random_case(dims=2, channels=1)
    with pytest.warns(UserWarning, match="softmax=True` ignored"):
        DiceLoss(softmax=True)(logits, dense)
    with pytest.warns(UserWarning, match="to_onehot_y=True` ignored"):
        DiceLoss(to_onehot_y=True, sigmoid=True)(logits, labels)
    with pytest.warns(UserWarning, match="include_background=False` ignored"):
        DiceLoss(include_background=False, sigmoid=True)(logits, dense)


# -- fuzzed shapes -----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    name=st.sampled_from(["dice", "tversky"]),
    batch=st.integers(1, 3),
    channels=st.integers(1, 4),
    spatial=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    activation=st.sampled_from(["sigmoid", "softmax", "none"]),
    to_onehot_y=st.booleans(),
    include_background=st.booleans(),
    pooled=st.booleans(),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    empty_fraction=st.sampled_from([0.0, 0.5, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_fuzzed_shapes_agree_with_monai(
    name: str, batch: int, channels: int, spatial: list[int], activation: str,
    to_onehot_y: bool, include_background: bool, pooled: bool, reduction: str,
    empty_fraction: float, seed: int,
) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, channels, *spatial, generator=g, dtype=torch.float64)
    labels = torch.randint(0, max(channels, 2), (batch, 1, *spatial), generator=g)
    labels[: int(round(empty_fraction * batch))] = 0  # some (or all) images without target
    if channels == 1:
        dense = labels.to(torch.float64)
    else:
        dense = torch.nn.functional.one_hot(labels[:, 0], channels).movedim(-1, 1).double()
    prediction = torch.sigmoid(logits) if activation == "none" else logits
    kwargs = dict(
        include_background=include_background, to_onehot_y=to_onehot_y, reduction=reduction,
        batch=pooled, sigmoid=activation == "sigmoid", softmax=activation == "softmax",
    )
    if name == "tversky":
        kwargs.update(alpha=0.4, beta=0.8)
    reference_class = monai_losses.DiceLoss if name == "dice" else monai_losses.TverskyLoss
    target = labels if to_onehot_y else dense
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = medtune.create("loss", name, **kwargs)(prediction, target)
        reference = reference_class(**kwargs)(prediction, target)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=1e-10, rtol=1e-9)
