"""The DQE training augmentation (Kofler2022, sec. 2): every transform keeps the shape, changes the
slice when drawn, is reproducible from its seed; labels only follow the spatial transforms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Rand2DElastic, RandSimulateLowResolution

from medtune.plugins.quality import QualityError
from medtune.plugins.quality.augment import RandGhosting, RandMotion, SliceAugmentation


def _slice(channels: int = 4) -> torch.Tensor:
    """A [channels, 32, 32] slice with a bright disc and texture (so every artefact shows)."""
    grid = torch.stack(torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij"))
    disc = (((grid - torch.tensor([14.0, 17.0])[:, None, None]) ** 2).sum(0) <= 36).float()
    texture = torch.from_numpy(np.random.default_rng(0).uniform(0, 0.2, (channels, 32, 32))).float()
    return 0.3 + 0.6 * disc + texture


def _elastic() -> Rand2DElastic:
    return Rand2DElastic(spacing=8, magnitude_range=(0.5, 1.5), prob=1.0, padding_mode="zeros")


def _low_resolution() -> RandSimulateLowResolution:
    return RandSimulateLowResolution(prob=1.0, zoom_range=(0.4, 0.7), upsample_mode="bilinear")


TRANSFORMS = {
    "ghosting": lambda: RandGhosting(prob=1.0),
    "motion": lambda: RandMotion(prob=1.0, degrees=8, translation=3),
    "elastic": _elastic,
    "low_resolution": _low_resolution,
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_each_added_transform_keeps_shape_changes_the_slice_and_is_seeded(name):
    image = _slice()
    results = []
    for seed in (3, 3, 4, 5, 6):
        transform = TRANSFORMS[name]()
        transform.set_random_state(seed)
        results.append(torch.as_tensor(transform(image.clone())).float())
    first, again, *others = results
    assert first.shape == image.shape
    assert torch.isfinite(first).all()
    assert (first - image).abs().mean() > 0.01  # the effect is present
    assert torch.equal(first, again)  # same seed, same result
    assert any(not torch.allclose(first, other) for other in others)  # other seeds, other draws


def test_ghosting_puts_copies_of_the_slice_at_the_ghost_spacing():
    image = torch.zeros(1, 32, 32)
    image[0, 12:18, 12:18] = 1.0
    ghosting = RandGhosting(prob=1.0, num_ghosts=(4, 4), intensity=(0.8, 0.8), restore=0.0)
    ghosting.set_random_state(0)
    ghosted = ghosting(image)[0]
    if ghosting.axis == 1:
        ghosted = ghosted.T
    # n = 4: faint copies 32 / 4 = 8 pixels away along the phase-encoding axis
    assert ghosted[4:10, 12:18].mean() > 0.03 and ghosted[20:26, 12:18].mean() > 0.03
    assert ghosted[12:18, 4:10].mean() < 0.01 and ghosted[12:18, 20:26].mean() < 0.01  # none across
    assert ghosted[12:18, 12:18].mean() < 0.97  # the energy of the ghosts left the slice


def test_motion_blurs_edges_and_a_still_patient_changes_nothing():
    image = _slice(1)
    still = RandMotion(prob=1.0, degrees=0.0, translation=0.0)
    still.set_random_state(0)
    assert torch.allclose(still(image), image, atol=1e-4)
    motion = RandMotion(prob=1.0, degrees=10.0, translation=4.0, transforms=(2, 2))
    motion.set_random_state(0)
    moved = motion(image)
    assert len(motion.moves) == 2 and (moved - image).abs().mean() > 0.01


def test_artefact_transforms_reject_bad_settings():
    with pytest.raises(QualityError, match="num_ghosts"):
        RandGhosting(num_ghosts=(1, 3))
    with pytest.raises(QualityError, match="intensity"):
        RandGhosting(intensity=(0.8, 0.2))
    with pytest.raises(QualityError, match="restore"):
        RandGhosting(restore=1.5)
    with pytest.raises(QualityError, match="degrees and translation"):
        RandMotion(degrees=-1)
    with pytest.raises(QualityError, match="transforms"):
        RandMotion(transforms=(0, 2))
    with pytest.raises(QualityError, match="probability"):
        SliceAugmentation(4, probability=2.0)


def test_slice_augmentation_moves_labels_with_the_image_and_keeps_their_values():
    image = _slice(4)
    labels = torch.zeros(3, 32, 32)
    labels[:, 11:18, 14:21] = 1.0
    sample = torch.cat([image, labels])
    augmentation = SliceAugmentation(4, seed=0, probability=1.0)
    outputs = [augmentation(sample) for _ in range(20)]
    assert all(o.shape == sample.shape and o.dtype == torch.float32 for o in outputs)
    # labels change only through spatial transforms: still in [0, 1], still a blob of similar size
    assert all(0 <= o[4:].min() and o[4:].max() <= 1 + 1e-5 for o in outputs)
    assert all(abs(float(o[4].sum()) - 49) < 30 for o in outputs)
    assert any(not torch.equal(o[4:], labels) for o in outputs)
    repeat = SliceAugmentation(4, seed=0, probability=1.0)
    assert all(torch.equal(o, repeat(sample)) for o in outputs)  # seeded: the same sequence
    # with probability 0 only the flips act: the image is the flipped input, exactly
    plain = SliceAugmentation(4, seed=1, probability=0.0)(sample)
    flips = [sample, sample.flip(1), sample.flip(2), sample.flip(1).flip(2)]
    assert any(torch.allclose(plain, f) for f in flips)
