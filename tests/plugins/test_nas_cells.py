"""Tests of the NAS-Bench-101-like cell space (medtune.plugins.nas.cells)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from medtune.plugins.nas.cells import (
    Cell,
    CellNetwork,
    CellSpace,
    SubSpace,
    enumerate_cells,
    max_pool3x3,
    mutate,
    neighbours,
    node_channels,
)


def test_unique_cell_counts_match_nas_bench_101():
    # NAS-Bench-101 reports 1, 6, 84 and 2,441 unique graphs with 2, 3, 4 and 5 vertices
    counts = Counter(c.size for c in enumerate_cells(SubSpace(3)))
    assert counts == {2: 1, 3: 6, 4: 84, 5: 2441}


def test_isomorphic_cells_share_a_hash_and_different_ones_do_not():
    # two parallel branches listed in either order
    first = Cell.from_edges(["c3", "mp"], [(0, 1), (0, 2), (1, 3), (2, 3)])
    second = Cell.from_edges(["mp", "c3"], [(0, 1), (0, 2), (1, 3), (2, 3)])
    assert first.encoding() != second.encoding()
    assert first.hash == second.hash
    assert first.canonical == second.canonical
    chain = Cell.from_edges(["c3", "mp"], [(0, 1), (1, 2), (2, 3)])
    swapped_chain = Cell.from_edges(["mp", "c3"], [(0, 1), (1, 2), (2, 3)])
    assert chain.hash != swapped_chain.hash  # order along a chain matters
    assert chain.hash != first.hash
    assert Cell.from_string(chain.encoding()) == chain


def test_pruning_removes_nodes_off_every_path():
    # node 2 has no input from the input node; node 3 does not reach the output
    cell = Cell.from_edges(["c3", "c1", "mp"], [(0, 1), (1, 4), (2, 4), (1, 3)])
    pruned = cell.pruned()
    assert pruned == Cell.from_edges(["c3"], [(0, 1), (1, 2)])
    assert cell.hash == pruned.hash
    disconnected = Cell.from_edges(["c3"], [(0, 1)])
    assert disconnected.pruned() is None and not disconnected.is_valid
    with pytest.raises(ValueError, match="no input-to-output path"):
        disconnected.hash


def test_bad_cells_are_rejected_with_clear_errors():
    with pytest.raises(ValueError, match="unknown operation"):
        Cell.from_edges(["conv5x5"], [(0, 1), (1, 2)])
    with pytest.raises(ValueError, match="upper triangular"):
        Cell(((0, 1, 0), (0, 0, 1), (1, 0, 0)), ("maxpool3x3",))
    with pytest.raises(ValueError, match="cannot parse"):
        Cell.from_string("01.00|zz")
    with pytest.raises(ValueError, match="sub-space"):
        SubSpace.parse("B7")


def test_subspaces_select_by_output_nodes_and_residual():
    space = SubSpace(2)
    everything = enumerate_cells(space)
    for name, check in [
        ("A1", lambda c: len(c.output_nodes) == 1),
        ("A2", lambda c: len(c.output_nodes) == 2),
        ("RES", lambda c: c.residual),
        ("NRES", lambda c: not c.residual),
    ]:
        chosen = enumerate_cells(SubSpace.parse(name, 2))
        assert chosen and all(check(c) for c in chosen)
        assert {c.hash for c in chosen} == {c.hash for c in everything if check(c)}
    limited = enumerate_cells(SubSpace(3, max_edges=5))
    assert len(limited) == 334 and all(len(c.edges) <= 5 for c in limited)


def test_neighbours_are_one_move_away():
    space = SubSpace(3)
    cells = enumerate_cells(space)
    rng = np.random.default_rng(0)
    for index in rng.choice(len(cells), 15, replace=False):
        cell = cells[index]
        around = neighbours(cell, space)
        hashes = [c.hash for c in around]
        assert len(hashes) == len(set(hashes)) and cell.hash not in hashes
        assert all(space.contains(c) for c in around)
        # changing any one operation is a move (those cells are never isomorphic to the cell)
        for k, op in enumerate(cell.ops):
            for other in {"conv3x3-bn-relu", "conv1x1-bn-relu", "maxpool3x3"} - {op}:
                changed = Cell(cell.matrix, cell.ops[:k] + (other,) + cell.ops[k + 1:])
                assert changed.hash in hashes
    single = Cell.from_edges(["c3"], [(0, 1), (1, 2)])
    around = {c.hash for c in neighbours(single, space)}
    assert Cell.from_edges(["mp"], [(0, 1), (1, 2)]).hash in around  # change the operation
    assert Cell.from_edges(["c3"], [(0, 1), (1, 2), (0, 2)]).hash in around  # add the residual
    assert Cell.from_edges(["c3", "c1"], [(0, 1), (1, 2), (2, 3), (1, 3)]).hash in around  # insert a node


def test_mutate_returns_new_cells_of_the_space():
    space = SubSpace.parse("A1", 3)
    rng = np.random.default_rng(1)
    cell = enumerate_cells(space)[0]
    seen = set()
    for _ in range(20):
        child = mutate(cell, 1.0, rng, space)
        assert child.hash != cell.hash and space.contains(child)
        seen.add(child.hash)
    assert len(seen) > 3
    with pytest.raises(ValueError, match="rate"):
        mutate(cell, 0.0, rng)


def test_cell_space_is_a_finite_search_space_with_graph_moves():
    space = CellSpace(SubSpace(2))
    assert space.search_space.size() == 91
    rng = np.random.default_rng(0)
    config = space.search_space.sample(rng)
    cell = space.cell(config)
    assert {space.cell(c).hash for c in space.neighbours(config)} == {c.hash for c in neighbours(cell, SubSpace(2))}
    assert space.mutate(config, 1.0, rng)["cell"] in space.by_encoding
    # the searchers use the graph moves through the SearchSpace interface
    assert space.search_space.neighbours(config) == space.neighbours(config)
    child = space.search_space.mutate(config, 0.5, rng)
    assert child["cell"] != config["cell"] and child["cell"] in space.by_encoding


def test_local_search_climbs_the_cell_graph():
    from medtune.registry import create

    space = CellSpace(SubSpace(2))
    searcher = create("searcher", "local", space=space.search_space, seed=0, direction="maximize")
    score = {c.encoding(): -len(c.edges) - c.ops.count("maxpool3x3") for c in space.cells}  # smooth in moves
    asked = []
    for _ in range(40):
        suggestion = searcher.ask()
        if suggestion is None:
            break
        asked.append(suggestion)
        searcher.tell(suggestion, score[suggestion.config["cell"]])
    first = space.cell(asked[0].config)
    moved = [space.cell(s.config) for s in asked[1:len(space.neighbours(asked[0].config)) + 1]]
    assert {c.hash for c in moved} <= {c.hash for c in neighbours(first, SubSpace(2))}


def test_channels_split_between_output_nodes_and_network_runs():
    three = Cell.from_edges(["c3", "c1", "mp"], [(0, 1), (0, 2), (0, 3), (1, 4), (2, 4), (3, 4)])
    assert node_channels(three, 16) == [6, 5, 5]
    chain = Cell.from_edges(["c3", "c1", "mp"], [(0, 1), (1, 2), (1, 4), (2, 3), (3, 4)])
    assert node_channels(chain, 16) == [8, 8, 8]
    network = CellNetwork(three, channels=8, stacks=2, classes=3)
    out = network(torch.randn(2, 1, 16, 16))
    assert out.shape == (2, 3)
    assert three.parameters(channels=8, classes=3) == sum(p.numel() for p in network.parameters())
    residual_only = Cell.from_edges([], [(0, 1)])
    assert CellNetwork(residual_only, channels=4)(torch.randn(1, 1, 8, 8)).shape == (1, 2)


def test_max_pool3x3_equals_torch_max_pool():
    values = torch.randn(2, 3, 7, 5, requires_grad=True)
    torch.testing.assert_close(max_pool3x3(values), torch.nn.functional.max_pool2d(values, 3, 1, 1), rtol=0, atol=0)
    (grad,) = torch.autograd.grad(max_pool3x3(values).sum(), values)
    (expected,) = torch.autograd.grad(torch.nn.functional.max_pool2d(values, 3, 1, 1).sum(), values)
    torch.testing.assert_close(grad, expected)
