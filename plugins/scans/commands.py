"""The command-line commands of the scans workflow (plugin kind ``command``): ``medtune sample``
writes a synthetic dataset to try it on, ``medtune plan`` plans a dataset for the ``scans``
task."""

from __future__ import annotations

import argparse
import json
from typing import Any

from medtune.commands import Command
from medtune.study.files import replacing


class SampleCommand(Command):
    """``medtune sample DIR``: the synthetic dataset of
    :func:`medtune.plugins.scans.sample.write_sample`."""

    name = "sample"
    help = "write a small synthetic dataset of scans (nnU-Net layout) to try the scans task on"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("folder", metavar="DIR", help="the dataset folder to create (new or empty)")
        parser.add_argument("--cases", type=int, default=8, metavar="N",
                            help="number of training cases (default 8; 2 test cases are added)")
        parser.add_argument("--size", type=int, default=40, metavar="VOXELS",
                            help="in-plane voxels per side (default 40)")
        parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")

    def run(self, args: argparse.Namespace, console: Any) -> int:
        from medtune.plugins.scans.sample import write_sample

        dataset = write_sample(args.folder, cases=args.cases, size=args.size, seed=args.seed)
        labels = ", ".join(f"{name}={value}" for name, value in dataset.labels.items())
        console.print(f"wrote dataset {dataset.name} to {dataset.root}: {len(dataset.training)} "
                      f"training cases, {len(dataset.test)} test cases, channels "
                      f"{', '.join(dataset.channels)}, labels {labels}", markup=False)
        console.print(f"next: medtune plan {args.folder}", markup=False)
        return 0


class PlanCommand(Command):
    """``medtune plan DATA``: fingerprint a dataset, plan it and write ``DATA/plan.json``."""

    name = "plan"
    help = "plan a dataset of scans for the scans task (spacing, patch, network) into DATA/plan.json"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("data", metavar="DATA", help="the dataset folder (holding dataset.json)")
        parser.add_argument("--configuration", choices=("3d", "2d"), default="3d",
                            help="3d patches, or 2d slices across the coarsest axis (default 3d)")
        parser.add_argument("--budget", type=float, default=None, metavar="GB",
                            help="training memory budget in GB (default: 80%% of the GPU's "
                                 "memory, else 4 GB on the CPU)")

    def run(self, args: argparse.Namespace, console: Any) -> int:
        from medtune.plugins.scans.fingerprint import fingerprint
        from medtune.plugins.scans.layout import load_dataset
        from medtune.plugins.scans.plan import make_plan, plan_table

        dataset = load_dataset(args.data)
        found = fingerprint(dataset, progress=True)
        plan = make_plan(found, args.configuration, memory_budget_gb=args.budget)
        console.print(plan_table(plan, found))
        path = dataset.root / "plan.json"
        with replacing(path) as temporary:
            temporary.write_text(json.dumps(plan.to_json(), indent=2) + "\n")
        console.print(f"wrote {path}; next: a study of the scans task on it, with "
                      f'task = "scans" under [objective] and data = "{args.data}" under '
                      "[objective.settings]", markup=False)
        return 0


#: ``{name: command}`` as registered under the ``command`` kind by the built-in plugin.
COMMANDS = {"sample": SampleCommand, "plan": PlanCommand}
