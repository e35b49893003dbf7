"""Every hook a medtune plugin can implement.

A plugin is a module (or object) registered through the ``medtune`` entry-point group. It
implements any subset of the hooks below with ``@medtune.hookimpl``. Each hook takes no
arguments and returns a mapping ``{name: factory}``; ``medtune.create(kind, name, **kwargs)``
calls ``factory(**kwargs)``. Names must be unique within a kind across all installed plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pluggy

PROJECT = "medtune"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Factory = Callable[..., Any]


@hookspec
def medtune_losses() -> Mapping[str, Factory]:
    """Called once when the registry first needs losses (kind ``loss``).

    Returns ``{name: factory}``; each factory builds a ``torch.nn.Module`` whose forward takes
    ``(input, target)`` and returns the loss.
    """


@hookspec
def medtune_searchers() -> Mapping[str, Factory]:
    """Called once when the registry first needs searchers (kind ``searcher``).

    Returns ``{name: factory}``; each factory builds an object with the ask/tell interface.
    """


@hookspec
def medtune_pruners() -> Mapping[str, Factory]:
    """Called once when the registry first needs pruners (kind ``pruner``): for a study's
    ``[pruner] name``.

    Returns ``{name: factory}``; each factory, called with ``direction`` and the pruner's
    options as keyword arguments, builds a :class:`medtune.pruners.Pruner`.
    """


@hookspec
def medtune_tasks() -> Mapping[str, Factory]:
    """Called once when the registry first needs tasks (kind ``task``): to resolve a study's
    ``[objective] task``, in the driver and in every worker that runs its trials.

    Returns ``{name: factory}``; each factory, called without arguments, builds a
    :class:`medtune.tasks.Task` (a subclass is its own factory).
    """


@hookspec
def medtune_transfer_layers() -> Mapping[str, Factory]:
    """Called once when the registry first needs transfer layers (kind ``transfer_layer``).

    Returns ``{name: factory}``; each factory builds a ``torch.nn.Module`` inserted into a network.
    """


@hookspec
def medtune_deformations() -> Mapping[str, Factory]:
    """Called once when the registry first needs deformation models (kind ``deformation``).

    Returns ``{name: factory}``; each factory builds a template-deformation model.
    """


@hookspec
def medtune_datasets() -> Mapping[str, Factory]:
    """Called once when the registry first needs datasets (kind ``dataset``).

    Returns ``{name: factory}``; each factory builds a dataset (a ``torch.utils.data.Dataset``).
    """


@hookspec
def medtune_quality_estimators() -> Mapping[str, Factory]:
    """Called once when the registry first needs quality estimators (kind ``quality_estimator``).

    Returns ``{name: factory}``; each factory builds a segmentation-quality regressor.
    """


@hookspec
def medtune_metrics() -> Mapping[str, Factory]:
    """Called once when the registry first needs metrics (kind ``metric``).

    Returns ``{name: factory}``; each factory builds a callable ``metric(prediction, target)``.
    """


@hookspec
def medtune_commands() -> Mapping[str, Factory]:
    """Called once when the command line starts (kind ``command``).

    Returns ``{name: factory}``; each factory, called without arguments, builds a
    :class:`medtune.commands.Command`, run as ``medtune NAME ...`` (a subclass is its own
    factory). A name that a core command already has is skipped with a warning.
    """


@hookspec
def medtune_kernel_impls() -> Mapping[str, Any]:
    """Called once when the kernel dispatcher first selects a backend.

    Returns ``{name: medtune.kernels.KernelImpl}``: extra implementations of existing kernel ops
    for a backend (for example a ROCm build). An implementation takes the same arguments as the
    op's reference and must match it within the tolerances of the op's tests.
    """
