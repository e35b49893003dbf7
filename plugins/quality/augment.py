"""The training augmentation of the DQE estimator (seed 000, sec. 2), built from MONAI transforms.

Spatial transforms act on the image and label channels together (flips, a small rotation and
scaling; labels are resampled with the image, so soft label borders appear as they would in a
resampled segmentation); intensity transforms and MR artifacts act on the image channels only:
intensity scaling and shift, contrast (gamma), Gaussian and Rician noise, a bias field, Gibbs
ringing and k-space spikes.

Of the seed's pipeline, elastic deformation, simulated low resolution, motion and ghosting are
not included (the last two are TorchIO artifacts MONAI has no equivalent of; elastic deformation
and low resolution are left out to keep CPU epochs short).
"""

from __future__ import annotations

import math

import torch
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAffine,
    RandBiasField,
    RandFlip,
    RandGaussianNoise,
    RandGibbsNoise,
    RandKSpaceSpikeNoise,
    RandRicianNoise,
    RandScaleIntensity,
    RandShiftIntensity,
)


class SliceAugmentation:
    """Random augmentation of one ``[channels, H, W]`` slice whose first ``image_channels``
    channels are image contrasts and the rest label channels; seeded by ``seed``."""

    def __init__(self, image_channels: int, seed: int = 0, probability: float = 0.3) -> None:
        self.image_channels = int(image_channels)
        p = float(probability)
        self.spatial = Compose([
            RandFlip(prob=0.5, spatial_axis=0),
            RandFlip(prob=0.5, spatial_axis=1),
            RandAffine(prob=p, rotate_range=math.radians(10), scale_range=0.1, padding_mode="zeros"),
        ])
        self.intensity = Compose([
            RandScaleIntensity(factors=0.1, prob=p),
            RandShiftIntensity(offsets=0.1, prob=p),
            RandAdjustContrast(prob=p, gamma=(0.8, 1.25)),
            RandBiasField(prob=p, coeff_range=(0.0, 0.2)),
            RandGaussianNoise(prob=p, std=0.03),
            RandRicianNoise(prob=p / 2, std=0.03),
            RandGibbsNoise(prob=p / 2, alpha=(0.0, 0.5)),
            RandKSpaceSpikeNoise(prob=p / 3, intensity_range=(9.0, 11.0)),
        ])
        self.spatial.set_random_state(seed)
        self.intensity.set_random_state(seed + 1)

    def __call__(self, sample: torch.Tensor) -> torch.Tensor:
        """The augmented copy of ``sample``."""
        moved = torch.as_tensor(self.spatial(sample))
        images = torch.as_tensor(self.intensity(moved[: self.image_channels]))
        return torch.cat([images, moved[self.image_channels:]]).float()
