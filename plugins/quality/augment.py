"""The training augmentation of the DQE estimator (Kofler2022, sec. 2), built from MONAI transforms.

Spatial transforms act on the image and label channels together (flips, a small rotation and
scaling, an elastic deformation; labels are resampled with the image, so soft label borders
appear as they would in a resampled segmentation); intensity transforms and MR artefacts act on
the image channels only: intensity scaling and shift, contrast (gamma), Gaussian and Rician
noise, a bias field, simulated low resolution (down- and up-sampling), Gibbs ringing, k-space
spikes, ghosting and motion.

MONAI has no ghosting or motion artefact (TorchIO's ``RandomGhosting`` and ``RandomMotion``);
:class:`RandGhosting` and :class:`RandMotion` below simulate them the same way, in k-space:
ghosting scales every n-th phase-encoding line, motion fills successive blocks of phase-encoding
lines from copies of the slice moved by small rotations and translations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.data import get_track_meta, set_track_meta
from monai.transforms import (
    Compose,
    Rand2DElastic,
    RandAdjustContrast,
    RandAffine,
    RandBiasField,
    RandFlip,
    RandGaussianNoise,
    RandGibbsNoise,
    RandKSpaceSpikeNoise,
    RandomizableTransform,
    RandRicianNoise,
    RandScaleIntensity,
    RandShiftIntensity,
    RandSimulateLowResolution,
)

from medtune.plugins.quality.cases import QualityError


def _spectrum(image: torch.Tensor) -> torch.Tensor:
    """The centred 2D Fourier transform of ``[C, H, W]``."""
    return torch.fft.fftshift(torch.fft.fft2(image.float()), dim=(-2, -1))


def _image(spectrum: torch.Tensor) -> torch.Tensor:
    """The magnitude image of a centred 2D spectrum (the inverse of :func:`_spectrum`)."""
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).abs()


def _range(values: Sequence[float], what: str) -> tuple[float, float]:
    low, high = (float(v) for v in values)
    if not 0 <= low <= high:
        raise QualityError(f"{what} must be a range (low, high) with 0 <= low <= high, got {tuple(values)}")
    return low, high


class _KSpaceArtefact(RandomizableTransform):
    """An MR artefact made in k-space along a phase-encoding axis (``self.axis``, drawn by
    ``randomize`` with the artefact's other parameters)."""

    axis = 0

    def __call__(self, image: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        """The corrupted copy of ``image`` ``[C, H, W]`` (``image`` itself when not drawn)."""
        if randomize:
            self.randomize()
        image = torch.as_tensor(image)
        if not self._do_transform:
            return image
        spectrum = _spectrum(image)
        return _image(self._corrupt(image, spectrum, spectrum.shape[-2 + self.axis])).to(image.dtype)

    def _corrupt(self, image: torch.Tensor, spectrum: torch.Tensor, size: int) -> torch.Tensor:
        """The corrupted ``spectrum`` of ``image`` (``size`` lines along ``self.axis``)."""
        raise NotImplementedError


class RandGhosting(_KSpaceArtefact):
    """MR ghosting of a ``[C, H, W]`` image (as TorchIO's ``RandomGhosting``): with probability
    ``prob``, every n-th line of k-space along a random phase-encoding axis (n drawn from
    ``num_ghosts``) is scaled by ``1 - s`` (s drawn from ``intensity``), except the central
    ``restore`` fraction of lines; this adds n faint shifted copies of the slice."""

    def __init__(self, prob: float = 0.1, num_ghosts: tuple[int, int] = (2, 6),
                 intensity: tuple[float, float] = (0.3, 0.8), restore: float = 0.05) -> None:
        RandomizableTransform.__init__(self, prob)
        low, high = (int(v) for v in num_ghosts)
        if not 2 <= low <= high:
            raise QualityError(f"RandGhosting: num_ghosts must be a range (low, high) with 2 <= low <= high, "
                               f"got {tuple(num_ghosts)}")
        self.num_ghosts = (low, high)
        self.intensity = _range(intensity, "RandGhosting: intensity")
        if not 0 <= restore < 1:
            raise QualityError(f"RandGhosting: restore must lie in [0, 1), got {restore}")
        self.restore = float(restore)
        self.ghosts, self.strength, self.axis = 2, 0.0, 0

    def randomize(self, data: object = None) -> None:
        """Draw whether to act, the number of ghosts, their strength and the axis."""
        super().randomize(None)
        if self._do_transform:
            self.ghosts = int(self.R.randint(self.num_ghosts[0], self.num_ghosts[1] + 1))
            self.strength = float(self.R.uniform(*self.intensity))
            self.axis = int(self.R.randint(2))

    def _corrupt(self, image: torch.Tensor, spectrum: torch.Tensor, size: int) -> torch.Tensor:
        factor = torch.ones(size)
        factor[:: self.ghosts] = 1 - self.strength
        keep = int(round(self.restore * size / 2))
        factor[size // 2 - keep: size // 2 + keep + 1] = 1
        shape = (-1, 1) if self.axis == 0 else (1, -1)
        return spectrum * factor.reshape(shape)


class RandMotion(_KSpaceArtefact):
    """MR motion of a ``[C, H, W]`` image (as TorchIO's ``RandomMotion``): with probability
    ``prob``, the patient moves ``transforms`` times during the acquisition; each position is a
    rotation up to ``degrees`` and a translation up to ``translation`` pixels, and successive
    blocks of phase-encoding lines (along a random axis) come from the spectrum of the slice in
    successive positions."""

    def __init__(self, prob: float = 0.1, degrees: float = 5.0, translation: float = 2.0,
                 transforms: tuple[int, int] = (1, 2)) -> None:
        RandomizableTransform.__init__(self, prob)
        if degrees < 0 or translation < 0:
            raise QualityError(f"RandMotion: degrees and translation must be >= 0, got {degrees} and {translation}")
        low, high = (int(v) for v in transforms)
        if not 1 <= low <= high:
            raise QualityError(f"RandMotion: transforms must be a range (low, high) with 1 <= low <= high, "
                               f"got {tuple(transforms)}")
        self.degrees, self.translation, self.transforms = float(degrees), float(translation), (low, high)
        self.moves: list[tuple[float, float, float]] = []
        self.cuts: list[float] = []
        self.axis = 0

    def randomize(self, data: object = None) -> None:
        """Draw whether to act, the positions, when the patient moves and the axis."""
        super().randomize(None)
        if self._do_transform:
            count = int(self.R.randint(self.transforms[0], self.transforms[1] + 1))
            self.moves = [(float(self.R.uniform(-self.degrees, self.degrees)),
                           float(self.R.uniform(-self.translation, self.translation)),
                           float(self.R.uniform(-self.translation, self.translation))) for _ in range(count)]
            self.cuts = sorted(float(c) for c in self.R.uniform(0.1, 0.9, count))
            self.axis = int(self.R.randint(2))

    @staticmethod
    def _moved(image: torch.Tensor, degrees: float, shift_rows: float, shift_columns: float) -> torch.Tensor:
        height, width = image.shape[-2:]
        angle = math.radians(degrees)
        theta = torch.tensor([[math.cos(angle), -math.sin(angle), 2 * shift_columns / width],
                              [math.sin(angle), math.cos(angle), 2 * shift_rows / height]], dtype=torch.float32)
        grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
        return F.grid_sample(image.float()[None], grid, padding_mode="border", align_corners=False)[0]

    def _corrupt(self, image: torch.Tensor, spectrum: torch.Tensor, size: int) -> torch.Tensor:
        for move, cut in zip(self.moves, self.cuts):
            start = int(round(cut * size))
            lines = [slice(None)] * spectrum.ndim
            lines[-2 + self.axis] = slice(start, None)
            spectrum[tuple(lines)] = _spectrum(self._moved(image, *move))[tuple(lines)]
        return spectrum


class SliceAugmentation:
    """Random augmentation of one ``[channels, H, W]`` slice whose first ``image_channels``
    channels are image contrasts and the rest label channels; seeded by ``seed``.

    ``probability`` is the chance of each spatial and intensity transform; the MR artefacts
    (Rician noise, Gibbs ringing, k-space spikes, ghosting, motion) are drawn a third to half as
    often.
    """

    def __init__(self, image_channels: int, seed: int = 0, probability: float = 0.3) -> None:
        if image_channels < 1:
            raise QualityError(f"SliceAugmentation: image_channels must be >= 1, got {image_channels}")
        if not 0 <= probability <= 1:
            raise QualityError(f"SliceAugmentation: probability must lie in [0, 1], got {probability}")
        self.image_channels = int(image_channels)
        p = float(probability)
        self.spatial = Compose([
            RandFlip(prob=0.5, spatial_axis=0),
            RandFlip(prob=0.5, spatial_axis=1),
            RandAffine(prob=p, rotate_range=math.radians(10), scale_range=0.1, padding_mode="zeros"),
            Rand2DElastic(spacing=8, magnitude_range=(0.2, 1.0), prob=p / 2, padding_mode="zeros"),
        ])
        self.intensity = Compose([
            RandScaleIntensity(factors=0.1, prob=p),
            RandShiftIntensity(offsets=0.1, prob=p),
            RandAdjustContrast(prob=p, gamma=(0.8, 1.25)),
            RandBiasField(prob=p, coeff_range=(0.0, 0.2)),
            RandSimulateLowResolution(prob=p / 2, zoom_range=(0.5, 1.0), upsample_mode="bilinear"),
            RandGaussianNoise(prob=p, std=0.03),
            RandRicianNoise(prob=p / 2, std=0.03),
            RandGibbsNoise(prob=p / 2, alpha=(0.0, 0.5)),
            RandKSpaceSpikeNoise(prob=p / 3, intensity_range=(9.0, 11.0)),
            RandGhosting(prob=p / 3),
            RandMotion(prob=p / 3),
        ])
        self.spatial.set_random_state(seed)
        self.intensity.set_random_state(seed + 1)

    def __call__(self, sample: torch.Tensor) -> torch.Tensor:
        """The augmented copy of ``sample``."""
        tracking = get_track_meta()
        set_track_meta(False)  # plain tensors: MONAI's metadata bookkeeping would double the cost
        try:
            moved = torch.as_tensor(self.spatial(sample))
            images = torch.as_tensor(self.intensity(moved[: self.image_channels]))
        finally:
            set_track_meta(tracking)
        return torch.cat([images, moved[self.image_channels:]]).float()

    def augment_batch(self, batch: torch.Tensor) -> torch.Tensor:
        """Each sample of ``batch`` ``[B, channels, H, W]`` augmented independently, with one
        intra-op thread: the transforms are many tiny ops, which a second thread slows down
        more than tenfold on a busy CPU."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return torch.stack([self(sample) for sample in batch])
        finally:
            torch.set_num_threads(threads)
