"""Deformation plugins: template deformation (Bertrand2019, ch. 4) and its transform builders.

- ``template`` (:mod:`~medtune.plugins.deformations.template`): a network predicts a global
  similarity ``G`` and a local field ``L`` that deform a fixed binary template, segmentation =
  template ∘ L ∘ G (eq. 4.7-4.11), always one connected component.
- ``implicit`` (:mod:`~medtune.plugins.deformations.implicit`): classical implicit template
  deformation (eq. 4.3-4.6) by gradient descent on ``G`` and a smooth field, from image
  intensities alone or as a refinement of ``template``.
- :mod:`~medtune.plugins.deformations.transforms` builds ``G`` of eq. 4.8 (and its analytic
  inverse, and the 2D analogue) as ``affine_grid``-ready matrices, and smooths and upsamples
  the local displacement field of eq. 4.5 and 4.9.
"""

from medtune.plugins.deformations.implicit import ImplicitDeformation, ImplicitResult
from medtune.plugins.deformations.template import (
    TemplateDeformation,
    TemplateError,
    TemplateOutput,
    check_template,
    choose_template,
    count_components,
    safe_max_displacement,
)
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

#: ``{name: factory}`` as registered under the ``deformation`` kind by the built-in plugin.
DEFORMATIONS = {"template": TemplateDeformation, "implicit": ImplicitDeformation}

__all__ = [
    "DEFORMATIONS",
    "ImplicitDeformation",
    "ImplicitResult",
    "TemplateDeformation",
    "TemplateError",
    "TemplateOutput",
    "TransformError",
    "check_template",
    "choose_template",
    "compose_affine",
    "count_components",
    "gaussian_kernel1d",
    "rotation_matrix",
    "safe_max_displacement",
    "similarity_inverse",
    "similarity_inverse_2d",
    "similarity_matrix",
    "similarity_matrix_2d",
    "smooth_displacement",
    "upsample_displacement",
]
