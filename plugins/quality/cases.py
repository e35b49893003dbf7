"""The unit a quality estimator rates: one exam's image channels and one segmentation of it.

BraTS label values are used throughout: 1 necrosis / non-enhancing tumour core, 2 oedema,
4 enhancing tumour (0 background). The three BraTS regions are the enhancing tumour (label 4),
the tumour core (labels 1 and 4) and the whole tumour (labels 1, 2 and 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medtune.errors import MedtuneError

#: BraTS label values: necrosis / non-enhancing core, oedema, enhancing tumour.
NECROSIS, OEDEMA, ENHANCING = 1, 2, 4
TUMOUR_LABELS = (NECROSIS, OEDEMA, ENHANCING)
#: The BraTS evaluation regions, as the label values each holds.
REGIONS = {
    "enhancing_tumour": (ENHANCING,),
    "tumour_core": (NECROSIS, ENHANCING),
    "whole_tumour": (NECROSIS, OEDEMA, ENHANCING),
}


class QualityError(MedtuneError, ValueError):
    """Bad input to a quality estimator, its data or its checkpoints."""


@dataclass
class Case:
    """One exam and one segmentation of it.

    ``image`` is ``[channels, D, H, W]`` (e.g. T1, T1c, T2, FLAIR), ``segmentation`` a
    ``[D, H, W]`` label map with BraTS values (0, 1, 2, 4), ``name`` says which exam and which
    segmentation it is.
    """

    image: np.ndarray
    segmentation: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image, dtype=np.float32)
        self.segmentation = np.asarray(self.segmentation)
        if self.image.ndim != 4:
            raise QualityError(f"case {self.name!r}: image must be [channels, D, H, W], got shape "
                               f"{self.image.shape}; stack the contrasts on the first axis")
        if self.segmentation.shape != self.image.shape[1:]:
            raise QualityError(f"case {self.name!r}: segmentation shape {self.segmentation.shape} "
                               f"differs from the image's spatial shape {self.image.shape[1:]}")
        unknown = sorted(set(np.unique(self.segmentation).tolist()) - {0, *TUMOUR_LABELS})
        if unknown:
            raise QualityError(f"case {self.name!r}: segmentation holds label(s) {unknown}; "
                               "expected BraTS values 0, 1 (necrosis), 2 (oedema), 4 (enhancing)")
        self.segmentation = self.segmentation.astype(np.int64)


def region_mask(segmentation: np.ndarray, region: str) -> np.ndarray:
    """The boolean mask of one BraTS ``region`` (a key of :data:`REGIONS`) in a label map."""
    if region not in REGIONS:
        raise QualityError(f"unknown region {region!r}; expected one of {', '.join(REGIONS)}")
    return np.isin(segmentation, REGIONS[region])
