"""The built-in plugin: registered through the ``medtune`` entry-point group like any other."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from medtune.hookspecs import hookimpl


@hookimpl
def medtune_losses() -> Mapping[str, Callable[..., Any]]:
    """The built-in losses: dice, tversky, effectiveness, glf, density_weighted and
    quality_surrogate."""
    from medtune.plugins.losses import LOSSES

    return dict(LOSSES)


@hookimpl
def medtune_datasets() -> Mapping[str, Callable[..., Any]]:
    """The built-in datasets: small_lesion, organ_phantom, ring_phantom and brain_tumour,
    generated from a seed, and folder, the user's own NIfTI/DICOM images with label maps."""
    from medtune.plugins.datasets import DATASETS

    return dict(DATASETS)


@hookimpl
def medtune_searchers() -> Mapping[str, Callable[..., Any]]:
    """The built-in searchers: grid, random, bayes, hyperband, bohb, evolution and
    local."""
    from medtune.plugins.searchers import SEARCHERS

    return dict(SEARCHERS)


@hookimpl
def medtune_pruners() -> Mapping[str, Callable[..., Any]]:
    """The built-in pruners: median, percentile, patience, asha and wilcoxon."""
    from medtune.plugins.pruners import PRUNERS

    return dict(PRUNERS)


@hookimpl
def medtune_tasks() -> Mapping[str, Callable[..., Any]]:
    """The built-in tasks: segmentation, transfer, template, quality, regions, nas,
    regression and scans."""
    from medtune.plugins.tasks import TASKS

    return dict(TASKS)


@hookimpl
def medtune_metrics() -> Mapping[str, Callable[..., Any]]:
    """The built-in metrics: dice, iou, precision, recall, accuracy, surface_dice, hausdorff95,
    boundary_f1, mae, rmse, pearson, spearman and aufroc."""
    from medtune.plugins.metrics import METRICS

    return dict(METRICS)


@hookimpl
def medtune_transfer_layers() -> Mapping[str, Callable[..., Any]]:
    """The built-in transfer layers: geometric, intensity, partial and fixed_convolutions."""
    from medtune.plugins.transfer import TRANSFER_LAYERS

    return dict(TRANSFER_LAYERS)


@hookimpl
def medtune_deformations() -> Mapping[str, Callable[..., Any]]:
    """The built-in deformations: template (deep template deformation) and implicit."""
    from medtune.plugins.deformations import DEFORMATIONS

    return dict(DEFORMATIONS)


@hookimpl
def medtune_quality_estimators() -> Mapping[str, Callable[..., Any]]:
    """The built-in quality estimator: dqe, the deep quality estimation regressor of Kofler2022."""
    from medtune.plugins.quality import QUALITY_ESTIMATORS

    return dict(QUALITY_ESTIMATORS)


@hookimpl
def medtune_commands() -> Mapping[str, Callable[..., Any]]:
    """The built-in commands: sample and plan of the own-scans workflow (see
    :mod:`medtune.plugins.scans.commands`), and export-optuna (see
    :mod:`medtune.plugins.optuna_export`)."""
    from medtune.plugins.optuna_export import COMMANDS as OPTUNA_COMMANDS
    from medtune.plugins.scans.commands import COMMANDS

    return {**COMMANDS, **OPTUNA_COMMANDS}
