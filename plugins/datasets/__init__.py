"""Built-in datasets, generated on the fly from a seed (nothing is downloaded), and ``folder``
for the user's own images."""

from medtune.plugins.datasets.bone_age import BoneAgeCase, BoneAgePhantom
from medtune.plugins.datasets.folder import FolderDataset
from medtune.plugins.datasets.organ_phantom import Organ, OrganPhantom
from medtune.plugins.datasets.ring_phantom import Ring, RingPhantom
from medtune.plugins.datasets.small_lesion import Lesion, SmallLesionPhantom
from medtune.plugins.quality.brain_tumour import BrainTumourPhantom

#: ``{name: factory}`` as registered under the ``dataset`` kind by the built-in plugin.
DATASETS = {
    "small_lesion": SmallLesionPhantom,
    "organ_phantom": OrganPhantom,
    "ring_phantom": RingPhantom,
    "bone_age": BoneAgePhantom,
    "folder": FolderDataset,
    "brain_tumour": BrainTumourPhantom,
}

__all__ = [
    "DATASETS",
    "BoneAgeCase",
    "BoneAgePhantom",
    "FolderDataset",
    "Lesion",
    "Organ",
    "OrganPhantom",
    "Ring",
    "RingPhantom",
    "SmallLesionPhantom",
]
