"""The fuzzed kernel surface: hypothesis property tests of every kernel op on every backend.

One file over 600 lines on purpose: the strategies, the tolerance table and the profiles are
shared by every op's properties, and the long profile runs it as one command.

Each op is called through its public front-end with random shapes (down to one voxel, and
extreme aspect ratios such as 1x1x1x4096), memory layouts (non-contiguous, channels-last,
strided views whose gaps hold NaN, stride-0 expanded batches), dtypes, empty masks, NaN/Inf
values and mismatched arguments. Every call must either equal the op's PyTorch reference within
the tolerance of the table below, or raise a clear error: a MedtuneError / ValueError /
TypeError whose message names the op and what was wrong. A crash (any other exception), a hang
or a silent NaN fails the test; out-of-bounds reads in the C++ kernels are caught by
``test_asan.py``.

Non-finite behaviour, checked here: NaN/Inf in ``glf_stats``/``glf_loss`` predictions and in
``gp_acquisition`` tensors propagate (an output entry is non-finite exactly where the
reference's is, and equal to it elsewhere); in a ``warp3d`` volume they stay within one voxel (outputs
next to them may turn NaN through taps of weight zero, as in grid_sample; all others agree);
non-finite ``warp3d`` coordinates (a NaN/Inf displacement or affine) sample outside the volume,
so they give finite outputs; NaN/Inf in the new blocks of ``chol_append`` raise, and a
non-finite factor raises or comes back non-finite.

Profiles (environment variable ``MEDTUNE_HYPOTHESIS_PROFILE``): ``short`` (default; 60
derandomised examples per test, 5 on Triton: the whole file in about 15 s on two cores) and
``long`` (500 random examples per test on the torch and cpp backends, 100 on Triton; every test
is then marked slow, so run it with ``-m slow``). Triton runs on the CPU only under
``TRITON_INTERPRET=1``, on tiny shapes (at most 64 voxels), and is skipped otherwise.
"""

from __future__ import annotations

import os
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medtune.errors import MedtuneError
from medtune.kernels import (
    chol_append,
    chol_append_reference,
    glf_loss,
    glf_loss_reference,
    glf_stats,
    glf_stats_reference,
    gp_acquisition,
    gp_acquisition_reference,
    use_backend,
    warp3d,
    warp3d_reference,
)
from medtune.kernels.gp_acquisition import MIN_VARIANCE
from tests.conftest import backend_or_skip

F64, F32, F16, BF16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
DTYPES = [F64, F32, F16, BF16]

# Largest allowed |got - reference|, relative to max(1, |reference|), per op and input dtype.
# None: the op refuses that dtype with a clear error. Half-precision inputs of glf_* are summed
# in float32; their gradients are returned in the input's dtype, hence the looser bounds.
# warp3d is compared with its reference run in float64; its float32 figure is per 1024 of
# "coordinate magnification" (see _warp_magnification: a float32 coordinate is only good to
# eps * extent voxels, and a displacement sampled at such a coordinate is scaled by the
# volume's extent);
# chol_append's figures are the relative error of the factor (and its inverse) on Gram
# matrices with at least 1e-3 (float64) / 1e-1 (float32) of noise.
TOLERANCE = {
    #                  float64  float32  float16  bfloat16
    "glf_stats":      (1e-9,    1e-4,    4e-3,    3e-2),
    "glf_loss":       (1e-9,    1e-4,    4e-3,    3e-2),
    "warp3d":         (1e-9,    1e-3,    None,    None),
    "chol_append":    (1e-8,    5e-3,    None,    None),
    "gp_acquisition": (1e-9,    1e-4,    None,    None),
}
CLEAR_ERRORS = (MedtuneError, ValueError, TypeError)

PROFILE = os.environ.get("MEDTUNE_HYPOTHESIS_PROFILE", "short")
if PROFILE not in ("short", "long"):
    raise ValueError(f"MEDTUNE_HYPOTHESIS_PROFILE must be 'short' or 'long', got {PROFILE!r}")
EXAMPLES = {"short": 60, "long": 500}[PROFILE]
TRITON_EXAMPLES = {"short": 5, "long": 100}[PROFILE]  # the interpreter takes ~0.1 s a call
_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large], print_blob=True)
settings.register_profile("medtune-short", derandomize=True, database=None, **_COMMON)
settings.register_profile("medtune-long", **_COMMON)

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*affine_grid behavior has changed for unit-size grids"),
    pytest.mark.usefixtures("one_thread") if PROFILE == "short" else pytest.mark.slow,
]

BACKENDS = ["torch", "cpp", "triton"]
MAX_VOXELS = 4096
TRITON_MAX_VOXELS = 64


TRIED: Counter[str] = Counter()  # examples run per test (hypothesis' own statistics skip nested tests)


def tried() -> None:
    """Count one example of the running test."""
    TRIED[os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0]] += 1


@pytest.fixture(scope="module", autouse=True)
def report_examples(request):
    """After the module: one line per test with the number of examples it ran."""
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not TRIED:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\nexamples run ({PROFILE} profile):")
        for name, count in sorted(TRIED.items()):
            reporter.write_line(f"  {name}: {count}")


def tolerance(op: str, dtype: torch.dtype) -> float | None:
    return TOLERANCE[op][DTYPES.index(dtype)]


def fuzz(backend: str) -> settings:
    """The selected profile's settings for one property run on ``backend``."""
    count = TRITON_EXAMPLES if backend == "triton" else EXAMPLES
    return settings(settings.get_profile(f"medtune-{PROFILE}"), max_examples=count)


def max_voxels(backend: str) -> int:
    return TRITON_MAX_VOXELS if backend == "triton" else MAX_VOXELS


# --- shared checks ---------------------------------------------------------------------------


def assert_matches(got: torch.Tensor, expected: torch.Tensor, tol: float, what: str,
                   either_may_be_non_finite: torch.Tensor | None = None) -> None:
    """Same shape and dtype; non-finite exactly where the reference is, close elsewhere.

    ``either_may_be_non_finite``: a mask of entries where the two may disagree on being finite
    (they are still compared where both are)."""
    assert got.shape == expected.shape, f"{what}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype} != {expected.dtype}"
    finite = torch.isfinite(expected)
    bad = torch.isfinite(got) != finite
    if either_may_be_non_finite is not None:
        bad &= ~either_may_be_non_finite
        finite &= torch.isfinite(got)
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} entries are finite in one of (backend, reference) only")
    if bool(finite.any()):
        g, e = got[finite].double(), expected[finite].double()
        scale = max(1.0, float(e.abs().max()))
        torch.testing.assert_close(g, e, rtol=tol, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def assert_clear_error(error: BaseException, op: str, *mentions: str) -> None:
    """``error`` is one of the documented kinds and its message names the op and the problem."""
    assert isinstance(error, CLEAR_ERRORS), f"{op} crashed with {type(error).__name__}: {error}"
    message = str(error)
    assert message.startswith(f"{op}:"), f"the error does not name the op {op}: {message!r}"
    for word in mentions:
        assert word.lower() in message.lower(), f"{word!r} is not in the error {message!r}"


def raises_clearly(call, op: str, *mentions: str) -> None:
    try:
        call()
    except BaseException as error:  # noqa: BLE001 - a crash must fail, with its type shown
        assert_clear_error(error, op, *mentions)
    else:
        pytest.fail(f"{op}: expected an error mentioning {mentions}")


# --- layouts ---------------------------------------------------------------------------------

LAYOUTS = ["contiguous", "channels_last", "transposed", "strided", "expanded"]


def arrange(t: torch.Tensor, layout: str) -> torch.Tensor:
    """``t`` with the same values (except ``expanded``: every sample a copy of the first, stride
    0) in another memory layout. Strided views leave NaN (or -1 labels) in the skipped slots,
    so a kernel that ignores strides reads them."""
    if layout == "channels_last" and t.dim() in (4, 5):
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        return t.contiguous(memory_format=fmt)
    if layout in ("transposed", "channels_last") and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "strided" and t.dim() >= 1:
        fill = float("nan") if t.is_floating_point() else -1
        big = torch.full((*t.shape[:-1], 2 * t.shape[-1]), fill, dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    if layout == "expanded" and t.dim() >= 1:
        return t[:1].expand(t.shape)
    return t


@st.composite
def spatial_shapes(draw, dims: int, limit: int) -> tuple[int, ...]:
    """Balanced small shapes, or one long axis (aspect ratios up to 1 : limit)."""
    if draw(st.booleans()):
        shape = [draw(st.integers(1, 9)) for _ in range(dims)]
    else:
        shape = [1] * dims
        shape[draw(st.integers(0, dims - 1))] = draw(st.integers(1, limit))
    while torch.Size(shape).numel() > limit:
        shape[shape.index(max(shape))] //= 2
    return tuple(shape)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _poison(t: torch.Tensor, gen: torch.Generator, count: int) -> torch.Tensor:
    """A copy of ``t`` with ``count`` entries set to NaN, +inf or -inf."""
    t = t.clone(memory_format=torch.contiguous_format)
    flat = t.view(-1)
    for _ in range(count):
        index = int(torch.randint(0, flat.numel(), (1,), generator=gen))
        flat[index] = (float("nan"), float("inf"), float("-inf"))[
            int(torch.randint(0, 3, (1,), generator=gen))]
    return t


# --- glf_stats and glf_loss ------------------------------------------------------------------

LABEL_DTYPES = [torch.int64, torch.int32, torch.uint8, torch.int16, torch.bool]


@st.composite
def glf_cases(draw, limit: int, non_finite: bool = False) -> dict:
    dims = draw(st.integers(1, 3))
    channels = draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["soft", "binary", "labels", "labels_flat"]))
    label_dtype = draw(st.sampled_from(LABEL_DTYPES if channels <= 2 else LABEL_DTYPES[:4]))
    return dict(
        batch=draw(st.integers(1, 3)), channels=channels,
        spatial=draw(spatial_shapes(dims, limit)), kind=kind, label_dtype=label_dtype,
        activation=draw(st.sampled_from(["none", "sigmoid", "softmax"])),
        dtype=draw(st.sampled_from(DTYPES)), layout=draw(st.sampled_from(LAYOUTS)),
        empty=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
        poison=draw(st.integers(1, 4)) if non_finite else 0,
        weights=draw(st.tuples(*[st.floats(0.0, 3.0)] * 3)), batch_loss=draw(st.booleans()),
    )


def glf_inputs(case: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, target) of the case, contiguous, in its dtype."""
    gen = _generator(case["seed"])
    n, c, spatial = case["batch"], case["channels"], case["spatial"]
    pred = torch.randn((n, c, *spatial), generator=gen, dtype=F64)
    if case["activation"] == "none":
        pred = torch.sigmoid(pred)
    pred = _poison(pred, gen, case["poison"]).to(case["dtype"])
    if case["kind"] == "soft":
        target = torch.rand((n, c, *spatial), generator=gen, dtype=F64).to(case["dtype"])
    elif case["kind"] == "binary":
        target = (torch.rand((n, c, *spatial), generator=gen) > 0.7).to(case["dtype"])
    else:
        shape = (n, 1, *spatial) if case["kind"] == "labels" else (n, *spatial)
        classes = 2 if case["label_dtype"] == torch.bool else max(c, 2)
        target = torch.randint(0, classes, shape, generator=gen).to(case["label_dtype"])
    if case["empty"]:  # nothing in the mask (for labels: everything background)
        target = torch.zeros_like(target)
    return pred, target


def _glf_error(case: dict) -> tuple[str, ...] | None:
    """The words of the error the front-end must raise for the case, or None."""
    if case["activation"] == "softmax" and case["channels"] == 1:
        return ("softmax",)
    return None


def _differentiable(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Leaf copies that collect gradients (arrange them afterwards: a clone drops a layout)."""
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def check_glf_stats(case: dict, backend: str) -> None:
    tried()
    pred, target = glf_inputs(case)
    layout, target = case["layout"], arrange(target, case["layout"])
    activation, tol = case["activation"], tolerance("glf_stats", case["dtype"])
    error = _glf_error(case)
    if error is not None:
        with use_backend(backend):
            raises_clearly(lambda: glf_stats(arrange(pred, layout), target, activation),
                           "glf_stats", *error)
        return
    ours, ref = _differentiable(pred, pred)
    expected = glf_stats_reference(arrange(ref, layout), target, activation)
    with use_backend(backend):
        got = glf_stats(arrange(ours, layout), target, activation)
    for name, g, e in zip(("true_positives", "false_positives", "false_negatives"), got, expected):
        assert_matches(g.detach(), e.detach(), tol, f"glf_stats {name}")
    empty_mask = case["kind"] in ("soft", "binary") or case["channels"] == 1
    if case["empty"] and empty_mask and not case["poison"]:  # no true positives, no misses
        assert not bool(got.true_positives.any()) and not bool(got.false_negatives.any())
    weights = [torch.randn(e.shape, generator=_generator(case["seed"] + i), dtype=e.dtype)
               for i, e in enumerate(expected)]
    sum((w * e).sum() for w, e in zip(weights, expected)).backward()
    with use_backend(backend):
        sum((w * g).sum() for w, g in zip(weights, got)).backward()
    assert ours.grad.dtype == pred.dtype
    if not case["poison"]:
        assert_matches(ours.grad, ref.grad, tol * 10, "glf_stats d/dpred")


def check_glf_loss(case: dict, backend: str) -> None:
    tried()
    pred, target = glf_inputs(case)
    layout, target = case["layout"], arrange(target, case["layout"])
    activation, tol = case["activation"], tolerance("glf_loss", case["dtype"])
    weights = case["weights"]
    options = dict(activation=activation, batch=case["batch_loss"])
    error = _glf_error(case)
    if error is not None:
        with use_backend(backend):
            raises_clearly(lambda: glf_loss(arrange(pred, layout), target, *weights, **options),
                           "glf_stats", *error)
        return
    ours, ref = _differentiable(pred, pred)
    expected = glf_loss_reference(arrange(ref, layout), target, *weights, **options)
    with use_backend(backend):
        got, _ = glf_loss(arrange(ours, layout), target, *weights, **options)
    assert_matches(got.detach(), expected.detach(), tol, "glf_loss")
    upstream = torch.randn(expected.shape, generator=_generator(case["seed"]), dtype=expected.dtype)
    (upstream * expected).sum().backward()
    with use_backend(backend):
        (upstream * got).sum().backward()
    if not case["poison"]:
        assert_matches(ours.grad, ref.grad, tol * 10, "glf_loss d/dinput")


@pytest.mark.parametrize("backend", BACKENDS)
def test_glf_stats_matches_reference(backend):
    backend_or_skip("glf_stats", backend)

    @fuzz(backend)
    @given(case=glf_cases(max_voxels(backend)))
    def check(case):
        check_glf_stats(case, backend)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_glf_stats_non_finite_predictions_propagate(backend):
    backend_or_skip("glf_stats", backend)

    @fuzz(backend)
    @given(case=glf_cases(max_voxels(backend), non_finite=True))
    def check(case):
        check_glf_stats(case, backend)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_glf_loss_matches_reference(backend):
    backend_or_skip("glf_stats", backend)

    @fuzz(backend)
    @given(case=glf_cases(max_voxels(backend), non_finite=False) | glf_cases(64, True))
    def check(case):
        check_glf_loss(case, backend)

    check()


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_glf_mismatched_inputs_raise_clearly(backend):
    backend_or_skip("glf_stats", backend)

    @fuzz(backend)
    @given(case=glf_cases(64), fault=st.sampled_from(
        ["shape", "device", "integer_pred", "float_labels", "labels_out_of_range", "no_spatial"]))
    def check(case, fault):
        tried()
        pred, target = (arrange(t, case["layout"]) for t in glf_inputs(case))
        n, c = pred.shape[:2]
        activation = "sigmoid"
        if fault == "shape":
            target, words = torch.rand(n, c, *pred.shape[2:-1], pred.shape[-1] + 1), ("shape",)
        elif fault == "device":
            target, words = torch.empty(target.shape, device="meta"), ("device",)
        elif fault == "integer_pred":
            pred, words = torch.randint(0, 2, pred.shape), ("floating-point",)
        elif fault == "float_labels":
            target, words = torch.rand(n, 1, *pred.shape[2:]), ("integer",)
            if c == 1:
                return  # a float [N, 1, ...] target is a mask of pred's shape
        elif fault == "labels_out_of_range":
            target = torch.zeros(n, 1, *pred.shape[2:], dtype=torch.long)
            target.view(-1)[-1] = max(c, 2)
            words = ("must lie in",)
        else:
            pred, target, words = pred.reshape(n, -1), target.reshape(n, -1), ("spatial",)
        with use_backend(backend):
            raises_clearly(lambda: glf_stats(pred, target, activation), "glf_stats", *words)
            raises_clearly(lambda: glf_loss(pred, target, 1.0, 1.0, 1.0, activation=activation),
                           "glf_stats", *words)

    check()


# --- warp3d ----------------------------------------------------------------------------------


@st.composite
def warp_cases(draw, limit: int, non_finite: str | None = None) -> dict:
    dims = draw(st.sampled_from([2, 3]))
    transform = draw(st.sampled_from(["none", "affine", "displacement", "both"]))
    return dict(
        dims=dims, batch=draw(st.integers(1, 2)), channels=draw(st.integers(1, 3)),
        volume=draw(spatial_shapes(dims, limit)), field=draw(spatial_shapes(dims, limit // 4)),
        size=draw(st.none() | spatial_shapes(dims, limit)),
        transform=transform, compose=draw(st.sampled_from(["affine_first", "displacement_first"])),
        mode=draw(st.sampled_from(["bilinear", "nearest"])),
        padding_mode=draw(st.sampled_from(["zeros", "border"])),
        align_corners=draw(st.booleans()), dtype=draw(st.sampled_from(DTYPES)),
        labels=draw(st.sampled_from([None, torch.int64, torch.uint8, torch.int32])),
        layout=draw(st.sampled_from(LAYOUTS)), unbatched_affine=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)), non_finite=non_finite,
    )


def warp_inputs(case: dict) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(volume, displacement, affine) of the case, contiguous; an integer label map when the
    case asks for one in nearest mode."""
    gen = _generator(case["seed"])
    n, dims, dtype = case["batch"], case["dims"], case["dtype"]
    volume = torch.randn((n, case["channels"], *case["volume"]), generator=gen, dtype=F64)
    displacement = affine = None
    if case["transform"] in ("displacement", "both"):
        displacement = 0.2 * torch.randn((n, dims, *case["field"]), generator=gen, dtype=F64)
    if case["transform"] in ("affine", "both"):
        affine = torch.eye(dims, dims + 1, dtype=F64) + 0.25 * torch.randn(
            (n, dims, dims + 1), generator=gen, dtype=F64)
        if case["unbatched_affine"]:
            affine = affine[0]
    if case["non_finite"] == "volume":
        volume = _poison(volume, gen, 2)
    elif case["non_finite"] == "transform":
        if displacement is not None:
            displacement = _poison(displacement, gen, 2)
        if affine is not None:
            affine = _poison(affine, gen, 1)
    if case["labels"] is not None and case["mode"] == "nearest" and not case["non_finite"]:
        volume = torch.randint(0, 7, volume.shape, generator=gen).to(case["labels"])
        dtype = dtype if dtype in (F32, F64) else F32
        return volume, *(t.to(dtype) if t is not None else None for t in (displacement, affine))
    return tuple(t.to(dtype) if t is not None else None for t in (volume, displacement, affine))


def _warp_magnification(case: dict) -> float:
    """How much float32 rounding of the sampling coordinates is magnified, per 1024: the
    largest volume extent, times the largest displacement extent when there is one."""
    extent = max(case["volume"])
    if case["transform"] in ("displacement", "both"):
        extent *= max(case["field"])
    return max(1.0, extent / 1024)


def _near_non_finite(volume: torch.Tensor, displacement, affine, options: dict) -> torch.Tensor:
    """Outputs whose interpolation cell lies within one voxel of a NaN/Inf voxel. There a tap
    of weight zero (0 * NaN) makes an output NaN, in grid_sample and in medtune's kernels alike
    but not always for the same outputs; everywhere else the outputs must agree."""
    bad = (~torch.isfinite(volume)).double()
    pool = torch.nn.functional.max_pool3d if bad.dim() == 5 else torch.nn.functional.max_pool2d
    near = pool(bad, 3, stride=1, padding=1)
    transforms = [t.detach().double() if t is not None else None for t in (displacement, affine)]
    reach = warp3d_reference(near, *transforms, **{**options, "mode": "bilinear",
                                                   "padding_mode": "border"})
    return reach > 0


def check_warp3d(case: dict, backend: str) -> None:
    tried()
    volume, displacement, affine = warp_inputs(case)
    layout = case["layout"]
    options = dict(compose=case["compose"], mode=case["mode"], padding_mode=case["padding_mode"],
                   align_corners=case["align_corners"], size=case["size"])
    dtype = volume.dtype
    if dtype in (F16, BF16):
        with use_backend(backend):
            raises_clearly(lambda: warp3d(*(arrange(t, layout) if t is not None else None
                                            for t in (volume, displacement, affine)), **options),
                           "warp3d", "float32")
        return
    integer = not dtype.is_floating_point
    tol = tolerance("warp3d", next((t.dtype for t in (displacement, affine) if t is not None), F32)
                    if integer else dtype)
    if dtype == F32:
        tol *= _warp_magnification(case)
    grads = not integer and case["non_finite"] is None
    ours = [_differentiable(t)[0] if t is not None and grads else t
            for t in (volume, displacement, affine)]
    # the ground truth is computed in float64: grid_sample's own float32 rounding of the
    # coordinates is larger than medtune's (3.6e-3 against 1.8e-5 at 270 voxels)
    exact = [t.double() if t is not None and t.is_floating_point() else t
             for t in (volume, displacement, affine)]
    ref = [_differentiable(t)[0] if t is not None and grads else t for t in exact]
    expected = warp3d_reference(*(arrange(t, layout) if t is not None else None for t in ref),
                                **options)
    expected = expected if integer else expected.to(dtype)
    with use_backend(backend):
        got = warp3d(*(arrange(t, layout) if t is not None else None for t in ours), **options)
    if case["non_finite"] == "transform":
        # a non-finite coordinate samples outside the volume: finite, never a crash
        assert got.shape == expected.shape and got.dtype == expected.dtype
        assert bool(torch.isfinite(got).all()), "warp3d: non-finite coordinates gave NaN/Inf"
        return
    if case["mode"] == "nearest" and (dtype == F32 or integer):
        # float32 coordinates may round a near-tie either way: every output is a voxel's value
        # (or the zero of the padding)
        assert got.shape == expected.shape and got.dtype == expected.dtype
        values = torch.cat([arrange(volume, layout).reshape(-1), torch.zeros(1, dtype=dtype)])
        found = torch.isin(got, values) | (torch.isnan(got) & bool(volume.isnan().any()))
        assert bool(found.all()), "warp3d: nearest invented a value"
        return
    loose = None
    if case["non_finite"] == "volume":
        loose = _near_non_finite(arrange(volume, layout), *ours[1:], options)
    assert_matches(got.detach(), expected.detach(), tol, "warp3d", loose)
    if not grads:
        return
    weights = torch.randn(expected.shape, generator=_generator(case["seed"]), dtype=dtype)
    (weights * expected).sum().backward()
    with use_backend(backend):
        (weights * got).sum().backward()
    for name, g, e in zip(("volume", "displacement", "affine"), ours, ref):
        if e is None:
            continue
        assert g.grad is not None, f"warp3d: no gradient wrt the {name}"
        if name == "volume" or case["mode"] == "bilinear":
            assert_matches(g.grad, e.grad.to(dtype), tol * 10, f"warp3d d/d{name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_warp3d_matches_reference(backend):
    backend_or_skip("warp3d", backend)

    @fuzz(backend)
    @given(case=warp_cases(max_voxels(backend)))
    def check(case):
        check_warp3d(case, backend)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_warp3d_non_finite(backend):
    backend_or_skip("warp3d", backend)

    @fuzz(backend)
    @given(case=st.sampled_from(["volume", "transform"]).flatmap(
        lambda where: warp_cases(max_voxels(backend), non_finite=where)))
    def check(case):
        check_warp3d(case, backend)

    check()


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_warp3d_mismatched_inputs_raise_clearly(backend):
    backend_or_skip("warp3d", backend)

    @fuzz(backend)
    @given(case=warp_cases(64), fault=st.sampled_from(
        ["batch", "channels", "device", "dtype", "affine_shape", "size", "empty", "rank"]))
    def check(case, fault):
        tried()
        case = {**case, "transform": "both", "dtype": F32, "labels": None}
        volume, displacement, affine = (arrange(t, case["layout"]) for t in warp_inputs(case))
        n, dims = volume.shape[0], case["dims"]
        if fault == "batch":
            displacement, words = torch.cat([displacement, displacement[:1]]), ("N =",)
        elif fault == "channels":
            displacement, words = torch.cat([displacement, displacement[:, :1]], 1), ("displacement",)
        elif fault == "device":
            affine, words = torch.empty(affine.shape, device="meta"), ("device",)
        elif fault == "dtype":
            affine, words = affine.double(), ("one dtype",)
        elif fault == "affine_shape":
            affine, words = torch.zeros(n, dims + 1, dims + 1), ("affine must be",)
        elif fault == "size":
            words = ("size must be",)
            with use_backend(backend):
                raises_clearly(lambda: warp3d(volume, displacement, affine, size=(0,) * dims),
                               "warp3d", *words)
            return
        elif fault == "empty":
            volume, words = volume[:, :, :0], ("empty",)
        else:
            volume, words = volume.reshape(n, -1), ("volume must be",)
        with use_backend(backend):
            raises_clearly(lambda: warp3d(volume, displacement, affine), "warp3d", *words)

    check()


@pytest.mark.parametrize("backend", ["torch", "cpp"])
@pytest.mark.parametrize("labels", [torch.int32, torch.int64])
def test_warp3d_label_map_with_float64_transform(backend, labels):
    """Found by the long profile: an int32 label map with a float64 affine was refused as
    "label values beyond ±2**53" (the limit wrapped to int32 in the comparison)."""
    backend_or_skip("warp3d", backend)
    volume = torch.arange(12, dtype=labels).reshape(1, 1, 3, 4)
    affine = torch.eye(2, 3, dtype=F64)[None]
    with use_backend(backend):
        assert torch.equal(warp3d(volume, None, affine, mode="nearest"), volume)
    too_large = torch.full((1, 1, 2, 2), 2**24 + 1, dtype=torch.int32)
    with use_backend(backend):
        raises_clearly(lambda: warp3d(too_large, None, affine.float(), mode="nearest"), "warp3d",
                       "not exact")


# --- chol_append -----------------------------------------------------------------------------


@st.composite
def chol_cases(draw, non_finite: str | None = None) -> dict:
    return dict(
        n=draw(st.integers(0, 40)), k=draw(st.integers(1, 6)), dim=draw(st.integers(1, 4)),
        dtype=draw(st.sampled_from(DTYPES)), duplicate=draw(st.booleans()),
        inverse=draw(st.booleans()), out=draw(st.sampled_from(["none", "in_place", "buffer"])),
        layout=draw(st.sampled_from(["contiguous", "transposed", "strided"])),
        seed=draw(st.integers(0, 2**31 - 1)), non_finite=non_finite,
    )


def chol_problem(case: dict) -> torch.Tensor:
    """The float64 Gram matrix (with noise on the diagonal) of n + k points; with
    ``duplicate``, the first new point repeats an old one's row, so the matrix is singular."""
    gen = _generator(case["seed"])
    n, k = case["n"], case["k"]
    x = torch.rand((n + k, case["dim"]), generator=gen, dtype=F64)
    noise = 1e-3 if case["dtype"] == F64 else 1e-1
    K = torch.exp(-0.5 * torch.cdist(x, x).square() / 0.4**2) + noise * torch.eye(n + k, dtype=F64)
    if case["duplicate"] and n > 0:
        order = list(range(n + k))
        order[n] = int(torch.randint(0, n, (1,), generator=gen))
        K = K[order][:, order]
    return K


def check_chol_append(case: dict, backend: str) -> None:
    tried()
    n, k, dtype = case["n"], case["k"], case["dtype"]
    K64 = chol_problem(case)
    K = K64.to(dtype)
    old = K64[:n, :n]
    if dtype in (F32, F64):
        L = torch.linalg.cholesky(old).to(dtype)
        Linv = torch.linalg.solve_triangular(torch.linalg.cholesky(old), torch.eye(n, dtype=F64),
                                             upper=False).to(dtype)
    else:
        L = torch.linalg.cholesky(old.float()).to(dtype)
        Linv = L.clone()
    K_new_old, K_new_new = K[n:, :n], K[n:, n:]  # views of K, not contiguous
    if case["non_finite"] == "new":
        K_new_new = _poison(K_new_new, _generator(case["seed"]), 1)
    if case["layout"] != "contiguous":
        K_new_old, K_new_new = arrange(K_new_old, case["layout"]), arrange(K_new_new, case["layout"])
    Linv_in = Linv if case["inverse"] else None
    out = None
    if case["out"] != "none" and dtype in (F32, F64):
        side = n + k + 3
        buffers = [torch.full((side, side), float("nan"), dtype=dtype) for _ in range(2)]
        if case["out"] == "in_place":
            for buffer, factor in zip(buffers, (L, Linv)):
                buffer[:n, :n] = factor
            L = buffers[0][:n, :n]
            Linv_in = buffers[1][:n, :n] if case["inverse"] else None
        out = (buffers[0], buffers[1] if case["inverse"] else None)
    if case["non_finite"] == "factor" and n:
        L = _poison(L, _generator(case["seed"]), 1)
    call = lambda: chol_append(L, K_new_old, K_new_new, Linv=Linv_in, out=out)  # noqa: E731
    with use_backend(backend):
        if dtype in (F16, BF16):
            return raises_clearly(call, "chol_append", "dtype", str(dtype))
        if case["non_finite"] == "new":
            return raises_clearly(call, "chol_append", "nan or inf")
        if case["non_finite"] == "factor" and n:
            # a non-finite factor: an error (its Schur complement cannot be factorised) or a
            # non-finite result, never a crash
            try:
                got = call()
            except CLEAR_ERRORS as error:
                return assert_clear_error(error, "chol_append", "not positive definite")
            assert not bool(torch.isfinite(got.L).all())
            return
        got = call()
    m = n + k
    tol = tolerance("chol_append", dtype)
    assert got.L.shape == (m, m) and got.L.dtype == dtype
    assert bool(torch.isfinite(got.L).all()), "chol_append returned NaN/Inf for finite inputs"
    assert torch.equal(got.L, got.L.tril())
    assert (got.Linv is None) == (not case["inverse"])
    if out is not None:
        assert got.L.data_ptr() == out[0].data_ptr()
    target = K64.clone()
    target.diagonal()[n:] += got.jitter_added
    # backward stability: L Lᵀ reproduces the (jittered) Gram matrix, whatever its condition
    rebuilt = got.L.double() @ got.L.double().T
    eps = torch.finfo(dtype).eps
    assert float((rebuilt - target).abs().max()) <= 50 * m * eps * float(target.abs().max())
    if case["duplicate"] and n:
        assert got.jitter_added > 0, "a duplicated point must be jittered"
        return
    assert got.jitter_added == 0.0
    expected = chol_append_reference(K64, k)
    for name, g, e in (("L", got.L, expected.L), ("Linv", got.Linv, expected.Linv)):
        if g is None:
            continue
        error = float((g.double() - e).abs().max() / e.abs().max())
        assert error <= tol, f"chol_append {name}: relative error {error:.3g} > {tol}"


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_chol_append_matches_reference(backend):
    backend_or_skip("chol_append", backend)

    @fuzz(backend)
    @given(case=chol_cases())
    def check(case):
        check_chol_append(case, backend)

    check()


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_chol_append_non_finite(backend):
    backend_or_skip("chol_append", backend)

    @fuzz(backend)
    @given(case=st.sampled_from(["new", "factor"]).flatmap(lambda w: chol_cases(non_finite=w)))
    def check(case):
        check_chol_append(case, backend)

    check()


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_chol_append_mismatched_inputs_raise_clearly(backend):
    backend_or_skip("chol_append", backend)

    @fuzz(backend)
    @given(n=st.integers(1, 12), k=st.integers(1, 4), fault=st.sampled_from(
        ["k_shape", "n_shape", "dtype", "device", "linv_shape", "not_square", "small_buffer",
         "requires_grad"]))
    def check(n, k, fault):
        tried()
        K = chol_problem(dict(n=n, k=k, dim=2, dtype=F64, duplicate=False, seed=n * 7 + k))
        L = torch.linalg.cholesky(K[:n, :n])
        args = dict(L=L, K_new_old=K[n:, :n], K_new_new=K[n:, n:], Linv=None, out=None)
        words = {"k_shape": "K_new_old must be", "n_shape": "K_new_old must be",
                 "dtype": "one dtype", "device": "move them together", "linv_shape": "Linv must",
                 "not_square": "L must be square", "small_buffer": "larger buffer",
                 "requires_grad": "not differentiable"}[fault]
        if fault == "k_shape":
            args["K_new_old"] = K[n:-1, :n] if k > 1 else K[:0, :n]
        elif fault == "n_shape":
            args["K_new_old"] = K[n:, :n - 1]
        elif fault == "dtype":
            args["K_new_new"] = args["K_new_new"].float()
        elif fault == "device":
            args["K_new_new"] = torch.empty((k, k), dtype=F64, device="meta")
        elif fault == "linv_shape":
            args["Linv"] = torch.eye(n + 1, dtype=F64)
        elif fault == "not_square":
            args["L"] = L[:, :-1] if n > 1 else torch.ones(1, 2, dtype=F64)
        elif fault == "small_buffer":
            args["out"] = (torch.zeros(n + k - 1, n + k - 1, dtype=F64), None)
        else:
            args["K_new_new"] = args["K_new_new"].clone().requires_grad_(True)
        with use_backend(backend):
            raises_clearly(lambda: chol_append(**args), "chol_append", words)

    check()


# --- gp_acquisition --------------------------------------------------------------------------


@st.composite
def gp_cases(draw, limit: int, non_finite: str | None = None) -> dict:
    long_axis = draw(st.sampled_from(["none", "candidates", "observations"]))
    m = draw(st.integers(0, 40)) if long_axis != "candidates" else draw(st.integers(1, limit))
    n = draw(st.integers(0, 24)) if long_axis != "observations" else draw(
        st.integers(1, min(limit, 96)))
    return dict(
        m=m, n=n, d=draw(st.integers(1, 6)), dtype=draw(st.sampled_from(DTYPES)),
        kernel=draw(st.sampled_from(["matern52", "rbf"])),
        acquisition=draw(st.sampled_from(["ei", "pi", "ucb", "none"])),
        maximize=draw(st.booleans()), xi=draw(st.sampled_from([0.0, 0.01, 0.5])),
        beta=draw(st.sampled_from([0.0, 2.0, 9.0])), layout=draw(st.sampled_from(LAYOUTS[:4])),
        at_training_points=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)),
        non_finite=non_finite,
    )


def gp_inputs(case: dict) -> tuple[list[torch.Tensor], dict]:
    """(candidates, train_x, Linv, alpha, lengthscales) and the scalar arguments of a fitted
    GP; Linv's upper triangle (never read) holds NaN."""
    gen = _generator(case["seed"])
    m, n, d, dtype = case["m"], case["n"], case["d"], case["dtype"]
    train_x = torch.rand((n, d), generator=gen, dtype=F64)
    y = torch.sin(6 * train_x).sum(-1)
    lengthscales = 0.2 + 0.6 * torch.rand(d, generator=gen, dtype=F64)
    outputscale, mean_constant, noise = 1.3, 0.2, 1e-2
    scaled = train_x / lengthscales
    r2 = torch.cdist(scaled, scaled).square()
    if case["kernel"] == "rbf":
        K = outputscale * torch.exp(-0.5 * r2)
    else:
        r = r2.sqrt()
        K = outputscale * (1 + 5**0.5 * r + 5 / 3 * r2) * torch.exp(-(5**0.5) * r)
    L = torch.linalg.cholesky(K + noise * torch.eye(n, dtype=F64))
    Linv = torch.linalg.solve_triangular(L, torch.eye(n, dtype=F64), upper=False)
    Linv = Linv.where(torch.ones_like(Linv, dtype=torch.bool).tril(), float("nan"))
    alpha = torch.cholesky_solve((y - mean_constant)[:, None], L).squeeze(-1)
    candidates = torch.rand((m, d), generator=gen, dtype=F64)
    if case["at_training_points"]:
        shared = min(m, n)
        candidates[:shared] = train_x[:shared]  # the variance cancels to its floor there
    if case["non_finite"] == "candidates" and m:
        candidates = _poison(candidates, gen, 2)
    elif case["non_finite"] == "observations" and n:
        alpha = _poison(alpha, gen, 1)
    tensors = [arrange(t.to(dtype), case["layout"]) for t in
               (candidates, train_x, Linv, alpha, lengthscales)]
    best_f = float(y.min()) if n else 0.0
    scalars = dict(outputscale=outputscale, kernel=case["kernel"], mean_constant=mean_constant,
                   acquisition=case["acquisition"], best_f=best_f, xi=case["xi"],
                   beta=case["beta"], maximize=case["maximize"])
    return tensors, scalars


def check_gp_acquisition(case: dict, backend: str) -> None:
    tried()
    tensors, scalars = gp_inputs(case)
    dtype = case["dtype"]
    with use_backend(backend):
        call = lambda: gp_acquisition(*tensors, **scalars)  # noqa: E731
        if dtype in (F16, BF16):
            return raises_clearly(call, "gp_acquisition", "float32 or float64")
        got = call()
    expected = gp_acquisition_reference(*tensors, **scalars)
    tol = tolerance("gp_acquisition", dtype)
    for name, g, e in zip(("mean", "variance", "score"), got, expected):
        assert_matches(g, e, tol, f"gp_acquisition {name}")
    finite = torch.isfinite(got.variance)
    assert bool((got.variance[finite] >= MIN_VARIANCE[dtype]).all())
    if case["non_finite"] is None:
        assert all(bool(torch.isfinite(t).all()) for t in got), "NaN/Inf from finite inputs"


@pytest.mark.parametrize("backend", BACKENDS)
def test_gp_acquisition_matches_reference(backend):
    backend_or_skip("gp_acquisition", backend)

    @fuzz(backend)
    @given(case=gp_cases(max_voxels(backend)))
    def check(case):
        check_gp_acquisition(case, backend)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gp_acquisition_non_finite_inputs_propagate(backend):
    backend_or_skip("gp_acquisition", backend)

    @fuzz(backend)
    @given(case=st.sampled_from(["candidates", "observations"]).flatmap(
        lambda where: gp_cases(max_voxels(backend), non_finite=where)))
    def check(case):
        check_gp_acquisition(case, backend)

    check()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gp_acquisition_nan_candidate_keeps_nan_variance(backend):
    """Found by the long profile: Triton's variance floor (tl.maximum) turned the NaN variance
    of a NaN candidate into MIN_VARIANCE, a confident-looking value."""
    backend_or_skip("gp_acquisition", backend)
    case = dict(m=3, n=4, d=2, dtype=F64, kernel="matern52", acquisition="ei", maximize=False,
                xi=0.0, beta=2.0, layout="contiguous", at_training_points=False, seed=1,
                non_finite=None)
    tensors, scalars = gp_inputs(case)
    tensors[0][1, 0] = float("nan")
    with use_backend(backend):
        got = gp_acquisition(*tensors, **scalars)
    assert torch.isnan(got.variance[1]) and torch.isnan(got.mean[1])
    assert bool(torch.isfinite(got.variance[[0, 2]]).all())


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_gp_acquisition_mismatched_inputs_raise_clearly(backend):
    backend_or_skip("gp_acquisition", backend)

    @fuzz(backend)
    @given(case=gp_cases(64), fault=st.sampled_from(
        ["dims", "linv", "alpha", "lengthscales", "dtype", "device", "scalar", "best_f"]))
    def check(case, fault):
        tried()
        case = {**case, "dtype": F64, "n": max(case["n"], 1)}
        (candidates, train_x, Linv, alpha, lengthscales), scalars = gp_inputs(case)
        d, n = case["d"], case["n"]
        if fault == "dims":
            candidates, words = torch.zeros(3, d + 1, dtype=F64), ("train_x must be",)
        elif fault == "linv":
            Linv, words = torch.eye(n + 1, dtype=F64), ("Linv must be",)
        elif fault == "alpha":
            alpha, words = alpha[:-1], ("alpha must be",)
        elif fault == "lengthscales":
            lengthscales, words = -lengthscales, ("positive",)
        elif fault == "dtype":
            train_x, words = train_x.float(), ("one dtype",)
        elif fault == "device":
            alpha, words = torch.empty(alpha.shape, dtype=F64, device="meta"), ("device",)
        elif fault == "scalar":
            scalars["outputscale"], words = float("nan"), ("finite",)
        else:
            scalars["acquisition"], scalars["best_f"], words = "ei", None, ("needs best_f",)
        with use_backend(backend):
            raises_clearly(lambda: gp_acquisition(candidates, train_x, Linv, alpha, lengthscales,
                                                  **scalars), "gp_acquisition", *words)

    check()
