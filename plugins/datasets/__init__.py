"""Built-in datasets, generated on the fly from a seed (nothing is downloaded)."""

from medtune.plugins.datasets.organ_phantom import Organ, OrganPhantom
from medtune.plugins.datasets.small_lesion import Lesion, SmallLesionPhantom

#: ``{name: factory}`` as registered under the ``dataset`` kind by the built-in plugin.
DATASETS = {"small_lesion": SmallLesionPhantom, "organ_phantom": OrganPhantom}

__all__ = ["DATASETS", "Lesion", "Organ", "OrganPhantom", "SmallLesionPhantom"]
