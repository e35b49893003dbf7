"""`medtune compare STUDY...`: studies grouped by searcher, best so far and running median per
method (median over its seeds, range shaded) against trials and wall time, and the best value
per method as mean ± std over its studies (Bertrand2019, Fig. 2.10 across methods)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path


from medtune.cli import main
from medtune.report import write_comparison
from medtune.report.compare import _band, _on_grid
from medtune.study.store import StudyStore

STUDY = """
[study]
name = "{name}"
direction = "{direction}"
seed = {seed}
n_trials = 6

[searcher]
name = "{searcher}"

[objective]
function = "tests.framework.study_fakes:quadratic"

[space.x]
type = "float"
low = 0.0
high = 1.0
"""


def _study(folder: Path, searcher: str, seed: int, direction: str = "minimize") -> Path:
    name = f"{searcher}_{direction}_seed{seed}"
    path = folder / f"{name}.toml"
    path.write_text(STUDY.format(name=name, direction=direction, seed=seed, searcher=searcher))
    assert main(["run", str(path)]) == 0
    return folder / "studies" / f"{name}.sqlite"


def test_compare_groups_by_searcher(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "250")
    studies = [_study(tmp_path, searcher, seed) for searcher in ("random", "evolution")
               for seed in (0, 1)]
    capsys.readouterr()
    out_folder = tmp_path / "cmp"
    assert main(["compare", *map(str, studies), "--out", str(out_folder)]) == 0
    out = capsys.readouterr().out
    assert (out_folder / "comparison.png").stat().st_size > 0
    page = (out_folder / "comparison.html").read_text()
    for searcher, paths in (("random", studies[:2]), ("evolution", studies[2:])):
        best = []
        for path in paths:
            with StudyStore(path) as store:
                best.append(store.best_trial().value)
        mean = f"{statistics.fmean(best):.4g} ± {statistics.stdev(best):.2g}"
        row = next(line for line in out.splitlines() if searcher in line)
        assert mean in row, (row, mean)
        assert f"<td>{searcher}</td><td>2</td><td>{mean}</td>" in page
    # the default folder: comparison/ next to the first study
    assert main(["compare", str(studies[0])]) == 0
    assert (studies[0].parent / "comparison" / "comparison.png").exists()


def test_summaries_and_one_study_per_method(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    single = _study(tmp_path, "random", 0, "maximize")
    page, summaries = write_comparison([single], tmp_path / "one")
    with StudyStore(single) as store:
        best = store.best_trial().value
    assert page.exists() and len(summaries) == 1
    assert summaries[0].searcher == "random" and summaries[0].best == (best,)
    assert summaries[0].mean == best and summaries[0].std == 0.0


def test_mixed_directions_and_empty_studies_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")
    low = _study(tmp_path, "random", 0, "minimize")
    high = _study(tmp_path, "random", 0, "maximize")
    capsys.readouterr()
    assert main(["compare", str(low), str(high), "--out", str(tmp_path / "cmp")]) == 2
    assert "do not share a direction" in capsys.readouterr().out
    StudyStore.create(tmp_path / "empty.sqlite", direction="minimize").close()
    assert main(["compare", str(low), str(tmp_path / "empty.sqlite")]) == 2
    assert "no completed trial to compare" in capsys.readouterr().out


def test_band_and_time_grid():
    # a study that stopped after two trials holds its last value: at the third trial the
    # column is (3, 9, 5), not (3, 5), so the median of best-so-far curves cannot fall
    median, low, high = _band([[1.0, 2.0, 3.0, 4.0], [3.0, 9.0], [math.nan, 0.0, 5.0, 4.0]])
    assert median == [2.0, 2.0, 5.0, 4.0] and low == [1.0, 0.0, 3.0, 4.0]
    assert high == [3.0, 9.0, 9.0, 9.0]
    # a step curve held from each time on (the last value to the end), absent before its start
    sampled = _on_grid([1.0, 2.0], [10.0, 20.0], [0.5, 1.0, 1.5, 2.0, 2.5])
    assert math.isnan(sampled[0]) and sampled[1:] == [10.0, 10.0, 20.0, 20.0]
