"""The search benchmarks: their test functions, and ``python -m benchmarks.search --quick``.

Only the report's structure is checked (markers, tables, cells that parse), never timings or
search results: the CI machine is shared and noisy, and a quick run's budgets are tiny.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import search
from benchmarks.functions import (
    BRANIN,
    BRANIN_MINIMISERS,
    BRANIN_MINIMUM,
    HARTMANN6,
    HARTMANN6_MINIMISER,
    HARTMANN6_MINIMUM,
    ZDT1,
    TabulatedProblem,
    branin,
    hartmann6,
    zdt1,
)
from medtune.plugins.searchers.hyperband import HyperbandSearcher
from medtune.plugins.searchers.random import RandomSearcher
from medtune.search.objectives import hypervolume
from medtune.search.space import SearchSpace

ROOT = Path(__file__).resolve().parents[2]
NUMBER = r"\d+(?:\.\d+)?"
CELL = re.compile(
    rf"{NUMBER}|> {NUMBER}|\d+/\d+|{NUMBER}×|{NUMBER} / \d+|n/a|not installed|not available"
    r"|not exposed|not measured \([^)]*\)"
)
PRUNING_CELL = re.compile(rf"{NUMBER}|> {NUMBER}|\d+/\d+|{NUMBER} %|n/a"
                          rf"|(?:{NUMBER}|none) / (?:\d+|none)")
PARETO_CELL = re.compile(rf"{NUMBER}|{NUMBER} \({NUMBER}\)|{NUMBER} %|{NUMBER}×|n/a"
                         r"|not installed|not available|not measured \([^)]*\)")
CPU_SECTION = "<!-- benchmarks:cpu:begin -->\n## CPU\nkept as is\n<!-- benchmarks:cpu:end -->"


# -- the test functions -----------------------------------------------------------------------
@pytest.mark.parametrize("minimiser", BRANIN_MINIMISERS)
def test_branin_minima(minimiser):
    assert branin(*minimiser) == pytest.approx(BRANIN_MINIMUM, abs=1e-5)
    assert BRANIN.objective({"x1": minimiser[0], "x2": minimiser[1]}) == pytest.approx(
        BRANIN_MINIMUM, abs=1e-5)


def test_branin_elsewhere_is_higher():
    rng = np.random.default_rng(0)
    values = [branin(rng.uniform(-5, 10), rng.uniform(0, 15)) for _ in range(1000)]
    assert min(values) > BRANIN_MINIMUM


def test_hartmann6_minimum():
    assert hartmann6(HARTMANN6_MINIMISER) == pytest.approx(HARTMANN6_MINIMUM, abs=1e-4)
    config = {f"x{i}": value for i, value in enumerate(HARTMANN6_MINIMISER)}
    assert HARTMANN6.objective(config) == pytest.approx(HARTMANN6_MINIMUM, abs=1e-4)
    rng = np.random.default_rng(0)
    assert min(hartmann6(x) for x in rng.random((1000, 6))) > HARTMANN6_MINIMUM


def test_tabulated_problem_is_deterministic_and_has_34300_configurations():
    first, again, other = TabulatedProblem(seed=0), TabulatedProblem(seed=0), TabulatedProblem(1)
    assert first.size == 34_300 and first.final.size == 34_300
    assert np.array_equal(first.final, again.final) and np.array_equal(first.speed, again.speed)
    assert not np.array_equal(first.final, other.final)
    space = SearchSpace.from_dict(first.space())
    assert space.size() == 34_300
    # Every configuration of the space has its own table entry.
    positions = {first.index(config) for config in space.enumerate()}
    assert len(positions) == 34_300
    # Top 1 %: 343 configurations; the best is rank 1.
    assert np.count_nonzero(first.final <= first.top_percent_loss) == 343
    assert first.rank(first.best_loss) == 1


def test_tabulated_learning_curves_decay_to_the_final_loss():
    problem = TabulatedProblem(seed=0, R=27)
    config = SearchSpace.from_dict(problem.space()).sample(np.random.default_rng(3))
    losses = [problem.loss(config, r) for r in (1, 3, 9, 27)]
    assert losses == sorted(losses, reverse=True) and losses[0] > losses[-1]
    assert problem.loss(config) == losses[-1] == problem.final[problem.index(config)]
    assert np.array_equal(problem.losses_at(27), problem.final)


def test_zdt1_front_and_best_hypervolume():
    for x1 in (0.0, 0.25, 1.0):
        f1, f2 = zdt1([x1, 0, 0, 0, 0, 0])
        assert (f1, f2) == pytest.approx((x1, 1 - x1 ** 0.5))
    assert zdt1([0.25, 1, 1, 1, 1, 1])[1] > 1 - 0.25 ** 0.5  # off the front: worse
    front = np.array([(x, 1 - x ** 0.5) for x in np.linspace(0, 1, 2001)])
    assert hypervolume(front, ZDT1.reference) == pytest.approx(ZDT1.best_hypervolume, rel=1e-3)
    assert ZDT1.objectives({f"x{i}": 0.0 for i in range(6)}) == (0.0, 1.0)


def test_tabulated_two_objectives():
    table = TabulatedProblem(seed=0)
    problem = table.two_objectives()
    configs = list(SearchSpace.from_dict(problem.space).enumerate())
    points = np.array([problem.objectives(c) for c in configs[::49]])
    assert 0 < hypervolume(points, problem.reference) <= problem.best_hypervolume + 1e-12
    # The parameter count follows the width alone, 1000 f^2.
    assert table.parameters({"filters_log2": 4}) == 1000 * 16 ** 2
    # The best hypervolume is that of every configuration: of the best loss per width.
    best_per_width: dict[float, float] = {}
    for config in configs:
        loss, size = problem.objectives(config)
        best_per_width[size] = min(loss, best_per_width.get(size, np.inf))
    front = np.array([(loss, size) for size, loss in best_per_width.items()])
    assert hypervolume(front, problem.reference) == pytest.approx(problem.best_hypervolume)


def test_pruning_simulation_keeps_its_clock():
    table = TabulatedProblem(seed=0)
    synchronous = search.simulate_hyperband(table, 0, 200, overlap_brackets=False, resume=False)
    overlapping = search.simulate_hyperband(table, 0, 200, overlap_brackets=True, resume=False)
    # Synchronous brackets leave workers idle; overlapping ones keep them busy.
    assert 0 < synchronous.busy < search.WORKERS * 200
    assert overlapping.busy > synchronous.busy
    asha = search.simulate_pruned(table, 0, 200, ("asha", {"min_resource": 1, "eta": 3}))
    plain = search.simulate_pruned(table, 0, 200, None)
    # Trials with a pruner train epoch by epoch: no worker ever idles.
    assert asha.busy == plain.busy == search.WORKERS * 200
    assert asha.pruned > 0 and plain.pruned == 0 and asha.trials > plain.trials
    # Without pruning every trial costs R: by time 200, floor(200 / R) waves of 4 trials.
    assert len(plain.finals) == search.WORKERS * (200 // search.R)
    assert all(time % search.R == 0 for time, _ in plain.finals)
    assert plain.best_by(200) == min(loss for _, loss in plain.finals)
    again = search.simulate_pruned(table, 0, 200, ("asha", {"min_resource": 1, "eta": 3}))
    assert again.finals == asha.finals and again.time_to_top == asha.time_to_top


# -- the report ---------------------------------------------------------------------------------
def _tables(markdown: str) -> dict[str, list[list[str]]]:
    """Every table under a ``###``/``####`` heading: {heading: body rows as cells}."""
    tables: dict[str, list[list[str]]] = {}
    heading = None
    for line in markdown.splitlines():
        if line.startswith("###"):
            heading = line.lstrip("#").strip()
        elif line.startswith("| ") and heading is not None and not line.startswith("| |"):
            tables.setdefault(heading, []).append(
                [cell.strip() for cell in line.strip().strip("|").split("|")])
    return {name: rows[1:] for name, rows in tables.items()}  # drop the header row


def _check_cells(rows: list[list[str]]) -> None:
    for label, *cells in rows:
        for cell in cells:
            assert CELL.fullmatch(cell), (label, cell)


def test_quick_run_writes_the_search_section(tmp_path):
    output = tmp_path / "B.md"
    # A kernel section, as `python -m benchmarks` leaves it: it must survive untouched.
    output.write_text("# medtune benchmarks\n\n" + CPU_SECTION + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.search", "--quick", "--output", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    markdown = output.read_text()

    assert markdown.startswith("# medtune benchmarks\n\n" + CPU_SECTION)
    for marker in ("search", "search:latency", "search:quality", "search:finite",
                   "search:pruning", "search:pareto"):
        assert markdown.count(f"<!-- benchmarks:{marker}:begin -->") == 1, marker
        assert markdown.count(f"<!-- benchmarks:{marker}:end -->") == 1, marker
    section = markdown[markdown.index("<!-- benchmarks:search:begin -->"):]
    assert section.rstrip().endswith("<!-- benchmarks:search:end -->")
    assert "Quick run" in section and "| command | `python -m benchmarks.search --quick" in section
    assert "failed" not in section, section

    tables = _tables(section)
    latency = tables["Suggestion latency (Hartmann-6)"]
    assert [row[0] for row in latency] == ["20", "50"]
    _check_cells(latency)
    for heading in (BRANIN.title, HARTMANN6.title):
        rows = tables[heading]
        assert [row[0] for row in rows] == ["medtune bayes", "medtune random",
                                            "Optuna GPSampler", "Optuna TPESampler"]
        _check_cells(rows)
        assert all(len(row) == 7 for row in rows)
        random_row = rows[1]
        assert re.fullmatch(r"\d/2", random_row[3]), random_row  # 2 seeds
    full = tables["Full-budget searchers"]
    assert [row[0] for row in full] == ["medtune bayes", "medtune random", "Optuna TPESampler"]
    _check_cells(full)
    multi = tables["Multi-fidelity searchers"]
    assert multi[0][0] == "medtune hyperband (random proposals)"
    assert re.fullmatch(rf"{NUMBER} / \d+", multi[0][4]), multi[0]  # best rank after 1 iteration
    assert any(row[0].startswith("medtune bohb") for row in multi)
    _check_cells(multi)
    pruning = tables["Pruning with 4 asynchronous workers (simulated clock)"]
    assert [row[0] for row in pruning] == [label for label, _ in search.PRUNING_METHODS]
    for label, *cells in pruning:
        assert len(cells) == 10 and all(PRUNING_CELL.fullmatch(c) for c in cells), (label, cells)
    assert "ASHA against synchronous Hyperband" in section
    table_title = TabulatedProblem(seed=0).two_objectives().title
    for heading in (ZDT1.title, table_title):
        rows = tables[heading]
        assert [row[0].split(" (")[0] for row in rows] == [
            "medtune random", "medtune evolution", "medtune bayes", "Optuna NSGAIISampler",
            "Optuna NSGAIISampler", "Optuna TPESampler"]
        assert rows[2][1] == "not measured (quick run)"  # bayes: a model-based searcher
        for label, *cells in rows:
            assert len(cells) == 7 and all(PARETO_CELL.fullmatch(c) for c in cells), (label, cells)
        assert rows[3][3] == rows[3][6] == "1.00×"  # Optuna NSGA-II against itself
    # The section is printed too.
    assert "<!-- benchmarks:search:begin -->" in result.stdout


def test_quick_run_without_output_writes_nothing(tmp_path):
    # Run a copy of the package, so a wrongly written BENCHMARKS.md would land in tmp_path
    # instead of overwriting the repository's.
    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.search", "--quick", "--parts", "latency",
         "--latency-sizes", "10"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "nothing written" in result.stderr
    assert not (tmp_path / "BENCHMARKS.md").exists()
    assert "### Suggestion latency" in result.stdout


def test_unknown_part_is_refused():
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--quick", "--parts", "latncy"])
    assert exit_info.value.code == 2


def test_write_replaces_only_the_parts_run(tmp_path):
    output = tmp_path / "B.md"
    old_quality = search.render_part("quality", "Measured earlier.", ["### quality", "old"])
    old_latency = search.render_part("latency", "Measured earlier.", ["### latency", "old"])
    old = search.render_section(["## old header"], {"latency": old_latency,
                                                    "quality": old_quality})
    output.write_text("# medtune benchmarks\n\n" + CPU_SECTION + "\n\n" + old + "\n\ntail\n")
    new_latency = search.render_part("latency", "Measured now.", ["### latency", "new"])
    search.write(output, ["## new header"], {"latency": new_latency})
    text = output.read_text()
    assert text.startswith("# medtune benchmarks\n\n" + CPU_SECTION + "\n\n")
    assert text.endswith("<!-- benchmarks:search:end -->\n\ntail\n")
    assert "## new header" in text and "## old header" not in text
    assert new_latency in text and old_latency not in text
    assert old_quality in text
    assert text.index(new_latency) < text.index(old_quality)  # parts in their fixed order


def test_write_appends_to_a_file_without_a_search_section(tmp_path):
    output = tmp_path / "B.md"
    output.write_text("# medtune benchmarks\n\n" + CPU_SECTION + "\n")
    part = search.render_part("finite", "Measured now.", ["### finite"])
    search.write(output, ["## header"], {"finite": part})
    text = output.read_text()
    assert text.startswith("# medtune benchmarks\n\n" + CPU_SECTION + "\n\n<!-- benchmarks:search")
    fresh = tmp_path / "new.md"
    search.write(fresh, ["## header"], {"finite": part})
    assert fresh.read_text().startswith("# medtune benchmarks\n\n<!-- benchmarks:search:begin")


#: the stand-in bohb's modes; benchmarks.search reads ``MODES`` from a bohb's module
MODES = ("budget", "per_budget")


class _StandInBayes(RandomSearcher):
    """Random search under bayes's name, with its warm start and refit (a fast stand-in)."""

    name = "bayes"
    n_initial = 3

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.warm_started = 0
        self.refits = 0

    def warm_start(self, configs, values):
        assert len(configs) == len(values)
        self.warm_started += len(configs)

    def refit(self):
        self.refits += 1


class _StandInBohb(HyperbandSearcher):
    """Hyperband under bohb's name, with a ``mode`` option (a fast stand-in)."""

    name = "bohb"

    def __init__(self, *args, mode="per_budget", **kwargs):
        assert mode in MODES
        super().__init__(*args, **kwargs)
        self.mode = mode


def test_every_row_measured_with_bayes_and_bohb_registered(tmp_path, monkeypatch):
    """The rows of the model-based searchers, with fast stand-ins (the real ones take seconds
    per suggestion), outside a quick run."""
    stand_ins = {"bayes": _StandInBayes, "bohb": _StandInBohb}
    real_factory = search._searcher_factory
    monkeypatch.setattr(search, "_searcher_names",
                        lambda: {"random", "hyperband", *stand_ins})
    monkeypatch.setattr(search, "_searcher_factory",
                        lambda name: stand_ins.get(name) or real_factory(name))
    output = tmp_path / "B.md"
    assert search.main(["--parts", "latency,finite", "--latency-sizes", "12,24", "--seeds", "1",
                        "--finite-budget", "20", "--iterations", "1", "--output",
                        str(output)]) == 0
    section = output.read_text()
    assert "not measured (" not in section and "failed" not in section
    assert "`warm_start(configs, values)`" in section
    tables = _tables(section)
    latency = tables["Suggestion latency (Hartmann-6)"]
    assert [row[0] for row in latency] == ["12", "24"]
    _check_cells(latency)
    assert all(re.fullmatch(NUMBER, cell) for row in latency for cell in row[1:5]), latency
    full = tables["Full-budget searchers"]
    assert full[0][0] == "medtune bayes"
    _check_cells(full)
    multi = tables["Multi-fidelity searchers"]
    assert [row[0] for row in multi] == [
        "medtune hyperband (random proposals)", "medtune bohb, mode=budget",
        "medtune bohb, mode=per_budget", "medtune bayes, full budget only",
        "medtune random, full budget only"]
    _check_cells(multi)
    assert all(re.fullmatch(rf"{NUMBER} / \d+", row[4]) for row in multi), multi


def test_kernel_runner_keeps_the_search_section(tmp_path):
    """``python -m benchmarks`` rewrites BENCHMARKS.md from its marked sections: the search
    section (with its nested part markers) must come through whole."""
    from benchmarks import report

    output = tmp_path / "B.md"
    part = search.render_part("latency", "Measured now.", ["### latency", "| 1 | 2 |"])
    search.write(output, ["## header"], {"latency": part})
    section = output.read_text().split("\n\n", 1)[1].rstrip("\n")
    report.write(output, report.Section("cpu", [("CPU", "x")], [], True, None))
    text = output.read_text()
    assert section in text and text.count("<!-- benchmarks:search:begin -->") == 1
    assert text.index("<!-- benchmarks:cpu:begin -->") < text.index(section)


def test_without_optuna_its_rows_say_not_installed(tmp_path, monkeypatch):
    monkeypatch.setattr(search, "_optuna", lambda: None)
    output = tmp_path / "B.md"
    assert search.main(["--quick", "--parts", "quality,finite,pareto", "--seeds", "1",
                        "--pareto-seeds", "1", "--output", str(output)]) == 0
    tables = _tables(output.read_text())
    for heading in (BRANIN.title, HARTMANN6.title, "Full-budget searchers", ZDT1.title):
        optuna_rows = [row for row in tables[heading] if row[0].startswith("Optuna")]
        assert optuna_rows and all(set(row[1:]) == {"not installed"} for row in optuna_rows)
