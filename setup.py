"""Install the three source folders as the single distribution ``medtune``.

``framework/`` becomes ``medtune``, ``plugins/`` becomes ``medtune.plugins`` and ``kernels/``
becomes ``medtune.kernels``. The C++ sources in ``csrc/`` ship as package data
(``medtune.csrc``) and are compiled on first use against the torch that imports them, into a
cache keyed by torch version and source hash (see ``medtune.kernels.extension``); pip's build
isolation therefore can never produce a binary built against another torch.
"""

from setuptools import find_packages, setup

ROOTS = {"medtune": "framework", "medtune.plugins": "plugins", "medtune.kernels": "kernels"}


def _packages() -> tuple[list[str], dict[str, str]]:
    packages, package_dir = [], {}
    for name, folder in ROOTS.items():
        packages.append(name)
        package_dir[name] = folder
        for sub in find_packages(folder):
            packages.append(f"{name}.{sub}")
            package_dir[f"{name}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
    packages.append("medtune.csrc")
    package_dir["medtune.csrc"] = "csrc"
    return packages, package_dir


packages, package_dir = _packages()
setup(
    packages=packages,
    package_dir=package_dir,
    package_data={"medtune.csrc": ["*.cpp", "*.h"], "medtune": ["demo.toml"],
                  "medtune.plugins.nas": ["data/*.csv", "data/*.json"]},
    include_package_data=False,
)
