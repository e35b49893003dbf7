"""The benchmark cases: what is measured, at which shapes, and against which peer.

One module over 600 lines on purpose: it is the single table of cases the runner, the report
and the GPU check read.

A case has one or more modes (``forward``, ``forward+backward``) and several implementations
of the same computation; one of them is the peer every other is compared with. Peers (MONAI,
the PyTorch references) are imported only when built, so a memory probe for one
implementation loads nothing it does not use.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

FORWARD = "forward"
FORWARD_BACKWARD = "forward+backward"

# Tversky's alpha weighs false positives and beta false negatives (MONAI's convention); as a
# generalized overlap loss that is (tp_weight, fp_weight, fn_weight) = (1, alpha, beta).
TVERSKY_ALPHA = 0.3
TVERSKY_BETA = 0.7

Computation = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Inputs:
    """A prediction and a target, and how the report names them."""

    pred: Tensor
    target: Tensor
    description: str

    @property
    def pred_bytes(self) -> int:
        return self.pred.numel() * self.pred.element_size()

    @property
    def target_bytes(self) -> int:
        return self.target.numel() * self.target.element_size()


@dataclass(frozen=True)
class Implementation:
    """One way to compute a case. ``build()`` returns ``f(pred, target) -> Tensor``.

    ``label`` may contain ``{backend}``: the medtune kernel backend that runs on the device.
    """

    key: str
    label: str
    build: Callable[[], Computation]


@dataclass(frozen=True)
class Case:
    """A computation measured in each of ``modes`` for every implementation.

    ``shapes`` maps ``"full"`` and ``"quick"`` to the shape of the prediction; ``make_target``
    draws a target for a prediction shape. ``objective`` reduces an implementation's output to
    the scalar that is back-propagated. Targets (from the issues) are judged on full shapes:
    ``speedup_target`` against the peer on the CPU, ``memory_target`` in input-sized tensors
    besides the returned gradient, ``bandwidth_target`` as a fraction of the GPU's peak.
    """

    name: str
    title: str
    modes: tuple[str, ...]
    implementations: tuple[Implementation, ...]
    peer: str
    subject: str
    shapes: dict[str, tuple[int, ...]]
    make_pred: Callable[[tuple[int, ...], torch.Generator], Tensor]
    make_target: Callable[[tuple[int, ...], torch.Generator], Tensor]
    describe: Callable[[tuple[int, ...]], str]
    objective: Callable[[Tensor], Tensor] = torch.mean
    kernel_op: str = "glf_stats"  # the op whose backend fills ``{backend}`` in the labels
    speedup_target: float | None = None
    memory_target: float | None = None
    bandwidth_target: float | None = None
    #: the share of elements whose difference from the peer counts: 1.0 compares the largest;
    #: below 1, that quantile of |mine - peer| (for gradients of piecewise-linear interpolation,
    #: which jump at voxel faces, where float32 rounding may put a point on either side)
    agreement_quantile: float = 1.0
    #: also timed in a process with glibc's default malloc settings (what a user's fresh process
    #: gets), besides the fixed thresholds every case is timed with (see benchmarks.worker)
    malloc_defaults: bool = False

    def implementation(self, key: str) -> Implementation:
        for impl in self.implementations:
            if impl.key == key:
                return impl
        raise KeyError(f"case {self.name!r} has no implementation {key!r}")

    def make_inputs(self, quick: bool, device: torch.device | str) -> Inputs:
        """The inputs at the quick or full shape, the same on every run (fixed seed)."""
        shape = self.shapes["quick" if quick else "full"]
        generator = torch.Generator().manual_seed(20240)
        pred = self.make_pred(shape, generator).to(device)
        target = self.make_target(shape, generator).to(device)
        return Inputs(pred, target, self.describe(shape))


class Step:
    """One call of an implementation in a mode; ``step()`` returns (output, gradient or None).

    forward+backward is what a training step does: drop the previous gradient, compute the
    loss, reduce it to a scalar and back-propagate into the prediction.
    """

    def __init__(self, case: Case, impl: Implementation, mode: str, inputs: Inputs) -> None:
        if mode not in (FORWARD, FORWARD_BACKWARD):
            raise ValueError(f"unknown mode {mode!r}; expected {FORWARD!r} or {FORWARD_BACKWARD!r}")
        self.compute = impl.build()
        self.objective = case.objective
        self.backward = mode == FORWARD_BACKWARD
        self.pred = inputs.pred.detach().requires_grad_(self.backward)
        self.target = inputs.target

    def __call__(self) -> tuple[Tensor, Tensor | None]:
        if not self.backward:
            return self.compute(self.pred, self.target), None
        self.pred.grad = None
        loss = self.objective(self.compute(self.pred, self.target))
        loss.backward()
        return loss.detach(), self.pred.grad

    def clear(self) -> None:
        """Drop the gradient the last call left behind."""
        self.pred.grad = None


def bytes_moved(inputs: Inputs, mode: str) -> int:
    """The least traffic a fused implementation needs: read pred and target once per pass
    (forward; forward and backward), and write the gradient once."""
    one_pass = inputs.pred_bytes + inputs.target_bytes
    if mode == FORWARD:
        return one_pass
    return 2 * one_pass + inputs.pred_bytes


def dims(shape: tuple[int, ...]) -> str:
    return "×".join(str(d) for d in shape)


# --- implementations ---------------------------------------------------------------------


def _medtune_stats() -> Computation:
    from medtune.kernels import glf_stats

    return lambda pred, target: torch.stack(tuple(glf_stats(pred, target)))


def _reference_stats() -> Computation:
    from medtune.kernels import glf_stats_reference

    return lambda pred, target: torch.stack(tuple(glf_stats_reference(pred, target)))


def _medtune_loss(activation: str) -> Computation:
    from medtune.kernels import glf_loss

    def fused(pred: Tensor, target: Tensor) -> Tensor:
        loss, _ = glf_loss(pred, target, 1.0, TVERSKY_ALPHA, TVERSKY_BETA, activation=activation)
        return loss

    return fused


def _reference_loss(activation: str) -> Computation:
    from medtune.kernels import glf_loss_reference

    return partial(
        glf_loss_reference,
        tp_weight=1.0,
        fp_weight=TVERSKY_ALPHA,
        fn_weight=TVERSKY_BETA,
        activation=activation,
    )


def _monai_tversky(**options: bool) -> Computation:
    from monai.losses import TverskyLoss

    return TverskyLoss(alpha=TVERSKY_ALPHA, beta=TVERSKY_BETA, **options)


# --- inputs ------------------------------------------------------------------------------


def _probabilities(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.rand(shape, generator=generator)


def _logits(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=generator)


def _binary_mask(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return (torch.rand(shape, generator=generator) < 0.3).float()


def _label_map(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    n, c, *spatial = shape
    return torch.randint(0, c, (n, 1, *spatial), generator=generator, dtype=torch.int64)


def _stats_objective(stats: Tensor) -> Tensor:
    # stats is [3, N, C] = (tp, fp, fn); distinct weights so every term reaches the gradient.
    return (stats[0] + TVERSKY_ALPHA * stats[1] + TVERSKY_BETA * stats[2]).sum()


# --- chol_append: appending one point to a Cholesky factor vs refactorising -----------------
#
# "pred" is the Gram matrix K [n+1, n+1] of n+1 points (squared-exponential kernel plus 1e-3
# noise, float64); "target" holds, stacked, the two [n+1, n+1] buffers whose top-left n × n
# blocks hold L and L⁻¹ of the first n points. The appends extend them in place (rewriting the
# same last row on every call); every implementation returns the [n+1, n+1] factor.


def _gram_matrix(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    (size,) = shape
    points = torch.rand((size + 1, 6), generator=generator, dtype=torch.float64)
    gram = torch.exp(-0.5 * torch.cdist(points, points).square() / 0.3**2)
    return gram + 1e-3 * torch.eye(size + 1, dtype=torch.float64)


def _factor_buffers(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    (size,) = shape
    seeded = torch.Generator().manual_seed(20240)  # the same draw as make_pred's
    gram = _gram_matrix(shape, seeded)[:size, :size]
    buffers = torch.zeros((2, size + 1, size + 1), dtype=torch.float64)
    factor = torch.linalg.cholesky(gram)
    buffers[0, :size, :size] = factor
    eye = torch.eye(size, dtype=torch.float64)
    buffers[1, :size, :size] = torch.linalg.solve_triangular(factor, eye, upper=False)
    return buffers


def _refactor(with_inverse: bool) -> Computation:
    def refactor(gram: Tensor, buffers: Tensor) -> Tensor:
        factor = torch.linalg.cholesky(gram)
        if with_inverse:
            eye = torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
            torch.linalg.solve_triangular(factor, eye, upper=False)
        return factor

    return refactor


def _append(with_inverse: bool) -> Computation:
    from medtune.kernels import chol_append

    def append(gram: Tensor, buffers: Tensor) -> Tensor:
        n = gram.shape[0] - 1
        L_buffer, Linv_buffer = buffers[0], buffers[1]
        Linv = Linv_buffer[:n, :n] if with_inverse else None
        out = (L_buffer, Linv_buffer if with_inverse else None)
        return chol_append(L_buffer[:n, :n], gram[n:, :n], gram[n:, n:], Linv, out=out).L

    return append


def _chol_append_case(size: int) -> Case:
    return Case(
        name=f"chol_append_{size}",
        title=f"chol_append: one point appended to the Cholesky factor of {size} points",
        modes=(FORWARD,),
        implementations=(
            Implementation("append", "medtune chol_append, L only [{backend}]", partial(_append, False)),
            Implementation(
                "append_inverse", "medtune chol_append, L and L⁻¹ [{backend}]", partial(_append, True)
            ),
            Implementation("refactor", "torch.linalg.cholesky, full refactorisation", partial(_refactor, False)),
            Implementation(
                "refactor_inverse",
                "torch.linalg.cholesky + solve_triangular for L⁻¹, full",
                partial(_refactor, True),
            ),
        ),
        peer="refactor",
        subject="append",
        shapes={"full": (size,), "quick": (size // 10,)},
        make_pred=_gram_matrix,
        make_target=_factor_buffers,
        describe=lambda s: (
            f"K [{s[0] + 1}, {s[0] + 1}] float64 (squared-exponential, 6-d points); L and L⁻¹ of "
            f"the first {s[0]} points in [{s[0] + 1}, {s[0] + 1}] buffers, extended in place"
        ),
        kernel_op="chol_append",
        speedup_target=100.0 if size == 4000 else None,
    )


# --- chol_append_growing: the growing factor vs chol_append without out= vs refactorising -------
#
# What a user who appends point after point gets: "pred" is the Gram matrix K [n+1, n+1] as in
# chol_append_<n>, "target" the factor L [n, n] of its first n points, as torch.linalg.cholesky
# returns it. Each call appends point n+1 and returns the [n+1, n+1] factor: a CholeskyFactor
# built from L once (its buffers doubled to 2n by the first append, as growth leaves them) is
# truncated back to n and appended to in place; chol_append without out= allocates and copies
# a new [n+1, n+1] factor; chol_append with out= extends a preallocated buffer; the peer
# refactorises. A doubling's O(n²) copy, once per n appends, is not in these timings.


def _growing_factor_append() -> Computation:
    from medtune.kernels import CholeskyFactor

    state: dict[str, object] = {}

    def append(gram: Tensor, factor_n: Tensor) -> Tensor:
        n = factor_n.shape[0]
        if state.get("source") is not factor_n:
            state.update(source=factor_n, factor=CholeskyFactor(factor_n))
        factor = state["factor"]
        factor.truncate(n)
        factor.append(gram[n, :n], gram[n, n])
        return factor.L

    return append


def _one_shot_append(with_out: bool) -> Computation:
    from medtune.kernels import chol_append

    state: dict[str, object] = {}

    def append(gram: Tensor, factor_n: Tensor) -> Tensor:
        n = factor_n.shape[0]
        if not with_out:
            return chol_append(factor_n, gram[n:, :n], gram[n:, n:]).L
        if state.get("source") is not factor_n:
            buffer = factor_n.new_zeros((n + 1, n + 1))
            buffer[:n, :n] = factor_n
            state.update(source=factor_n, buffer=buffer)
        buffer = state["buffer"]
        return chol_append(buffer[:n, :n], gram[n:, :n], gram[n:, n:], out=(buffer, None)).L

    return append


def _leading_factor(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    (size,) = shape
    seeded = torch.Generator().manual_seed(20240)  # the same draw as make_pred's
    return torch.linalg.cholesky(_gram_matrix(shape, seeded)[:size, :size])


def _chol_append_growing_case(size: int) -> Case:
    return Case(
        name=f"chol_append_growing_{size}",
        title=f"appending one point to the Cholesky factor of {size} points, the ways a user can",
        modes=(FORWARD,),
        implementations=(
            Implementation("factor", "medtune CholeskyFactor.append [{backend}]",
                           _growing_factor_append),
            Implementation("no_out", "medtune chol_append without out= [{backend}]",
                           partial(_one_shot_append, False)),
            Implementation("out", "medtune chol_append with a preallocated out= buffer [{backend}]",
                           partial(_one_shot_append, True)),
            Implementation("refactor", "torch.linalg.cholesky, full refactorisation",
                           partial(_refactor, False)),
        ),
        peer="refactor",
        subject="factor",
        shapes={"full": (size,), "quick": (size // 10,)},
        make_pred=_gram_matrix,
        make_target=_leading_factor,
        describe=lambda s: (
            f"K [{s[0] + 1}, {s[0] + 1}] float64 (squared-exponential, 6-d points); L [{s[0]}, "
            f"{s[0]}] of the first {s[0]} points (CholeskyFactor: built from it once, buffers "
            f"{2 * s[0]} wide after its first doubling, truncated to {s[0]} before each append)"
        ),
        kernel_op="chol_append",
    )


# --- warp3d: template composition φ0 ∘ L ∘ G (Bertrand2019, eq. 4.7) vs affine_grid + grid_sample
#
# "pred" is the local displacement L [N, 3, D, H, W] (normalised units, the tensor trained), and
# "target" the template φ0 [N, 1, D, H, W]; G is a fixed affine (small rotation, scaling and
# shift). Both sides resample the template at p + L(p), p = G x, with zeros padding.


def _warp_affine(n: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    angle = torch.tensor(0.1, dtype=torch.float64)
    c, s = torch.cos(angle), torch.sin(angle)
    affine = torch.tensor([[1.05 * c, -s, 0.0, 0.02], [s, 0.95 * c, 0.0, -0.03],
                           [0.0, 0.0, 1.0, 0.01]], dtype=torch.float64)
    return affine.to(device=device, dtype=dtype).expand(n, 3, 4)


def _medtune_warp() -> Computation:
    from medtune.kernels import warp3d

    def warp(displacement: Tensor, template: Tensor) -> Tensor:
        affine = _warp_affine(template.shape[0], template.device, template.dtype)
        return warp3d(template, displacement, affine, compose="affine_first")

    return warp


def _grid_sample_warp() -> Computation:
    import torch.nn.functional as F

    def warp(displacement: Tensor, template: Tensor) -> Tensor:
        affine = _warp_affine(template.shape[0], template.device, template.dtype)
        grid = F.affine_grid(affine, list(template.shape), align_corners=False)
        local = F.grid_sample(displacement, grid, padding_mode="border", align_corners=False)
        grid = grid + local.movedim(1, -1)
        return F.grid_sample(template, grid, padding_mode="zeros", align_corners=False)

    return warp


def _small_displacement(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return 0.05 * torch.randn(shape, generator=generator)


def _template(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """A soft-edged ball, off-centre by a random shift: smooth, so that the gradients of the
    two implementations can be compared (on a noise volume, trilinear interpolation's slope
    jumps at every voxel face and float32 rounding of the sampling point picks either side)."""
    n, _, *spatial = shape
    axes = [torch.linspace(-1.0, 1.0, size) for size in spatial]
    grids = torch.meshgrid(*axes, indexing="ij")  # (z,) y, x
    shift = 0.1 * torch.rand((n, len(spatial)), generator=generator)  # (x, y, z)
    squared = 0
    for axis, grid in enumerate(reversed(grids)):
        squared = squared + (grid - shift[:, axis].reshape(n, *(1,) * len(spatial))) ** 2
    return torch.sigmoid((0.6 - squared.sqrt()) / 0.1)[:, None]


def _warp3d_case(size: int) -> Case:
    return Case(
        name=f"warp3d_{size}",
        title="warp3d: template ∘ L ∘ G (eq. 4.7), gradient wrt the displacement",
        modes=(FORWARD, FORWARD_BACKWARD),
        implementations=(
            Implementation("medtune", "medtune warp3d, no sampling grid [{backend}]", _medtune_warp),
            Implementation(
                "grid_sample", "affine_grid + grid_sample (field, then template)", _grid_sample_warp
            ),
        ),
        peer="grid_sample",
        subject="medtune",
        shapes={"full": (2, 3, size, size, size), "quick": (1, 3, 16, 16, 16)},
        make_pred=_small_displacement,
        make_target=_template,
        describe=lambda s: (
            f"displacement {dims(s)} float32, template {dims((s[0], 1, *s[2:]))} float32, "
            "fixed affine [N, 3, 4]; agreement: the 99.99th percentile of the difference (the "
            "gradient of trilinear interpolation jumps at voxel faces, where float32 rounding "
            "puts a few hundred points on either side)"
        ),
        kernel_op="warp3d",
        speedup_target=2.0,
        agreement_quantile=0.9999,
        malloc_defaults=True,
    )


# --- warp3d: the registration warp x + u(x) vs grid_sample and MONAI's Warp --------------------
#
# "pred" is a dense displacement in voxels [N, 3, D, H, W] (2D: [N, 2, H, W]), channels (d, h, w)
# as MONAI's Warp takes it; "target" the moving image. Every implementation receives the same
# tensor and pays its own conversion (medtune and grid_sample: to normalised units, channels
# (x, y, z)). The base case is VoxelMorph's training step: a smooth field of a few voxels,
# zeros padding, align_corners=True (MONAI's convention), a gradient wrt the field only; the
# variants change one thing each (padding, align_corners, a rough or a large field, a gradient
# wrt the image as well, 2D, label maps in nearest mode), so that every configuration the
# dispatch serves is on record.


@dataclass(frozen=True)
class Registration:
    """One configuration of the registration warp."""

    padding: str = "zeros"
    align_corners: bool = True
    field: str = "smooth"  # "smooth" (a few voxels), "large" (about 12 voxels), "rough" (noise)
    image_gradient: bool = False  # the image needs a gradient too (a learned template)
    nearest: bool = False  # label maps (int64) resampled in nearest mode, forward only

    def describe(self) -> str:
        field = {"smooth": "smooth, a few voxels", "large": "smooth, about 12 voxels",
                 "rough": "i.i.d. noise of 0.5 voxel"}[self.field]
        gradient = "field and image" if self.image_gradient else "field only"
        mode = "nearest, label map" if self.nearest else f"gradient wrt the {gradient}"
        return (f"{field}; {self.padding} padding, align_corners={self.align_corners}; {mode}")


def _normalised(ddf: Tensor, align_corners: bool = True) -> Tensor:
    """A voxel displacement (d, h, w) as normalised (x, y, z) units."""
    spatial = ddf.shape[2:]
    scale = torch.tensor([2.0 / max(size - 1 if align_corners else size, 1) for size in spatial],
                         dtype=ddf.dtype, device=ddf.device)
    return (ddf * scale.reshape(1, -1, *(1,) * len(spatial))).flip(1)


def _moving(image: Tensor, setup: Registration) -> Tensor:
    """The image as the warp sees it: a fresh leaf that needs a gradient when the case asks."""
    if setup.nearest:
        return image
    return image.detach().requires_grad_(setup.image_gradient)


def _medtune_register(setup: Registration = Registration()) -> Computation:
    from medtune.kernels import warp3d

    def warp(ddf: Tensor, image: Tensor) -> Tensor:
        return warp3d(_moving(image, setup), _normalised(ddf, setup.align_corners),
                      mode="nearest" if setup.nearest else "bilinear",
                      padding_mode=setup.padding, align_corners=setup.align_corners)

    return warp


def _grid_sample_register(setup: Registration = Registration()) -> Computation:
    import torch.nn.functional as F

    def warp(ddf: Tensor, image: Tensor) -> Tensor:
        n, dims = image.shape[0], image.dim() - 2
        identity = torch.eye(dims, dims + 1, dtype=ddf.dtype, device=ddf.device).expand(n, -1, -1)
        grid = F.affine_grid(identity, list(image.shape), align_corners=setup.align_corners)
        grid = grid + _normalised(ddf, setup.align_corners).movedim(1, -1)
        moving = _moving(image, setup)
        out = F.grid_sample(moving.to(ddf.dtype), grid,
                            mode="nearest" if setup.nearest else "bilinear",
                            padding_mode=setup.padding, align_corners=setup.align_corners)
        return out.round().to(image.dtype) if setup.nearest else out

    return warp


def _monai_register() -> Computation:
    from monai.networks.blocks import Warp

    block = Warp(mode="bilinear", padding_mode="zeros")
    return lambda ddf, image: block(image, ddf)


def _voxel_displacement(shape: tuple[int, ...], generator: torch.Generator,
                        field: str = "smooth") -> Tensor:
    """A displacement in voxels: a low-resolution field upsampled (smooth: a few voxels, large:
    about 12), or i.i.d. noise of 0.5 voxel (rough)."""
    n, dims, *spatial = shape
    if field == "rough":
        return 0.5 * torch.randn(shape, generator=generator)
    coarse = (3.0 if field == "smooth" else 12.0) * torch.randn((n, dims, *(5,) * dims),
                                                                generator=generator)
    return torch.nn.functional.interpolate(coarse, size=spatial, mode="trilinear" if dims == 3
                                           else "bilinear", align_corners=True).contiguous()


def _label_image(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    """Nested label regions 0..3 of the smooth image below (int64)."""
    return (_template(shape, generator) * 4).clamp(max=3.5).long()


def _register_case(shape: tuple[int, ...], variant: str = "",
                   setup: Registration = Registration(), monai: bool = False,
                   speedup_target: float | None = 1.0) -> Case:
    n, rank, *spatial = shape
    name = "_".join(filter(None, ["warp3d_register", variant, f"{n}x{spatial[-1]}"]))
    implementations = [
        Implementation("medtune", "medtune warp3d, no sampling grid [{backend}]",
                       partial(_medtune_register, setup)),
        Implementation("grid_sample", "affine_grid + grid_sample",
                       partial(_grid_sample_register, setup)),
    ]
    if monai:
        implementations.append(
            Implementation("monai", "MONAI Warp (grid_sample inside)", _monai_register))
    image = "label map" if setup.nearest else "image"
    image_dtype = "int64" if setup.nearest else "float32"
    quick = (1, rank, *(16,) * rank)
    return Case(
        name=name,
        title=f"warp3d: registration warp x + u(x) ({setup.describe()})",
        modes=(FORWARD,) if setup.nearest else ((FORWARD, FORWARD_BACKWARD) if monai
                                                 else (FORWARD_BACKWARD,)),
        implementations=tuple(implementations),
        peer="grid_sample",
        subject="medtune",
        shapes={"full": shape, "quick": quick},
        make_pred=partial(_voxel_displacement, field=setup.field),
        make_target=_label_image if setup.nearest else _template,
        describe=lambda s: (
            f"displacement {dims(s)} float32 in voxels, {image} "
            f"{dims((s[0], 1, *s[2:]))} {image_dtype}; agreement: the 99.99th percentile of "
            "the difference"
        ),
        kernel_op="warp3d",
        speedup_target=speedup_target,
        agreement_quantile=0.9999,
        malloc_defaults=True,
    )


def _register_cases() -> list[Case]:
    base = (2, 3, 80, 80, 80)
    return [
        # VoxelMorph's training step: the 1.5x goal
        _register_case(base, setup=Registration(), monai=True, speedup_target=1.5),
        _register_case((1, 3, 160, 160, 160), setup=Registration(), monai=True),
        _register_case(base, "border_rough", Registration(padding="border", field="rough")),
        _register_case(base, "border_rough_image",
                       Registration(padding="border", field="rough", image_gradient=True)),
        _register_case(base, "image", Registration(image_gradient=True)),
        _register_case(base, "no_align", Registration(align_corners=False)),
        _register_case(base, "large", Registration(field="large")),
        _register_case((8, 2, 512, 512), "2d", Registration()),
        _register_case((8, 2, 512, 512), "2d_image", Registration(image_gradient=True)),
        _register_case((1, 2, 1024, 1024), "2d_image", Registration(image_gradient=True)),
        _register_case(base, "labels", Registration(nearest=True)),
    ]


# --- nas_ranking: architectures of an elastic super-net evaluated per second -----------------
#
# "pred" holds the images [N, 1, H, W]: the first NAS_CALIBRATION_SHARE of them recalibrate the
# batch-norm statistics of each architecture (one batch), the rest are evaluated; "target" holds
# the N class labels. Every implementation ranks the same NAS_ARCHITECTURES uniformly sampled
# architectures of the same (seeded, untrained) OFA-like super-net and returns their accuracies.
# medtune ranks them all in one call (medtune.plugins.nas.ranking: the architectures walked as a
# trie, so shared prefixes, expansions and depthwise layers run once, every layer through
# supernet_conv on the shared weights, statistics recalibrated without touching the model); the
# "one at a time" row runs medtune's super-net per architecture (recalibrate + use_statistics);
# the usual way materialises each sub-network (export: fresh nn.Conv2d/nn.BatchNorm2d layers with
# copied weights), deep-copies it, resets its running statistics and recalibrates them by a
# forward in training mode (cumulative average, one batch: the exact statistics), then evaluates.

NAS_ARCHITECTURES = 64
NAS_QUICK_ARCHITECTURES = 8  # ranked on the quick shape (a smoke test), told apart by its image side
NAS_IMAGE_SIDE = 32  # the full case's image side
NAS_CALIBRATION_SHARE = 3  # one image in three recalibrates, the others are evaluated
NAS_CLASSES = 4


def _nas_setup(pred: Tensor) -> tuple:
    """The seeded super-net and architectures, built once per implementation."""
    import numpy as np

    from medtune.plugins.nas.elastic import ElasticSpace, ElasticSuperNet

    torch.manual_seed(0)
    space = ElasticSpace(3)
    net = ElasticSuperNet(space, in_channels=pred.shape[1], num_classes=NAS_CLASSES).to(
        pred.device).eval()
    rng = np.random.default_rng(0)
    count = NAS_ARCHITECTURES if pred.shape[-1] >= NAS_IMAGE_SIDE else NAS_QUICK_ARCHITECTURES
    return net, [space.sample(rng) for _ in range(count)]


def _nas_split(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    calibration = pred.shape[0] // NAS_CALIBRATION_SHARE
    return pred[:calibration], pred[calibration:], target[calibration:]


def _medtune_nas_ranking() -> Computation:
    from medtune.plugins.nas.ranking import rank_architectures

    state: dict = {}

    def rank(pred: Tensor, target: Tensor) -> Tensor:
        if "net" not in state:
            state["net"], state["archs"] = _nas_setup(pred)
        calibration, images, labels = _nas_split(pred, target)
        return rank_architectures(state["net"], state["archs"], calibration, images, labels)

    return rank


def _per_architecture(accuracy) -> Computation:
    """A ranking that scores the architectures one by one with ``accuracy(net, arch,
    calibration, images, labels)``."""
    state: dict = {}

    def rank(pred: Tensor, target: Tensor) -> Tensor:
        if "net" not in state:
            state["net"], state["archs"] = _nas_setup(pred)
        calibration, images, labels = _nas_split(pred, target)
        with torch.no_grad():
            return torch.stack([accuracy(state["net"], arch, calibration, images, labels)
                                for arch in state["archs"]])

    return rank


def _one_at_a_time_nas_ranking() -> Computation:
    from medtune.plugins.nas.recalibration import recalibrate, use_statistics

    def accuracy(net, arch, calibration: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        stats = recalibrate(net, [calibration], forward=lambda m, x: m(x, arch))
        with use_statistics(net, stats):
            return (net(images, arch).argmax(1) == labels).float().mean()

    return _per_architecture(accuracy)


def _deepcopy_nas_ranking() -> Computation:
    import copy

    def accuracy(net, arch, calibration: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        sub = copy.deepcopy(net.export(arch))
        for module in sub.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the batches
        sub.train()(calibration)
        return (sub.eval()(images).argmax(1) == labels).float().mean()

    return _per_architecture(accuracy)


def _class_labels(shape: tuple[int, ...], generator: torch.Generator) -> Tensor:
    return torch.randint(0, NAS_CLASSES, (shape[0],), generator=generator)


def _nas_ranking_case(shape: tuple[int, ...]) -> Case:
    n, c, h, w = shape
    return Case(
        name="nas_ranking",
        title=f"nas_ranking: {NAS_ARCHITECTURES} architectures of an OFA-like super-net, BN "
              f"recalibrated and evaluated ({NAS_QUICK_ARCHITECTURES} in a quick run)",
        modes=(FORWARD,),
        implementations=(
            Implementation("medtune", "medtune rank_architectures: shared-prefix trie, "
                                      "supernet_conv, BN recalibrated in place [{backend}]",
                           _medtune_nas_ranking),
            Implementation("one_at_a_time", "medtune super-net, one architecture at a time "
                                            "(recalibrate + use_statistics) [{backend}]",
                           _one_at_a_time_nas_ranking),
            Implementation("deepcopy", "materialised sub-network, deep copy recalibrated in "
                                       "train mode (PyTorch)", _deepcopy_nas_ranking),
        ),
        peer="deepcopy",
        subject="medtune",
        shapes={"full": shape, "quick": (12, c, 16, 16)},
        make_pred=_logits,
        make_target=_class_labels,
        describe=lambda s: (f"{s[0] // NAS_CALIBRATION_SHARE} calibration + "
                            f"{s[0] - s[0] // NAS_CALIBRATION_SHARE} evaluation images "
                            f"{dims(s[1:])} float32, {NAS_CLASSES} classes"),
        kernel_op="supernet_conv",
        speedup_target=10.0,
    )


MEDTUNE_LOSS_LABEL = "medtune glf_loss, fused [{backend}]"
REFERENCE_LOSS_LABEL = "glf_loss_reference (plain PyTorch composition)"

CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case(
            name="glf_stats",
            title="glf_stats: true/false positive and false negative sums",
            modes=(FORWARD, FORWARD_BACKWARD),
            implementations=(
                Implementation("medtune", "medtune glf_stats [{backend}]", _medtune_stats),
                Implementation("reference", "glf_stats_reference (PyTorch)", _reference_stats),
            ),
            peer="reference",
            subject="medtune",
            shapes={"full": (8, 1, 512, 512), "quick": (2, 1, 64, 64)},
            make_pred=_probabilities,
            make_target=_binary_mask,
            describe=lambda s: f"pred {dims(s)} float32 probabilities, target {dims(s)} binary float32 mask",
            objective=_stats_objective,
        ),
        Case(
            name="glf_loss_sigmoid",
            title="glf_loss with sigmoid: Tversky(alpha=0.3, beta=0.7), binary",
            modes=(FORWARD_BACKWARD,),
            implementations=(
                Implementation("medtune", MEDTUNE_LOSS_LABEL, partial(_medtune_loss, "sigmoid")),
                Implementation(
                    "monai",
                    "MONAI TverskyLoss(sigmoid=True)",
                    partial(_monai_tversky, sigmoid=True),
                ),
                Implementation("reference", REFERENCE_LOSS_LABEL, partial(_reference_loss, "sigmoid")),
            ),
            peer="monai",
            subject="medtune",
            shapes={"full": (8, 1, 512, 512), "quick": (2, 1, 64, 64)},
            make_pred=_logits,
            make_target=_binary_mask,
            describe=lambda s: f"logits {dims(s)} float32, target {dims(s)} binary float32 mask",
            kernel_op="glf_loss",
            speedup_target=10.0,
            memory_target=1.0,
            bandwidth_target=0.7,
        ),
        Case(
            name="glf_loss_softmax",
            title="glf_loss with softmax and an integer label map: Tversky(alpha=0.3, beta=0.7)",
            modes=(FORWARD_BACKWARD,),
            implementations=(
                Implementation("medtune", MEDTUNE_LOSS_LABEL, partial(_medtune_loss, "softmax")),
                Implementation(
                    "monai",
                    "MONAI TverskyLoss(softmax=True, to_onehot_y=True)",
                    partial(_monai_tversky, softmax=True, to_onehot_y=True),
                ),
                Implementation("reference", REFERENCE_LOSS_LABEL, partial(_reference_loss, "softmax")),
            ),
            peer="monai",
            subject="medtune",
            shapes={"full": (2, 4, 96, 96, 96), "quick": (1, 4, 16, 16, 16)},
            make_pred=_logits,
            make_target=_label_map,
            describe=lambda s: (
                f"logits {dims(s)} float32, labels {dims((s[0], 1, *s[2:]))} int64 "
                f"(classes 0..{s[1] - 1}, passed as a label map)"
            ),
            kernel_op="glf_loss",
            bandwidth_target=0.7,
        ),
    )
}
CASES.update((case.name, case) for case in map(_chol_append_case, (500, 1000, 2000, 4000)))
CASES.update((case.name, case) for case in map(_chol_append_growing_case, (4000,)))
CASES.update((case.name, case) for case in map(_warp3d_case, (80,)))
CASES.update((case.name, case) for case in _register_cases())
CASES.update((case.name, case) for case in map(_nas_ranking_case, ((96, 1, 32, 32),)))
# a group name runs every case whose name starts with the group's name and "_"
GROUPS = {
    "chol_append": [name for name in CASES if name.startswith("chol_append_")],
    "warp3d": [name for name in CASES if name.startswith("warp3d_")],
}
