"""The NAS-Bench-101-like cell search space and a standalone network built from one cell.

A cell (Pourchot2022, sec. 4.3.1; Ying et al., 2019) is a directed acyclic graph of up to 7 nodes:
node 0 is the input, the last node the output, and up to 5 operation nodes in between, each
``conv3x3-bn-relu``, ``conv1x1-bn-relu`` or ``maxpool3x3``; at most 9 edges. A node sums its
inputs; the output concatenates the operation nodes that feed it (their channels split the
cell's output channels) and adds a 1x1 projection of the cell input when the input-to-output
edge (the residual) is present. Nodes that do not lie on an input-to-output path are pruned;
isomorphic cells share a canonical hash (exact: the minimum encoding over all permutations of
the operation nodes), so enumeration and search deduplicate them.

Sub-spaces as in Pourchot2022: ``A_k`` holds the cells with exactly ``k`` operation nodes feeding
the output; ``RES`` / ``NRES`` those with / without the residual. :func:`enumerate_cells` lists
the unique cells of a sub-space, :func:`neighbours` and :func:`mutate` give local search and
evolution their moves, :class:`CellSpace` exposes a sub-space as a finite
:class:`~medtune.search.space.SearchSpace` (one categorical parameter, the cell encoding) so
every medtune searcher runs over it, and :class:`CellNetwork` builds a small 2D classifier.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

__all__ = [
    "MAX_EDGES",
    "MAX_NODES",
    "OPERATIONS",
    "Cell",
    "CellNetwork",
    "CellSpace",
    "SubSpace",
    "enumerate_cells",
    "mutate",
    "neighbours",
    "max_pool3x3",
    "node_channels",
]

OPERATIONS = ("conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3")
"""The operations a node of a cell can hold."""
_SHORT = {"conv3x3-bn-relu": "c3", "conv1x1-bn-relu": "c1", "maxpool3x3": "mp"}
_LONG = {short: name for name, short in _SHORT.items()}
MAX_NODES = 7
"""Input, output and at most 5 operation nodes."""
MAX_EDGES = 9


@dataclass(frozen=True)
class Cell:
    """One cell: an upper-triangular 0/1 adjacency ``matrix`` over ``len(ops) + 2`` nodes (input
    first, output last) and the operation of each interior node.

    A cell may hold nodes off every input-to-output path; :meth:`pruned` removes them and
    :attr:`is_valid` says whether the input reaches the output within the size limits.
    """

    matrix: tuple[tuple[int, ...], ...]
    ops: tuple[str, ...]

    def __post_init__(self) -> None:
        size = len(self.matrix)
        if not 2 <= size <= MAX_NODES:
            raise ValueError(f"a cell has 2 to {MAX_NODES} nodes (input and output included), got {size}")
        if any(len(row) != size for row in self.matrix):
            raise ValueError(f"a cell's adjacency matrix must be square, got rows of lengths {[len(r) for r in self.matrix]}")
        for i, row in enumerate(self.matrix):
            for j, value in enumerate(row):
                if value not in (0, 1):
                    raise ValueError(f"adjacency entries are 0 or 1, got {value!r} at ({i}, {j})")
                if value and j <= i:
                    raise ValueError(
                        f"the adjacency matrix must be strictly upper triangular (edges go from a node "
                        f"to a later one), got an edge {i} -> {j}"
                    )
        if len(self.ops) != size - 2:
            raise ValueError(f"a cell of {size} nodes has {size - 2} operations, got {len(self.ops)}")
        for op in self.ops:
            if op not in OPERATIONS:
                raise ValueError(f"unknown operation {op!r}; choose from {', '.join(OPERATIONS)}")

    @classmethod
    def from_edges(cls, ops: Sequence[str], edges: Sequence[tuple[int, int]]) -> Cell:
        """A cell from interior ``ops`` (long or short names) and ``(source, target)`` edges."""
        size = len(ops) + 2
        matrix = [[0] * size for _ in range(size)]
        for source, target in edges:
            if not (0 <= source < size and 0 <= target < size):
                raise ValueError(f"edge {source} -> {target} leaves the {size} nodes of the cell")
            matrix[source][target] = 1
        return cls(tuple(tuple(row) for row in matrix), tuple(_LONG.get(op, op) for op in ops))

    @classmethod
    def from_string(cls, text: str) -> Cell:
        """Parse :meth:`encoding`: ``"<rows of bits joined by .>|<short ops joined by ,>"``."""
        try:
            rows, _, ops = text.partition("|")
            matrix = tuple(tuple(int(bit) for bit in row) for row in rows.split("."))
            names = tuple(_LONG[op] for op in ops.split(",") if op)
        except (KeyError, ValueError) as error:
            raise ValueError(
                f"cannot parse cell {text!r}: expected e.g. '0110.0001.0001.0000|c3,mp' "
                f"(adjacency rows, then ops among {', '.join(_LONG)})"
            ) from error
        return cls(matrix, names)

    @property
    def size(self) -> int:
        """Number of nodes, input and output included."""
        return len(self.matrix)

    @property
    def edges(self) -> list[tuple[int, int]]:
        """The ``(source, target)`` edges."""
        return [(i, j) for i in range(self.size) for j in range(self.size) if self.matrix[i][j]]

    @property
    def residual(self) -> bool:
        """Whether the input feeds the output directly."""
        return bool(self.matrix[0][-1])

    @property
    def output_nodes(self) -> list[int]:
        """Operation nodes feeding the output (their outputs are concatenated)."""
        return [i for i in range(1, self.size - 1) if self.matrix[i][-1]]

    def encoding(self) -> str:
        """The cell as text, e.g. ``"0110.0001.0001.0000|c3,mp"`` (see :meth:`from_string`)."""
        rows = ".".join("".join(str(b) for b in row) for row in self.matrix)
        return rows + "|" + ",".join(_SHORT[op] for op in self.ops)

    def pruned(self) -> Cell | None:
        """The cell without nodes off every input-to-output path; None if there is no such path."""
        size = self.size
        forward = {0}
        for j in range(1, size):
            if any(self.matrix[i][j] for i in forward):
                forward.add(j)
        backward = {size - 1}
        for i in range(size - 2, -1, -1):
            if any(self.matrix[i][j] for j in backward):
                backward.add(i)
        keep = sorted(forward & backward)
        if 0 not in keep or size - 1 not in keep:
            return None
        matrix = tuple(tuple(self.matrix[i][j] for j in keep) for i in keep)
        return Cell(matrix, tuple(self.ops[i - 1] for i in keep[1:-1]))

    @cached_property
    def is_valid(self) -> bool:
        """Whether the pruned cell exists and has at most :data:`MAX_EDGES` edges."""
        pruned = self.pruned()
        return pruned is not None and len(pruned.edges) <= MAX_EDGES

    @cached_property
    def canonical(self) -> Cell:
        """The pruned cell with its operation nodes in the canonical order (minimal encoding).

        Isomorphic cells have equal canonical forms; the node order keeps edges pointing
        forward, so the canonical form is itself a valid cell.
        """
        pruned = self.pruned()
        if pruned is None:
            raise ValueError(f"cell {self.encoding()} has no input-to-output path; it is not an architecture")
        best: tuple | None = None
        best_cell = pruned
        inner = pruned.size - 2
        for order in itertools.permutations(range(1, inner + 1)):
            nodes = (0, *order, pruned.size - 1)
            position = {node: k for k, node in enumerate(nodes)}
            if any(position[i] >= position[j] for i, j in pruned.edges):
                continue
            ops = tuple(pruned.ops[n - 1] for n in order)
            matrix = tuple(tuple(pruned.matrix[i][j] for j in nodes) for i in nodes)
            key = (tuple(OPERATIONS.index(op) for op in ops), tuple(-b for row in matrix for b in row))
            if best is None or key < best:
                best, best_cell = key, Cell(matrix, ops)
        return best_cell

    @cached_property
    def hash(self) -> str:
        """Canonical hash: equal for isomorphic cells (after pruning), 16 hex digits."""
        return hashlib.sha256(self.canonical.encoding().encode()).hexdigest()[:16]

    def parameters(self, channels: int = 16, stacks: int = 2, cells_per_stack: int = 1,
                   in_channels: int = 1, classes: int = 2) -> int:
        """Trainable parameters of :class:`CellNetwork` built from this cell."""
        network = CellNetwork(self, channels, stacks, cells_per_stack, in_channels, classes)
        return sum(p.numel() for p in network.parameters())


@dataclass(frozen=True)
class SubSpace:
    """Which cells a search space holds.

    Args:
        max_op_nodes: at most this many operation nodes (1-5) after pruning.
        output_nodes: exactly this many operation nodes feed the output (``A_k``); None: any.
        residual: True (``RES``), False (``NRES``) or None (both).
        max_edges: at most this many edges (up to 9).
    """

    max_op_nodes: int = 3
    output_nodes: int | None = None
    residual: bool | None = None
    max_edges: int = MAX_EDGES

    def __post_init__(self) -> None:
        if not 0 <= self.max_op_nodes <= MAX_NODES - 2:
            raise ValueError(f"max_op_nodes must lie in [0, {MAX_NODES - 2}], got {self.max_op_nodes}")
        if self.output_nodes is not None and not 0 <= self.output_nodes <= self.max_op_nodes:
            raise ValueError(f"output_nodes must lie in [0, max_op_nodes={self.max_op_nodes}], got {self.output_nodes}")
        if not 1 <= self.max_edges <= MAX_EDGES:
            raise ValueError(f"max_edges must lie in [1, {MAX_EDGES}], got {self.max_edges}")

    @classmethod
    def parse(cls, name: str, max_op_nodes: int = 3) -> SubSpace:
        """From a seed-style name: ``"A1"``-``"A5"``, ``"FULL"``, ``"RES"``, ``"NRES"``."""
        upper = name.upper().replace("_", "")
        if upper in ("FULL", "AFULL"):
            return cls(max_op_nodes)
        if upper in ("RES", "AFULLRES"):
            return cls(max_op_nodes, residual=True)
        if upper in ("NRES", "AFULLNRES"):
            return cls(max_op_nodes, residual=False)
        if upper.startswith("A") and upper[1:].isdigit():
            return cls(max_op_nodes, output_nodes=int(upper[1:]))
        raise ValueError(f"unknown sub-space {name!r}; use A1..A5, FULL, RES or NRES")

    def contains(self, cell: Cell) -> bool:
        """Whether ``cell`` (pruned) belongs to the sub-space."""
        pruned = cell.pruned()
        if pruned is None or len(pruned.edges) > self.max_edges or pruned.size - 2 > self.max_op_nodes:
            return False
        if self.output_nodes is not None and len(pruned.output_nodes) != self.output_nodes:
            return False
        return self.residual is None or pruned.residual == self.residual


def enumerate_cells(space: SubSpace) -> list[Cell]:
    """Every unique cell (canonical form, one per isomorphism class) of ``space``, sorted by hash."""
    found: dict[str, Cell] = {}
    for inner in range(space.max_op_nodes + 1):
        size = inner + 2
        slots = [(i, j) for i in range(size) for j in range(i + 1, size)]
        for bits in itertools.product((0, 1), repeat=len(slots)):
            if sum(bits) > space.max_edges:
                continue
            matrix = [[0] * size for _ in range(size)]
            for (i, j), bit in zip(slots, bits):
                matrix[i][j] = bit
            skeleton = Cell(tuple(map(tuple, matrix)), (OPERATIONS[0],) * inner)
            pruned = skeleton.pruned()
            if pruned is None or pruned.size != size:  # smaller cells are enumerated on their own
                continue
            for ops in itertools.product(OPERATIONS, repeat=inner):
                cell = Cell(skeleton.matrix, ops)
                if space.contains(cell) and cell.hash not in found:
                    found[cell.hash] = cell.canonical
    return [found[key] for key in sorted(found)]


def neighbours(cell: Cell, space: SubSpace | None = None) -> list[Cell]:
    """Cells one move away (Pourchot2022, sec. 4.3.3), canonical and unique, ``cell`` excluded.

    Moves: change one node's operation; add or remove one edge; insert a new node (any
    operation) on an existing edge. Only cells of ``space`` (default: the whole cell space) are
    kept.
    """
    space = space or SubSpace(MAX_NODES - 2)
    base = cell.canonical
    size = base.size
    candidates: list[Cell] = []
    for k, op in enumerate(base.ops):
        for other in OPERATIONS:
            if other != op:
                candidates.append(Cell(base.matrix, base.ops[:k] + (other,) + base.ops[k + 1:]))
    for i in range(size):
        for j in range(i + 1, size):
            matrix = [list(row) for row in base.matrix]
            matrix[i][j] = 1 - matrix[i][j]
            candidates.append(Cell(tuple(map(tuple, matrix)), base.ops))
    if size < MAX_NODES:
        for i, j in base.edges:
            # the new node sits just before j: node indices >= j shift by one
            new_size = size + 1
            matrix = [[0] * new_size for _ in range(new_size)]
            shift = lambda n: n if n < j else n + 1  # noqa: E731
            for a, b in base.edges:
                matrix[shift(a)][shift(b)] = 1
            matrix[i][j] = 1
            matrix[j][j + 1] = 1
            for op in OPERATIONS:
                ops = base.ops[: j - 1] + (op,) + base.ops[j - 1:]
                candidates.append(Cell(tuple(map(tuple, matrix)), ops))
    result: dict[str, Cell] = {}
    for candidate in candidates:
        if candidate.is_valid and space.contains(candidate) and candidate.hash != base.hash:
            result.setdefault(candidate.hash, candidate.canonical)
    return list(result.values())


def mutate(cell: Cell, rate: float, rng: np.random.Generator, space: SubSpace | None = None,
           attempts: int = 100) -> Cell:
    """A random valid cell of ``space`` differing from ``cell`` (NAS-Bench-101 style mutation).

    Each possible edge flips with probability ``rate / edge_slots`` and each operation changes
    with probability ``rate / operations``; draws are repeated until the result is a new valid
    cell of ``space``. After ``attempts`` failed draws a random neighbour is returned.
    """
    if rate <= 0:
        raise ValueError(f"the mutation rate must be > 0, got {rate}")
    space = space or SubSpace(MAX_NODES - 2)
    base = cell.canonical
    size = base.size
    slots = [(i, j) for i in range(size) for j in range(i + 1, size)]
    for _ in range(attempts):
        matrix = [list(row) for row in base.matrix]
        for i, j in slots:
            if rng.random() < rate / len(slots):
                matrix[i][j] = 1 - matrix[i][j]
        ops = list(base.ops)
        for k in range(len(ops)):
            if rng.random() < rate / max(len(ops), 1):
                ops[k] = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
        candidate = Cell(tuple(map(tuple, matrix)), tuple(ops))
        if candidate.is_valid and space.contains(candidate) and candidate.hash != base.hash:
            return candidate.canonical
    options = neighbours(base, space)
    if not options:
        raise ValueError(f"cell {base.encoding()} has no neighbour in {space}; the sub-space is a single cell")
    return options[int(rng.integers(len(options)))]


class CellSpace:
    """A cell sub-space as a finite :class:`~medtune.search.space.SearchSpace`.

    ``search_space`` has one categorical parameter ``cell`` whose values are the canonical
    encodings of the unique cells, so random search, grid search and the table replay run
    unchanged; its ``neighbours`` and ``mutate`` are the cell-graph moves of Pourchot2022 (see
    :func:`neighbours`, :func:`mutate`), so the local (greedy hill-climbing) and evolution
    searchers move through the graph space instead of jumping between unrelated cells.
    """

    def __init__(self, space: SubSpace, cells: Sequence[Cell] | None = None) -> None:
        from medtune.search.space import Categorical, SearchSpace

        self.subspace = space
        self.cells = list(cells) if cells is not None else enumerate_cells(space)
        if not self.cells:
            raise ValueError(f"the sub-space {space} holds no cell")
        self.by_encoding = {cell.encoding(): cell for cell in self.cells}
        owner = self

        class CellSearchSpace(SearchSpace):
            """The cell space with graph moves as neighbours and mutations."""

            def neighbours(self, config: dict) -> list[dict]:
                return owner.neighbours(self.validate(config))

            def mutate(self, config: dict, rate: float, rng: np.random.Generator, scale: float = 0.2) -> dict:
                return owner.mutate(self.validate(config), rate, rng)

        self.search_space = CellSearchSpace([Categorical("cell", tuple(self.by_encoding))])

    def cell(self, config: dict) -> Cell:
        """The cell of a configuration ``{"cell": encoding}``."""
        return self.by_encoding[config["cell"]]

    def neighbours(self, config: dict) -> list[dict]:
        """Configurations of the cells one move away that the space holds."""
        return [{"cell": c.encoding()} for c in neighbours(self.cell(config), self.subspace)
                if c.encoding() in self.by_encoding]

    def mutate(self, config: dict, rate: float, rng: np.random.Generator) -> dict:
        """Configuration of a mutated cell of the space (about ``rate`` changes, at least one;
        a mutation that leaves the listed cells falls back to a random listed neighbour)."""
        cell = self.cell(config)
        for _ in range(20):
            child = mutate(cell, max(rate, 1e-3), rng, self.subspace).encoding()
            if child in self.by_encoding:
                return {"cell": child}
        options = self.neighbours(config)
        if not options:
            return {"cell": cell.encoding()}
        return options[int(rng.integers(len(options)))]


def node_channels(cell: Cell, out_channels: int) -> list[int]:
    """Channels of each node (input and output excluded) of a cell with ``out_channels`` outputs.

    The output nodes split ``out_channels`` (the first ones take the remainder); every other
    node takes the largest width of its successors, as in NAS-Bench-101, and a node's inputs
    are truncated to its width.
    """
    size = cell.size
    widths = [0] * size
    feeding = cell.output_nodes
    if feeding:
        base, extra = divmod(out_channels, len(feeding))
        if base == 0:
            raise ValueError(f"{out_channels} output channels cannot be split over {len(feeding)} nodes")
        for k, node in enumerate(feeding):
            widths[node] = base + (1 if k < extra else 0)
    for node in range(size - 2, 0, -1):
        if not cell.matrix[node][-1]:
            widths[node] = max((widths[j] for j in range(node + 1, size - 1) if cell.matrix[node][j]), default=0)
    return widths[1:-1]


def max_pool3x3(values: torch.Tensor) -> torch.Tensor:
    """3x3 max-pooling, stride 1, padding 1, as the maximum of nine shifted views.

    Equal to ``F.max_pool2d(values, 3, 1, 1)`` and several times faster on CPU for the small
    maps of this search space (PyTorch's CPU kernel is slow for stride 1).
    """
    height, width = values.shape[-2:]
    padded = nn.functional.pad(values, (1, 1, 1, 1), value=float("-inf"))
    rows = torch.maximum(torch.maximum(padded[..., 0:width], padded[..., 1:width + 1]), padded[..., 2:width + 2])
    return torch.maximum(torch.maximum(rows[..., 0:height, :], rows[..., 1:height + 1, :]), rows[..., 2:height + 2, :])


class MaxPool3x3(nn.Module):
    """Module form of :func:`max_pool3x3`."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return max_pool3x3(values)


def _truncate(values: torch.Tensor, channels: int) -> torch.Tensor:
    return values[:, :channels]


class _ConvBnRelu(nn.Sequential):
    def __init__(self, channels_in: int, channels_out: int, kernel: int) -> None:
        super().__init__(
            nn.Conv2d(channels_in, channels_out, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(channels_out),
            nn.ReLU(),
        )


class CellModule(nn.Module):
    """One cell with fixed channels: ``[N, in_channels, H, W] -> [N, out_channels, H, W]``."""

    def __init__(self, cell: Cell, in_channels: int, out_channels: int) -> None:
        super().__init__()
        pruned = cell.pruned()
        if pruned is None:
            raise ValueError(f"cell {cell.encoding()} has no input-to-output path; it cannot be built")
        self.cell = pruned
        self.widths = node_channels(pruned, out_channels)
        self.out_channels = out_channels
        self.projections = nn.ModuleDict()
        self.ops = nn.ModuleList()
        for k, (op, width) in enumerate(zip(pruned.ops, self.widths)):
            node = k + 1
            if pruned.matrix[0][node]:
                self.projections[str(node)] = _ConvBnRelu(in_channels, width, 1)
            if op == "maxpool3x3":
                self.ops.append(MaxPool3x3())
            else:
                self.ops.append(_ConvBnRelu(width, width, 3 if op == "conv3x3-bn-relu" else 1))
        if pruned.residual:
            self.projections["output"] = _ConvBnRelu(in_channels, out_channels, 1)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        cell = self.cell
        outputs: list[torch.Tensor | None] = [values]
        for k, width in enumerate(self.widths):
            node = k + 1
            inputs = [_truncate(outputs[i], width) for i in range(1, node) if cell.matrix[i][node]]
            if cell.matrix[0][node]:
                inputs.append(self.projections[str(node)](values))
            outputs.append(self.ops[k](sum(inputs)))
        feeding = [outputs[i] for i in cell.output_nodes]
        result = torch.cat(feeding, dim=1) if feeding else None
        if cell.residual:
            projected = self.projections["output"](values)
            result = projected if result is None else result + projected
        return result


class CellNetwork(nn.Module):
    """A small 2D classifier stacking one cell (NAS-Bench-101 skeleton, scaled down).

    stem conv3x3-bn-relu to ``channels``; ``stacks`` stacks of ``cells_per_stack`` cells, a 2x2
    max-pool and a doubling of the channels between stacks; global average pooling; linear
    classifier to ``classes`` logits.
    """

    def __init__(self, cell: Cell, channels: int = 16, stacks: int = 2, cells_per_stack: int = 1,
                 in_channels: int = 1, classes: int = 2) -> None:
        super().__init__()
        if channels < 1 or stacks < 1 or cells_per_stack < 1:
            raise ValueError(
                f"channels, stacks and cells_per_stack must be >= 1, got {channels}, {stacks}, {cells_per_stack}"
            )
        self.stem = _ConvBnRelu(in_channels, channels, 3)
        layers: list[nn.Module] = []
        width = channels
        for stack in range(stacks):
            if stack > 0:
                layers.append(nn.MaxPool2d(2))
            out = channels * 2**stack
            for _ in range(cells_per_stack):
                layers.append(CellModule(cell, width, out))
                width = out
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.body(self.stem(images))
        return self.classifier(features.mean(dim=(2, 3)))
