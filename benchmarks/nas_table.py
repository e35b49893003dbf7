"""Regenerate the shipped NAS tabular benchmark (medtune.plugins.nas.tabular).

Trains every unique cell of the table's sub-space standalone on the built-in scar task with the
fixed budget and seeds of :class:`~medtune.plugins.nas.tabular.TaskSettings`, and writes the CSV
and its JSON side file. Run from the repository root with one thread for reproducible timings::

    OMP_NUM_THREADS=1 python -m benchmarks.nas_table                 # all 334 cells, ~15-25 min
    OMP_NUM_THREADS=1 python -m benchmarks.nas_table --limit 5 --output /tmp/cells.csv
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from medtune.plugins.nas.cells import enumerate_cells
from medtune.plugins.nas.tabular import TABLE_SPACE, TABLE_VERSION, NasTable, TableRow, TaskSettings, train_standalone

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "plugins" / "nas" / "data" / f"cells_v{TABLE_VERSION}.csv"


def build(limit: int | None = None, settings: TaskSettings = TaskSettings(), verbose: bool = True) -> NasTable:
    """Train the first ``limit`` cells (by hash; all by default) and return their table."""
    cells = enumerate_cells(TABLE_SPACE)[:limit]
    rows = []
    started = time.perf_counter()
    for k, cell in enumerate(cells, 1):
        result = train_standalone(cell, settings)
        rows.append(TableRow(cell.hash, cell.encoding(), int(result["parameters"]),
                             result["validation_accuracy"], result["test_accuracy"], result["train_seconds"]))
        if verbose:
            print(f"{k}/{len(cells)} {cell.encoding()} val {result['validation_accuracy']:.3f} "
                  f"test {result['test_accuracy']:.3f} {result['train_seconds']:.1f}s "
                  f"(elapsed {time.perf_counter() - started:.0f}s)", flush=True)
    return NasTable(rows, TABLE_VERSION, settings)


def main(argv: list[str] | None = None) -> None:
    """Command line: ``--limit N`` trains only N cells, ``--output PATH`` chooses the CSV."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="train only the first N cells (by hash)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="CSV to write (JSON side file next to it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    table = build(args.limit)
    table.save(args.output)
    print(f"wrote {len(table)} cells to {args.output}")


if __name__ == "__main__":
    main()
