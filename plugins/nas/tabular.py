"""The shipped NAS tabular benchmark and the small built-in task it was measured on.

Like NAS-Bench-101 at toy scale: every unique cell of a small sub-space (at most 3 operation
nodes and 5 edges: 334 cells) was trained standalone once on the built-in task with a fixed
budget and fixed seeds; the table (``data/cells_v1.csv``) records for each cell its canonical
hash, encoding, parameter count, validation and test accuracy and training seconds, with the
table version and task settings in a JSON side file. ``python -m benchmarks.nas_table``
regenerates it.

The task (:func:`scar_task`): 16x16 slices of the three-class ring phantom (plugins/datasets),
each labelled by whether its myocardium carries an enhanced scar sector (binary, about half of
the slices). Searchers replay on the table at no training cost through
:mod:`medtune.search.replay` (:func:`tabulated_objective`).
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from medtune.errors import MedtuneError
from medtune.plugins.nas.cells import Cell, CellNetwork, CellSpace, SubSpace

__all__ = [
    "TABLE_SPACE",
    "TABLE_VERSION",
    "NasTable",
    "TableRow",
    "TaskSettings",
    "accuracy",
    "load_table",
    "scar_task",
    "tabulated_objective",
    "train_standalone",
]

TABLE_VERSION = 1
TABLE_SPACE = SubSpace(max_op_nodes=3, max_edges=5)
"""The sub-space the shipped table covers."""
COLUMNS = ("hash", "cell", "parameters", "validation_accuracy", "test_accuracy", "train_seconds")


class TableError(MedtuneError, ValueError):
    """The tabular benchmark is missing, of another version, or queried for a cell it lacks."""


@dataclass(frozen=True)
class TaskSettings:
    """The built-in task and the standalone training budget of the table."""

    image_size: int = 16
    train_size: int = 512
    validation_size: int = 512
    test_size: int = 512
    data_seed: int = 0
    channels: int = 8
    stacks: int = 2
    cells_per_stack: int = 1
    epochs: int = 8
    batch_size: int = 64
    learning_rate: float = 0.01
    weight_decay: float = 1e-4
    train_seed: int = 0


Split = tuple[torch.Tensor, torch.Tensor]


@lru_cache(maxsize=4)
def scar_task(image_size: int = 16, train_size: int = 512, validation_size: int = 512,
              test_size: int = 512, data_seed: int = 0) -> tuple[Split, Split, Split]:
    """Train, validation and test splits ``(images [N, 1, S, S], labels [N])`` of the scar task.

    Slices of :class:`~medtune.plugins.datasets.ring_phantom.RingPhantom` (64x64, scar
    probability 0.5) average-pooled to ``image_size`` and standardised; label 1 = scar. Each
    split uses its own phantom seed derived from ``data_seed``.
    """
    from medtune.plugins.datasets.ring_phantom import RingPhantom

    if 64 % image_size:
        raise ValueError(f"image_size must divide 64 (e.g. 16 or 32), got {image_size}")
    splits = []
    for offset, size in enumerate((train_size, validation_size, test_size)):
        if size < 1:
            raise ValueError(f"every split needs at least one slice, got sizes {train_size}, {validation_size}, {test_size}")
        phantom = RingPhantom(size=size, image_size=64, seed=1000 * data_seed + offset, scar=0.5)
        images = torch.stack([phantom[i][0] for i in range(size)])
        labels = torch.tensor([int(phantom.ring(i).scar) for i in range(size)])
        images = nn.functional.avg_pool2d(images, 64 // image_size)
        splits.append(((images - 0.4) / 0.25, labels))
    return tuple(splits)  # type: ignore[return-value]


def accuracy(model: nn.Module, split: Split, batch_size: int = 256) -> float:
    """Fraction of ``split`` that ``model`` (in eval mode) classifies correctly."""
    images, labels = split
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            logits = model(images[start:start + batch_size])
            correct += int((logits.argmax(dim=1) == labels[start:start + batch_size]).sum())
    return correct / len(labels)


def train_standalone(cell: Cell, settings: TaskSettings = TaskSettings()) -> dict[str, float]:
    """Train ``cell``'s :class:`CellNetwork` from scratch on the scar task with the table budget.

    Adam with cosine-annealed learning rate, cross-entropy, fixed seeds. Returns
    ``parameters``, ``validation_accuracy``, ``test_accuracy`` and ``train_seconds``.
    """
    train, validation, test = scar_task(settings.image_size, settings.train_size,
                                        settings.validation_size, settings.test_size, settings.data_seed)
    torch.manual_seed(settings.train_seed)
    network = CellNetwork(cell, settings.channels, settings.stacks, settings.cells_per_stack, 1, 2)
    started = time.perf_counter()
    fit(network, train, settings.epochs, settings.batch_size, settings.learning_rate,
        settings.weight_decay, settings.train_seed)
    seconds = time.perf_counter() - started
    return {
        "parameters": sum(p.numel() for p in network.parameters()),
        "validation_accuracy": accuracy(network, validation),
        "test_accuracy": accuracy(network, test),
        "train_seconds": seconds,
    }


def fit(network: nn.Module, train: Split, epochs: int, batch_size: int, learning_rate: float,
        weight_decay: float, seed: int) -> None:
    """Plain supervised training: Adam, cosine schedule to 0, shuffled mini-batches."""
    images, labels = train
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(labels) / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(seed)
    network.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), batch_size):
            index = order[start:start + batch_size]
            loss = nn.functional.cross_entropy(network(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()


@dataclass(frozen=True)
class TableRow:
    """One trained cell of the table."""

    hash: str
    cell: str
    parameters: int
    validation_accuracy: float
    test_accuracy: float
    train_seconds: float


class NasTable:
    """The tabular benchmark: rows by canonical hash, with the version and task settings."""

    def __init__(self, rows: list[TableRow], version: int, settings: TaskSettings) -> None:
        if not rows:
            raise TableError("the NAS table holds no row")
        self.rows = {row.hash: row for row in rows}
        self.version = version
        self.settings = settings

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, cell: Cell) -> bool:
        return cell.hash in self.rows

    def row(self, cell: Cell) -> TableRow:
        """The row of ``cell`` (any isomorphic form)."""
        try:
            return self.rows[cell.hash]
        except KeyError:
            raise TableError(
                f"cell {cell.encoding()} is not in the NAS table (version {self.version}, "
                f"{len(self.rows)} cells of {TABLE_SPACE}); query cells of that sub-space"
            ) from None

    def cells(self, space: SubSpace | None = None) -> list[Cell]:
        """The table's cells, optionally only those of ``space``."""
        cells = [Cell.from_string(row.cell) for row in self.rows.values()]
        return [c for c in cells if space is None or space.contains(c)]

    def save(self, path: str | Path) -> None:
        """Write the CSV at ``path`` and its JSON side file (version, settings) next to it."""
        path = Path(path)
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            for row in sorted(self.rows.values(), key=lambda r: r.hash):
                writer.writerow([row.hash, row.cell, row.parameters, f"{row.validation_accuracy:.6f}",
                                 f"{row.test_accuracy:.6f}", f"{row.train_seconds:.3f}"])
        meta = {"version": self.version, "space": asdict(TABLE_SPACE), "settings": asdict(self.settings),
                "columns": list(COLUMNS)}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def read(cls, path: str | Path) -> NasTable:
        """Read a table written by :meth:`save`."""
        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            raise TableError(f"NAS table {path} or its side file {meta_path.name} is missing; "
                             "regenerate it with `python -m benchmarks.nas_table`")
        meta = json.loads(meta_path.read_text())
        rows = []
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != COLUMNS:
                raise TableError(f"NAS table {path} has columns {reader.fieldnames}, expected {list(COLUMNS)}")
            for line in reader:
                rows.append(TableRow(line["hash"], line["cell"], int(line["parameters"]),
                                     float(line["validation_accuracy"]), float(line["test_accuracy"]),
                                     float(line["train_seconds"])))
        return cls(rows, int(meta["version"]), TaskSettings(**meta["settings"]))


def load_table(version: int = TABLE_VERSION, path: str | Path | None = None) -> NasTable:
    """The shipped table (or the one at ``path``), checking that it has the requested version."""
    if path is None:
        path = Path(str(resources.files("medtune.plugins.nas") / "data" / f"cells_v{version}.csv"))
        if not path.exists():
            raise TableError(f"no shipped NAS table of version {version}; this medtune ships version "
                             f"{TABLE_VERSION} (or pass the path of a regenerated table)")
    table = NasTable.read(path)
    if table.version != version:
        raise TableError(f"NAS table {path} has version {table.version}, expected {version}; "
                         "regenerate it or ask for its version")
    return table


def tabulated_objective(table: NasTable, space: SubSpace | None = None, values: dict[str, float] | None = None):
    """A :class:`~medtune.search.replay.TabulatedObjective` over the table's cells (of ``space``).

    The searched value is the validation accuracy (maximised) unless ``values`` maps cell hashes
    to another score (e.g. a super-net proxy); the held-out ``test`` values are the test
    accuracies, so replays report the regret of Pourchot2022, eq. 4.1.
    """
    from medtune.search.replay import TabulatedObjective

    cells = table.cells(space)
    if not cells:
        raise TableError(f"no cell of the NAS table lies in {space}")
    cell_space = CellSpace(space or TABLE_SPACE, cells)
    scores = {}
    tests = {}
    for cell in cells:
        key = cell_space.search_space.key({"cell": cell.encoding()})
        row = table.row(cell)
        scores[key] = row.validation_accuracy if values is None else values[cell.hash]
        tests[key] = row.test_accuracy
    return TabulatedObjective(cell_space.search_space, scores, direction="maximize", test=tests)
