"""The ``nas`` task: one weight-sharing super-net scored against the shipped tabular benchmark.

Reproduces the shape of Pourchot2022's tables 4.3 and 4.4 on the toy benchmark of
:mod:`medtune.plugins.nas.tabular`. A trial trains one super-net (seed: the trial's) over the
cells of one sub-space (``subspace``) with one training variant (``variant``), then ranks a
fixed random sample of cells with it, without (NO-FT) and with (BNS-FT) batch-norm
recalibration, against their tabulated standalone accuracies, and compares weight-sharing
random search with plain random search given the same seconds. ``value`` is the BNS-FT
Spearman rho; the other metrics are listed in docs/tasks.md, and the per-cell lists are drawn
by :func:`medtune.plugins.nas.analysis.report_figures`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtune.errors import MedtuneError
from medtune.plugins.nas.analysis import cohens_d, regret_curve, report_figures, spearman, welch
from medtune.plugins.nas.cells import SubSpace
from medtune.plugins.nas.recalibration import StatisticsCache
from medtune.plugins.nas.supernet import SuperNet, SupernetTraining, train_supernet
from medtune.plugins.nas.tabular import TABLE_SPACE, TABLE_VERSION, load_table, scar_task
from medtune.study.store import Trial
from medtune.tasks import Figure, Task

VARIANTS = {
    "baseline": dict(single_kernel=False, sampling="uniform", paths=1),
    "single_kernel": dict(single_kernel=True, sampling="uniform", paths=1),
    "pro_rata": dict(single_kernel=False, sampling="pro_rata", paths=1),
    "avg3": dict(single_kernel=False, sampling="uniform", paths=3),
    "sk_pr": dict(single_kernel=True, sampling="pro_rata", paths=1),
}
SUBSPACES = ("A1", "A2", "FULL", "RES", "NRES")
_POSITIVE_INTEGERS = ("steps", "batch_size", "recalibration_images", "rank_cells", "proxy_images",
                      "ws_evaluations", "runs")


class NasTask(Task):
    """Weight-sharing architecture search on a tabulated cell space: rankings and one-shot searches."""

    name = "nas"
    settings = {
        "subspace": "FULL",
        "variant": "baseline",
        "steps": 250,                  # super-net training mini-batches
        "batch_size": 64,
        "lr": 0.003,
        "weight_decay": 1e-4,
        "momentum": 0.1,               # batch-norm running-statistics momentum of the super-net
        "recalibration_images": 256,   # one mini-batch of training images, as in the thesis
        "rank_cells": 50,              # cells ranked by the super-net (a fixed random sample)
        "proxy_images": 256,           # validation images of a proxy evaluation
        "ws_evaluations": 25,          # proxy evaluations of weight-sharing random search (of rank_cells)
        "runs": 100,                   # random orders of both searches
        "bootstrap": 500,              # resamples of the Spearman interval
        "table_version": TABLE_VERSION,
        "table_path": "",              # a regenerated table's CSV; empty: the shipped table
        "progress": True,
        "threads": 0,
    }

    def check(self, settings: dict[str, Any]) -> dict[str, Any]:
        if settings["subspace"] not in SUBSPACES:
            raise MedtuneError(f"nas task: subspace must be one of {', '.join(SUBSPACES)}, got "
                               f"{settings['subspace']!r}")
        if settings["variant"] not in VARIANTS:
            raise MedtuneError(f"nas task: variant must be one of {', '.join(VARIANTS)}, got "
                               f"{settings['variant']!r}")
        for key in _POSITIVE_INTEGERS:
            if settings[key] < 1:
                raise MedtuneError(f"nas task: {key} must be an integer >= 1, got {settings[key]!r}")
        for key in ("lr", "momentum"):
            if not settings[key] > 0:
                raise MedtuneError(f"nas task: {key} must be a number > 0, got {settings[key]!r}")
        if settings["runs"] < 2:
            raise MedtuneError("nas task: runs must be at least 2 to compare the searches statistically")
        return settings

    def train(self, settings: dict[str, Any], resource: float | None, seed: int,
              report: Callable[[float, float], None] | None) -> dict[str, float | list[float]]:
        """Train one super-net (seed ``seed``) for ``resource`` steps (default ``steps``) and
        score its rankings and one-shot searches."""
        steps = self.budget(resource, settings["steps"], unit="step")
        table = load_table(settings["table_version"], settings["table_path"] or None)
        subspace = SubSpace.parse(settings["subspace"], TABLE_SPACE.max_op_nodes)
        subspace = SubSpace(subspace.max_op_nodes, subspace.output_nodes, subspace.residual, TABLE_SPACE.max_edges)
        cells = table.cells(subspace)
        if len(cells) < 3:
            raise MedtuneError(f"nas task: sub-space {settings['subspace']} holds {len(cells)} cells of the table; "
                               "choose another sub-space")
        task = table.settings
        train, validation, _ = scar_task(task.image_size, task.train_size, task.validation_size,
                                         task.test_size, task.data_seed)
        variant = VARIANTS[settings["variant"]]
        torch.manual_seed(seed)
        supernet = SuperNet(TABLE_SPACE.max_op_nodes, task.channels, task.stacks, task.cells_per_stack, 1, 2,
                            single_kernel=variant["single_kernel"], momentum=float(settings["momentum"]))
        training = SupernetTraining(steps, settings["batch_size"], float(settings["lr"]),
                                    float(settings["weight_decay"]), variant["sampling"], variant["paths"])
        trained = train_supernet(supernet, cells, train, training, seed=seed)

        generator = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(train[1]), generator=generator)[: settings["recalibration_images"]]
        recalibration = [train[0][pick]]
        proxy_split = (validation[0][: settings["proxy_images"]], validation[1][: settings["proxy_images"]])
        sample = np.sort(np.random.default_rng(0).permutation(len(cells))[: settings["rank_cells"]])
        ranked = [cells[i] for i in sample]
        progress = bool(settings["progress"])
        noft = supernet.rank(ranked, proxy_split, "noft", progress=progress, description=settings["subspace"])
        started = time.perf_counter()
        bnsft = supernet.rank(ranked, proxy_split, "bnsft", recalibration, StatisticsCache(len(ranked)),
                              progress=progress, description=settings["subspace"])
        seconds_per_eval = (time.perf_counter() - started) / len(ranked)

        rows = [table.row(c) for c in cells]
        validation_accuracy = np.array([r.validation_accuracy for r in rows])
        test = np.array([r.test_accuracy for r in rows])
        train_seconds = np.array([r.train_seconds for r in rows])
        standalone = validation_accuracy[sample]
        rho_noft = spearman(noft, standalone, settings["bootstrap"], seed=seed)
        rho_bnsft = spearman(bnsft, standalone, settings["bootstrap"], seed=seed)

        search = one_shot_comparison(bnsft, sample, validation_accuracy, test, train_seconds, trained["seconds"],
                                     seconds_per_eval, min(settings["ws_evaluations"], len(ranked)),
                                     settings["runs"], seed)
        if report is not None:
            report(float(steps), rho_bnsft.rho)
        return {
            "value": rho_bnsft.rho,
            "rho_noft": rho_noft.rho, "rho_noft_low": rho_noft.low, "rho_noft_high": rho_noft.high,
            "rho_bnsft": rho_bnsft.rho, "rho_bnsft_low": rho_bnsft.low, "rho_bnsft_high": rho_bnsft.high,
            "rho_gain": rho_bnsft.rho - rho_noft.rho,
            "cells": float(len(cells)),
            "ranked_cells": float(len(ranked)),
            "supernet_loss": trained["loss"],
            "supernet_seconds": trained["seconds"],
            **search,
            "proxy_noft": noft.tolist(),
            "proxy_bnsft": bnsft.tolist(),
            "standalone": standalone.tolist(),
            "output_nodes": [float(len(c.output_nodes)) for c in ranked],
        }

    def figures(self, trials: Sequence[Trial], folder: Path) -> list[Figure]:
        return report_figures(trials, folder)


def one_shot_comparison(proxy: np.ndarray, sample: np.ndarray, validation: np.ndarray, test: np.ndarray,
                        train_seconds: np.ndarray, supernet_seconds: float, seconds_per_eval: float,
                        evaluations: int, runs: int, seed: int) -> dict[str, float | list[float]]:
    """Weight-sharing random search against plain random search at equal seconds (table 4.4).

    ``validation``, ``test`` and ``train_seconds`` cover every cell of the sub-space;
    ``proxy[k]`` is the super-net score of cell ``sample[k]``. Weight sharing, run r:
    ``evaluations`` random cells of the sample scored by ``proxy``, the best one retrained (its
    tabulated seconds). Plain random search, run r: cells of the sub-space in random order, each
    costing its training seconds, until the weight-sharing run's seconds are spent (at least
    one), the best by ``validation`` kept. Regrets (eq. 4.1, against the best test accuracy of
    the sub-space) are on ``test``, in percentage points.
    """
    rng = np.random.default_rng(seed + 7919)
    best_test = float(test.max())
    ws_regrets, rs_regrets, ws_curves, rs_curves, budgets = [], [], [], [], []
    for _ in range(runs):
        order = rng.permutation(len(sample))[:evaluations]
        ws_curve = regret_curve(proxy[order], test[sample[order]], best_test)
        chosen = sample[order[int(np.argmax(proxy[order]))]]
        budget = supernet_seconds + evaluations * seconds_per_eval + train_seconds[chosen]
        ws_regrets.append(ws_curve[-1])
        ws_curves.append(ws_curve)
        budgets.append(budget)
        rs_order = rng.permutation(len(test))
        spent = np.cumsum(train_seconds[rs_order])
        draws = max(1, int(np.searchsorted(spent, budget, side="right")))
        rs_curve = regret_curve(validation[rs_order], test[rs_order], best_test)
        rs_regrets.append(rs_curve[draws - 1])
        rs_curves.append(rs_curve)
    ws = 100 * np.array(ws_regrets)
    rs = 100 * np.array(rs_regrets)
    return {
        "regret_rs_pp": float(rs.mean()),
        "regret_ws_pp": float(ws.mean()),
        "regret_gain_pp": float(rs.mean() - ws.mean()),
        "cohen_d": cohens_d(rs, ws),
        "p_value": welch(rs, ws),
        "search_seconds": float(np.mean(budgets)),
        "regret_curve_rs": np.mean(rs_curves, axis=0).tolist(),
        "regret_curve_ws": np.mean(ws_curves, axis=0).tolist(),
        "rs_seconds_per_draw": float(train_seconds.mean()),
        "ws_seconds_fixed": float(supernet_seconds),
        "ws_seconds_per_eval": float(seconds_per_eval),
    }
