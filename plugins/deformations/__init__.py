"""Deformation plugins: template deformation (seed 004, ch. 4) and its transform builders.

:mod:`medtune.plugins.deformations.transforms` builds the global similarity ``G`` of eq. 4.8
(and its analytic inverse, and the 2D analogue) as ``affine_grid``-ready matrices, and smooths
and upsamples the local displacement field of eq. 4.5 and 4.9.
"""

from medtune.plugins.deformations.transforms import (
    TransformError,
    compose_affine,
    gaussian_kernel1d,
    rotation_matrix,
    similarity_inverse,
    similarity_inverse_2d,
    similarity_matrix,
    similarity_matrix_2d,
    smooth_displacement,
    upsample_displacement,
)

__all__ = [
    "TransformError",
    "compose_affine",
    "gaussian_kernel1d",
    "rotation_matrix",
    "similarity_inverse",
    "similarity_inverse_2d",
    "similarity_matrix",
    "similarity_matrix_2d",
    "smooth_displacement",
    "upsample_displacement",
]
