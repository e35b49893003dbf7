"""Input checking shared by the metrics: array conversion, binary masks, label maps and spacing.

Every metric accepts numpy arrays or torch tensors (any device; they are copied to host memory)
and raises :class:`MetricError` when the inputs cannot be scored, saying what was wrong and
what to do about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import math

import numpy as np

from medtune.errors import MedtuneError

#: Spacing of a grid: one number (isotropic) or one number per spatial axis, in millimetres.
Spacing = float | Sequence[float] | None


_TORCH_ONLY_DTYPES = {"torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e5m2"}


class MetricError(MedtuneError, ValueError):
    """A metric received inputs it cannot score (shape, values, emptiness or arguments).

    A ``ValueError`` too, so code written for MONAI's and scipy's metrics keeps catching it.
    """


def as_array(value: Any, what: str) -> np.ndarray:
    """Return ``value`` (numpy array, torch tensor or sequence) as a numpy array on the host."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        tensor = value.detach().cpu()
        # numpy has no bfloat16 (or other torch-only dtypes): widen those to float32 first
        if str(tensor.dtype) in _TORCH_ONLY_DTYPES:
            tensor = tensor.float()
        value = tensor.numpy()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise MetricError(f"{what} could not be read as an array ({error}); pass a numpy array "
                          "or a torch tensor") from error
    if array.dtype == object:
        raise MetricError(f"{what} is a ragged or non-numeric sequence; pass a numpy array or a "
                          "torch tensor of numbers")
    return array


def same_shape(prediction: np.ndarray, target: np.ndarray) -> None:
    """Raise :class:`MetricError` unless prediction and target have one shape and are not empty."""
    if prediction.shape != target.shape:
        raise MetricError(f"prediction has shape {tuple(prediction.shape)} but target has shape "
                          f"{tuple(target.shape)}; pass arrays of one case on the same grid")
    if prediction.size == 0:
        raise MetricError(f"prediction and target are empty arrays (shape {prediction.shape}); "
                          "a metric needs at least one voxel")


def binary_mask(value: np.ndarray, what: str, label: int | None = None) -> np.ndarray:
    """Return ``value`` as a boolean mask.

    Without ``label`` the values must be binary (bool, or only 0 and 1); with ``label`` the
    input is a label map and the mask is ``value == label``.
    """
    if label is not None:
        if not float(label).is_integer():
            raise MetricError(f"label must be an integer class index, got {label!r}")
        return value == label
    if value.dtype == bool:
        return value
    if not np.issubdtype(value.dtype, np.number):
        raise MetricError(f"{what} has dtype {value.dtype}; pass a numeric or boolean mask")
    values = np.unique(value)
    if not np.isin(values, (0, 1)).all():
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
        raise MetricError(f"{what} is not binary (values {shown}); threshold probabilities "
                          "first, or pass label=<class> to score one class of a label map")
    return value.astype(bool)


def masks(prediction: Any, target: Any, label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Convert, check and binarise a prediction and a target of one case."""
    prediction_array = as_array(prediction, "prediction")
    target_array = as_array(target, "target")
    same_shape(prediction_array, target_array)
    return (binary_mask(prediction_array, "prediction", label),
            binary_mask(target_array, "target", label))


def spacing_tuple(spacing: Spacing, ndim: int) -> tuple[float, ...]:
    """Return the grid spacing as one positive finite float per spatial axis (default 1 mm)."""
    if spacing is None:
        return (1.0,) * ndim
    if np.isscalar(spacing):
        values = (float(spacing),) * ndim  # type: ignore[arg-type]
    else:
        values = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
        if len(values) != ndim:
            raise MetricError(f"spacing has {len(values)} values but the masks have {ndim} "
                              "spatial axes; pass one spacing per axis (or one number)")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise MetricError(f"spacing must be positive and finite, got {values}")
    return values


def spatial_ndim(mask: np.ndarray) -> int:
    """Check that a mask is 2D or 3D (one case, no batch or channel axis) and return its ndim."""
    if mask.ndim not in (2, 3):
        raise MetricError(f"surface metrics need one 2D or 3D case, got an array of shape "
                          f"{mask.shape}; drop batch and channel axes (score cases one by one)")
    return mask.ndim


def check_tolerance(tolerance: Any) -> float:
    """Return a boundary tolerance in millimetres, or raise unless it is finite and >= 0."""
    try:
        value = float(tolerance)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise MetricError(f"tolerance must be a finite distance >= 0 in millimetres, got "
                          f"{tolerance!r}")
    return value
